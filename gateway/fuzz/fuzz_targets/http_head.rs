//! Request heads as a client sends them: parsing never panics, a head it accepts lies within
//! the bytes given, and the body length it decides is the one every Content-Length says.
#![no_main]

use gateway::http::RequestHead;
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 8 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, len))) = RequestHead::parse(data, MAX_HEAD) {
        assert!(len <= data.len() && len <= MAX_HEAD);
        let lengths: Vec<&str> = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map(|(_, value)| value.as_str())
            .collect();
        if lengths.is_empty() {
            assert_eq!(head.content_length, 0);
        } else {
            // Each says the same number, if not in the same digits ("5" and "05").
            let said = |element: &str| element.trim_matches([' ', '\t']).parse::<usize>().ok();
            assert!(lengths
                .iter()
                .flat_map(|value| value.split(','))
                .all(|element| said(element) == Some(head.content_length)));
        }
        assert!(head.header("transfer-encoding").is_none());
    }
});
