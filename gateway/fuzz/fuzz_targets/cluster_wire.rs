//! What another node (or anyone who can publish to the cluster's Redis) sends: the same bytes
//! read as a broadcast envelope and as a control message (`cluster::wire`). Never a panic, and
//! what is read is written back to what reads the same: the envelope byte for byte (but for
//! flag bits it does not know), the control message as JSON.
#![no_main]

use gateway::cluster::wire::{Control, Envelope};
use libfuzzer_sys::fuzz_target;

/// Where the flags byte lies: after the magic, the version, the origin and the time sent.
const FLAGS_AT: usize = 1 + 1 + 4 + 8;
/// The flag bits the envelope knows: a socket excluded, a cache channel.
const KNOWN_FLAGS: u8 = 0b11;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let encoded = envelope.encode().expect("what was read fits");
        assert_eq!(Envelope::decode(&encoded), Ok(envelope.clone()));
        let mut expected = data.to_vec();
        expected[FLAGS_AT] &= KNOWN_FLAGS;
        assert_eq!(encoded, expected, "{envelope:?}");
        assert!(envelope.frame.len() <= data.len());
    }
    if let Ok(control) = Control::decode(data) {
        let encoded = control.encode();
        assert_eq!(
            Control::decode(encoded.as_bytes()).ok(),
            Some(control),
            "{encoded}"
        );
    }
});
