//! What a load balancer (or anyone, before the trust check) sends first on a listener that takes
//! PROXY headers, read as the shard reads it (`proxy::parse` on what has arrived so far, after
//! each read). Never a panic, and however the bytes are cut into reads:
//! - a header is taken only whole, and is the one all the bytes give, whatever follows it;
//! - a refusal stands: no more bytes make it a header;
//! - at `MAX_HEADER` bytes the parser has answered, as the shard reads no further.
#![no_main]

use gateway::proxy::{self, Parsed, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = proxy::parse(data);
    match whole {
        Ok(Parsed::Header { len, .. }) => assert!(len <= data.len() && len <= MAX_HEADER),
        Ok(Parsed::Incomplete) => assert!(data.len() < MAX_HEADER, "no answer at {MAX_HEADER}"),
        Err(_) => {}
    }
    // Past `MAX_HEADER` bytes every read has its answer already.
    for end in 0..data.len().min(MAX_HEADER + 1) {
        match proxy::parse(&data[..end]) {
            Ok(Parsed::Incomplete) => {
                if let Ok(Parsed::Header { len, .. }) = whole {
                    assert!(end < len, "header of {len} bytes not taken from {end}");
                }
            }
            Ok(header) => assert_eq!(whole.as_ref().ok(), Some(&header), "from {end} bytes"),
            Err(refused) => assert!(whole.is_err(), "refused at {end} bytes: {refused}"),
        }
    }
});
