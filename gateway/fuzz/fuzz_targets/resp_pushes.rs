//! What a Redis Cluster master (or whatever answers on its address) sends a sharded-subscribe
//! link: the bytes read as RESP2 pushes (`cluster::resp`). Never a panic; a push is read the
//! same from exactly its own bytes, is not whole a byte short of them, and stays within the
//! bounds the link holds.
#![no_main]

use gateway::cluster::resp::{Push, MAX_BULK, MAX_ELEMENTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((push, used))) = Push::parse(rest) {
        assert!(used > 0 && used <= rest.len());
        assert!(push.fields.len() < MAX_ELEMENTS);
        assert!(push.fields.iter().all(|field| field.len() <= MAX_BULK));
        assert_eq!(push.kind, push.kind.to_ascii_lowercase());
        let own = &rest[..used];
        assert_eq!(Push::parse(own), Ok(Some((push, used))));
        assert_eq!(Push::parse(&own[..used - 1]), Ok(None));
        rest = &rest[used..];
    }
});
