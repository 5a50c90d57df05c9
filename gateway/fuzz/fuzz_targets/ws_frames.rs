//! Client bytes as a session reads them (`ws::incoming::feed`), cut into reads wherever the
//! input says. Never a panic; between reads a connection holds at most one message, one frame
//! header and one control frame's payload; and the reads give the messages that the same bytes
//! give in one read, ending with the same kind of error, if any.
//!
//! Input: a byte that picks the largest message, a byte `n`, then `n` read lengths (each byte
//! is a length, 0 for all that is left; used in turn, over and over), then the client's bytes.
#![no_main]

use gateway::ws::incoming::{self, Incoming};
use gateway::ws::{Message, WsError};
use libfuzzer_sys::fuzz_target;

/// Largest messages to try: below, at and above a control frame's 125 bytes, and the default.
const MAX_MESSAGES: [usize; 8] = [1, 60, 125, 126, 300, 1000, 4096, 15 * 1024];
/// A frame header at its longest.
const MAX_HEADER: usize = 14;
/// A control frame's payload at its longest.
const MAX_CONTROL: usize = 125;

/// What a run of reads gave: the messages, and the error that ended it.
#[derive(Debug, Default)]
struct Run {
    messages: Vec<String>,
    error: Option<WsError>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let (lengths, stream) = rest.split_at(usize::from(n).min(rest.len()));
    let max_message = MAX_MESSAGES[usize::from(pick) % MAX_MESSAGES.len()];

    let whole = run(stream, &[0], max_message);
    let split = run(stream, lengths, max_message);
    assert_eq!(split.messages, whole.messages, "the same messages");
    assert_eq!(
        split.error.as_ref().map(std::mem::discriminant),
        whole.error.as_ref().map(std::mem::discriminant),
        "the same end: {split:?} against {whole:?}"
    );
});

/// Reads `stream` in pieces of `lengths` (in turn; 0 for the rest) as a session does: until an
/// error, or until a message closes the connection.
fn run(stream: &[u8], lengths: &[u8], max_message: usize) -> Run {
    let mut out = Run::default();
    let mut pending: Option<Box<Incoming>> = None;
    let mut lengths = lengths.iter().cycle();
    let mut at = 0;
    let mut open = true;
    while open && at < stream.len() {
        let length = match lengths.next() {
            Some(&length) if length > 0 => usize::from(length),
            _ => stream.len(),
        };
        let end = stream.len().min(at + length);
        // Frames are unmasked in place, as in the shard's scratch buffer.
        let mut read = stream[at..end].to_vec();
        at = end;
        let fed = incoming::feed(&mut pending, &mut read, max_message, &mut |message| {
            // A session closes after a close frame or a binary message, and reads no further.
            open = !matches!(message, Message::Close(_) | Message::Binary);
            out.messages.push(format!("{message:?}"));
            open
        });
        if let Err(error) = fed {
            out.error = Some(error);
            return out;
        }
        let held = pending.as_ref().map_or(0, |incoming| incoming.held());
        assert!(
            held <= max_message + MAX_HEADER + MAX_CONTROL,
            "{held} bytes held between reads, largest message {max_message}"
        );
    }
    out
}
