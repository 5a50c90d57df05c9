//! What hostile clients write and what they read back, as pure functions: the WebSocket message
//! and the API request they never finish, and the server's close frame or HTTP status.

use crate::cause::FailureCause;

/// The clients' masking key. Any key is valid; one for all lets every connection share a frame.
const MASK: [u8; 4] = [0x5a, 0xc3, 0x0f, 0x96];
/// A server has no reason to send a client that only ever half-spoke a frame this large.
const MAX_SERVER_FRAME_BYTES: u64 = 1 << 20;
/// An answer's head larger than this is not one.
const MAX_RESPONSE_HEAD_BYTES: usize = 8192;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_CLOSE: u8 = 0x8;
const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;

/// A JSON object of exactly `bytes` bytes: `start`, then `x` filler, then `"}`. `start` opens
/// the string the filler goes into, and `bytes` leaves room for it and the end.
fn padded_json(start: &str, bytes: usize) -> Vec<u8> {
    let end = "\"}";
    let filler = bytes.saturating_sub(start.len() + end.len());
    let mut json = Vec::with_capacity(bytes);
    json.extend_from_slice(start.as_bytes());
    json.resize(start.len() + filler, b'x');
    json.extend_from_slice(end.as_bytes());
    json
}

/// The payload of the unfinished message: a `pusher:ping` whose data pads it to `bytes`, so it
/// would be harmless if it ever arrived whole.
pub fn message_payload(bytes: usize) -> Vec<u8> {
    padded_json(r#"{"event":"pusher:ping","data":""#, bytes)
}

/// The unfinished request's body: an event whose data pads it to `bytes`.
pub fn event_body(channel: &str, bytes: usize) -> Vec<u8> {
    padded_json(
        &format!(r#"{{"name":"hostile","channel":"{channel}","data":""#),
        bytes,
    )
}

/// One masked, final text frame carrying `payload`, as a client sends it.
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(FIN | OPCODE_TEXT);
    match payload.len() {
        length @ 0..=125 => frame.push(MASKED | length as u8),
        length @ 126..=0xffff => {
            frame.push(MASKED | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(MASKED | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    frame
}

/// The head of `POST path_and_query` announcing a body of `content_length` bytes.
pub fn request_head(authority: &str, path_and_query: &str, content_length: usize) -> String {
    format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: loadtest/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// A frame from the server, as far as a client that never finished its own cares.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// A close frame, with its code when it has one.
    Close(Option<u16>),
    /// Anything else (a `pusher:ping`, a `pusher:error`, a WebSocket ping), not answered.
    Other,
}

/// The first frame in `buffer` and the bytes it took, once it has arrived whole.
pub fn server_frame(buffer: &[u8]) -> Result<Option<(ServerFrame, usize)>, FailureCause> {
    let [first, second, rest @ ..] = buffer else {
        return Ok(None);
    };
    let (length, length_bytes) = match second & 0x7f {
        126 if rest.len() >= 2 => (u64::from(u16::from_be_bytes([rest[0], rest[1]])), 2),
        127 if rest.len() >= 8 => {
            let mut wide = [0u8; 8];
            wide.copy_from_slice(&rest[..8]);
            (u64::from_be_bytes(wide), 8)
        }
        126 | 127 => return Ok(None),
        short => (u64::from(short), 0),
    };
    if length > MAX_SERVER_FRAME_BYTES {
        return Err(FailureCause::Protocol);
    }
    let mask_bytes = if second & MASKED != 0 { 4 } else { 0 };
    let header = 2 + length_bytes + mask_bytes;
    let total = header + length as usize;
    if buffer.len() < total {
        return Ok(None);
    }
    let frame = if first & 0x0f == OPCODE_CLOSE {
        let mask = &buffer[header - mask_bytes..header];
        let payload: Vec<u8> = buffer[header..total]
            .iter()
            .enumerate()
            .map(|(at, byte)| byte ^ mask.get(at % 4).copied().unwrap_or(0))
            .collect();
        ServerFrame::Close(match payload.as_slice() {
            [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        })
    } else {
        ServerFrame::Other
    };
    Ok(Some((frame, total)))
}

/// The status of the HTTP response in `buffer`, once its head is complete.
pub fn response_status(buffer: &[u8]) -> Result<Option<u16>, FailureCause> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buffer) {
        Ok(httparse::Status::Complete(_)) => response.code.map(Some).ok_or(FailureCause::Protocol),
        Ok(httparse::Status::Partial) if buffer.len() < MAX_RESPONSE_HEAD_BYTES => Ok(None),
        _ => Err(FailureCause::Protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(frame: &[u8], header: usize) -> Vec<u8> {
        let mask = &frame[header - 4..header];
        frame[header..]
            .iter()
            .enumerate()
            .map(|(at, byte)| byte ^ mask[at % 4])
            .collect()
    }

    #[test]
    fn frames_take_the_shortest_length_that_fits() {
        for (length, header) in [(64, 6), (125, 6), (126, 8), (65_535, 8), (65_536, 14)] {
            let payload = message_payload(length);
            let frame = masked_text_frame(&payload);
            assert_eq!(frame.len(), header + length, "{length}");
            assert_eq!(frame[0], 0x81);
            assert_eq!(frame[1] & 0x80, 0x80, "masked");
            assert_eq!(unmasked(&frame, header), payload, "{length}");
        }
        let frame = masked_text_frame(&message_payload(65_536));
        assert_eq!(frame[1], 0x80 | 127);
        assert_eq!(&frame[2..10], &65_536u64.to_be_bytes());
    }

    #[test]
    fn unfinished_input_would_be_valid_json_of_the_size_asked() {
        let payload = message_payload(15_000);
        assert_eq!(payload.len(), 15_000);
        let message: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
        assert_eq!(message["event"], "pusher:ping");
        let body = event_body("hostile", 64);
        assert_eq!(body.len(), 64);
        let event: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(event["channel"], "hostile");
        let head = request_head("127.0.0.1:6001", "/apps/1/events?a=b", 262_144);
        assert!(head.starts_with("POST /apps/1/events?a=b HTTP/1.1\r\nHost: 127.0.0.1:6001\r\n"));
        assert!(head.ends_with("Content-Length: 262144\r\n\r\n"));
    }

    #[test]
    fn server_frames_are_read_once_whole() {
        let text = [&[0x81, 5][..], b"hello"].concat();
        let close = [0x88, 2, 0x03, 0xf0];
        let both = [text.as_slice(), &close].concat();
        assert_eq!(server_frame(&both), Ok(Some((ServerFrame::Other, 7))));
        assert_eq!(
            server_frame(&both[7..]),
            Ok(Some((ServerFrame::Close(Some(1008)), 4)))
        );
        assert_eq!(server_frame(&close[..3]), Ok(None));
        assert_eq!(
            server_frame(&[0x88, 0]),
            Ok(Some((ServerFrame::Close(None), 2)))
        );
        let masked_close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xf1 ^ 2];
        assert_eq!(
            server_frame(&masked_close),
            Ok(Some((ServerFrame::Close(Some(1009)), 8)))
        );
        assert_eq!(server_frame(&[0x81, 126, 0x01]), Ok(None));
        let huge = [0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(server_frame(&huge), Err(FailureCause::Protocol));
    }

    #[test]
    fn statuses_are_read_from_complete_heads() {
        assert_eq!(
            response_status(b"HTTP/1.1 408 Request Timeout\r\n"),
            Ok(None)
        );
        assert_eq!(
            response_status(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"),
            Ok(Some(408))
        );
        assert_eq!(
            response_status(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(FailureCause::Protocol)
        );
    }
}
