//! Arbitrary bytes as a MariaDB/MySQL binlog (a file's bytes after its 4-byte magic) into the
//! binlog decoder: event framing, format descriptions, table maps with their optional
//! metadata, MariaDB's GTID events, rows events and every column value turned into JSON. The
//! checks we run before `mysql_common` sees bytes, and the panic fence behind them, must turn
//! every malformed input into an error; nothing may panic, and a prefix never decodes more
//! events than the whole.
//!
//! Seeds: binlogs a real MariaDB wrote in `tests/binlog_decoder.rs`
//! (`TRIBUTARY_WRITE_BINLOG_SEEDS=fuzz/seeds/binlog_decoder cargo test --test binlog_decoder`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_cdc::binlog::decode_binlog;

fuzz_target!(|data: &[u8]| {
    let (events, error) = decode_binlog(data);
    if error.is_none() {
        // Decoding everything means every frame was whole: a prefix cut inside the last event
        // decodes fewer events.
        if let Some(cut) = data.len().checked_sub(1) {
            let (fewer, _) = decode_binlog(&data[..cut]);
            assert!(fewer.len() <= events.len());
        }
    }
});
