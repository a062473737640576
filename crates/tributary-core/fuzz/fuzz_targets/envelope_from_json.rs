//! Every byte string either decodes to an envelope that survives a JSON round trip, or is
//! refused with an error: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_core::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_json(data) {
        let again = Envelope::from_json(envelope.to_json().as_bytes())
            .expect("an envelope we wrote must decode");
        assert_eq!(again, envelope);
        let _ = envelope.ordering_key();
        let _ = envelope.size_hint();
    }
});
