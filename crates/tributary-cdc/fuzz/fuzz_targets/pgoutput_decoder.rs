//! Arbitrary bytes into the pgoutput decoder: once as a single payload, then split into a
//! sequence of payloads (each prefixed by a big-endian u16 length) fed to one
//! `PgOutputDecoder`, so Relation messages fill the cache and later rows are resolved,
//! converted to JSON and re-encoded. The decoder must never panic; what it accepts must
//! decode the same after an encode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_cdc::PgOutputDecoder;
use tributary_cdc::pgoutput::{PgOutputMessage, RowChange, decode_message, encode_message};

fn exercise(decoder: &PgOutputDecoder, message: &PgOutputMessage) {
    // Whatever was accepted survives a round trip (flag bits the decoder ignores aside).
    let again = decode_message(&encode_message(message));
    assert_eq!(
        again.as_ref(),
        Ok(message),
        "round trip changed the message"
    );

    match decoder.change(message) {
        Ok(Some(change)) => {
            let row = match &change {
                RowChange::Insert { new } | RowChange::Update { new, .. } => new,
                RowChange::Delete { old } => old.row(),
            };
            let _ = row.to_json();
            let _ = row.key_to_json();
            let _ = row.unchanged_toast_columns().count();
        }
        Ok(None) | Err(_) => {}
    }
    if let PgOutputMessage::Truncate(truncate) = message {
        let _ = decoder.truncated(truncate);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_message(data);

    let mut decoder = PgOutputDecoder::new();
    let mut rest = data;
    while let Some((length, tail)) = rest.split_first_chunk::<2>() {
        let length = usize::from(u16::from_be_bytes(*length)).min(tail.len());
        let (payload, tail) = tail.split_at(length);
        rest = tail;
        if let Ok(message) = decoder.decode(payload) {
            exercise(&decoder, &message);
        }
    }
});
