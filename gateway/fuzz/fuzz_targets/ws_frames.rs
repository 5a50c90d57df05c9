//! Client bytes as a session reads them: frames decoded one after another and fed to the
//! message assembler never panic, never read past the bytes given, and never hold more than
//! the message limit.
#![no_main]

use gateway::ws::{Assembler, FrameHead};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 1024;
const MAX_MESSAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut assembler = Assembler::default();
    let mut at = 0;
    while at < buf.len() {
        let head = match FrameHead::decode(&mut buf[at..], MAX_FRAME) {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return,
        };
        assert!(head.payload_len <= MAX_FRAME);
        let end = at + head.frame_len();
        assert!(end <= buf.len());
        let payload = &buf[at + head.header_len..end];
        if let Ok(Some(gateway::ws::Message::Text(text))) =
            assembler.push(head, payload, MAX_MESSAGE)
        {
            assert!(text.len() <= MAX_MESSAGE.max(MAX_FRAME));
        }
        at = end;
    }
});
