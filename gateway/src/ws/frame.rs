//! WebSocket frames: decoding client frames in place, assembling fragmented messages, and
//! encoding server frames.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::codes;

/// A frame that breaks the protocol, with the close code that answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame or message larger than {0} bytes")]
    TooBig(usize),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code to send before closing.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => codes::WS_PROTOCOL_ERROR,
            WsError::TooBig(_) => codes::WS_MESSAGE_TOO_BIG,
            WsError::InvalidUtf8 => codes::WS_INVALID_PAYLOAD,
        }
    }
}

/// A frame's opcode (RFC 6455, 5.2). The reserved ones are refused while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continue,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// The opcode in a frame's low four bits; `None` for the reserved 0x3-0x7 and 0xb-0xf.
    fn from_bits(bits: u8) -> Option<OpCode> {
        match bits & 0x0f {
            0x0 => Some(OpCode::Continue),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xa => Some(OpCode::Pong),
            _ => None,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Whether a peer may send this close code (RFC 6455, 7.4): 1000-1003, 1007-1013, and 3000-4999
/// for libraries and applications. 1004 is reserved; 1005, 1006 and 1015 never go on the wire;
/// 1014 and the rest of 1016-2999 stay refused, as they always were here.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// A decoded frame header; the payload follows it, already unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: OpCode,
    pub header_len: usize,
    pub payload_len: usize,
}

impl FrameHead {
    /// Bytes the whole frame takes.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    /// Decodes the frame at the start of `buf`. `Ok(None)` means more bytes are needed. When the
    /// whole frame is there its payload is unmasked in place.
    pub fn decode(buf: &mut [u8], max_frame: usize) -> Result<Option<FrameHead>, WsError> {
        let Ok(head) = FrameHead::parse(buf, max_frame)? else {
            return Ok(None);
        };
        if buf.len() < head.frame_len() {
            return Ok(None);
        }
        let header_len = head.header_len;
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header_len - 4..header_len]);
        for (i, byte) in buf[header_len..head.frame_len()].iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Some(head))
    }

    /// How many bytes the frame at the start of `buf` needs before it can be decoded: its whole
    /// length once its header says it, or as far as the header goes until then.
    pub fn wanted(buf: &[u8], max_frame: usize) -> Result<usize, WsError> {
        Ok(match FrameHead::parse(buf, max_frame)? {
            Ok(head) => head.frame_len(),
            Err(header) => header,
        })
    }

    /// Reads the header at the start of `buf`, checking everything it says (the payload's length
    /// is known before the mask has arrived); `Ok(Err(n))` when `n` bytes would take it further.
    pub fn parse(buf: &[u8], max_frame: usize) -> Result<Result<FrameHead, usize>, WsError> {
        if buf.len() < 2 {
            return Ok(Err(2));
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_bits(b0).ok_or(WsError::Protocol("reserved opcode"))?;
        if opcode.is_control() && !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        let (len_bytes, short_len) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(n as usize)),
        };
        let header_len = 2 + len_bytes + 4;
        if buf.len() < 2 + len_bytes {
            // The length is checked as soon as it is there, before the mask: however a read
            // cuts the header, a bad one is refused when its last byte arrives.
            return Ok(Err(2 + len_bytes));
        }
        let payload_len = match short_len {
            Some(n) => n,
            None => {
                let mut be = [0u8; 8];
                be[8 - len_bytes..].copy_from_slice(&buf[2..2 + len_bytes]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("payload length has its top bit set"));
                }
                usize::try_from(len).map_err(|_| WsError::TooBig(max_frame))?
            }
        };
        if opcode.is_control() && payload_len > 125 {
            return Err(WsError::Protocol("control frame payload over 125 bytes"));
        }
        if payload_len > max_frame {
            return Err(WsError::TooBig(max_frame));
        }
        Ok(Ok(FrameHead {
            fin,
            opcode,
            header_len,
            payload_len,
        }))
    }
}

/// A whole message, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(Cow<'a, str>),
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// A close frame; `None` when it carried no status code.
    Close(Option<u16>),
}

/// Joins fragments into messages. Holds bytes only while a fragmented message is in flight, or
/// a data frame's payload arrives over several reads (see `incoming`).
#[derive(Debug, Default)]
pub struct Assembler {
    /// The first frame's kind (`true` for text) and the bytes so far.
    partial: Option<(bool, Vec<u8>)>,
}

impl Assembler {
    /// Whether no message is in flight.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Bytes of the message in flight so far.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |(_, data)| data.len())
    }

    /// Bytes of memory held for the message in flight.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |(_, data)| data.capacity())
    }

    /// Feeds one whole decoded frame; returns a message when one is complete.
    pub fn push<'a>(
        &mut self,
        head: FrameHead,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Option<Message<'a>>, WsError> {
        match head.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => control_message(head.opcode, payload),
            OpCode::Text | OpCode::Binary if head.fin => {
                if self.partial.is_some() {
                    return Err(NEW_BEFORE_END);
                }
                // The frame limit leaves room for a control frame, so a limit below 125 bytes
                // is the message's own.
                if payload.len() > max_message {
                    return Err(WsError::TooBig(max_message));
                }
                data_message(head.opcode == OpCode::Text, Cow::Borrowed(payload))
            }
            _ => {
                self.start_frame(&head, max_message)?;
                self.extend(payload);
                self.end_frame(head.fin)
            }
        }
    }

    /// A data frame starts whose payload will come through `extend`: checks it may come now and
    /// that the message stays within `max_message`, and makes room for it.
    pub fn start_frame(&mut self, head: &FrameHead, max_message: usize) -> Result<(), WsError> {
        let data = match (head.opcode, &mut self.partial) {
            (OpCode::Continue, Some((_, data))) => data,
            (OpCode::Continue, None) => {
                return Err(WsError::Protocol("continuation without a first frame"))
            }
            (OpCode::Text | OpCode::Binary, None) => {
                let is_text = head.opcode == OpCode::Text;
                &mut self.partial.insert((is_text, Vec::new())).1
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(NEW_BEFORE_END),
            _ => {
                return Err(WsError::Protocol(
                    "a control frame is not part of a message",
                ))
            }
        };
        let needed = data.len() + head.payload_len;
        if needed > max_message {
            return Err(WsError::TooBig(max_message));
        }
        if needed > data.capacity() {
            // Doubling, as a Vec does, so that many small fragments cost few copies; but never
            // past the largest message.
            let target = needed.max(data.capacity() * 2).min(max_message);
            data.reserve_exact(target - data.len());
        }
        Ok(())
    }

    /// Part of the payload of the data frame started last.
    pub fn extend(&mut self, piece: &[u8]) {
        if let Some((_, data)) = &mut self.partial {
            data.extend_from_slice(piece);
        }
    }

    /// The data frame started last is complete; returns the message when it was the last one.
    pub fn end_frame(&mut self, fin: bool) -> Result<Option<Message<'static>>, WsError> {
        if !fin {
            return Ok(None);
        }
        let Some((is_text, data)) = self.partial.take() else {
            return Ok(None);
        };
        data_message(is_text, Cow::Owned(data))
    }
}

const NEW_BEFORE_END: WsError = WsError::Protocol("new message before the last one finished");

/// A whole data message: text checked for UTF-8, binary refused later by the session.
fn data_message(is_text: bool, data: Cow<'_, [u8]>) -> Result<Option<Message<'_>>, WsError> {
    if !is_text {
        return Ok(Some(Message::Binary));
    }
    let text = match data {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
        Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
    };
    text.map(|text| Some(Message::Text(text)))
        .ok_or(WsError::InvalidUtf8)
}

/// A control frame's message. Control frames may come between a message's fragments.
pub fn control_message(opcode: OpCode, payload: &[u8]) -> Result<Option<Message<'_>>, WsError> {
    Ok(Some(match opcode {
        OpCode::Ping => Message::Ping(payload),
        OpCode::Pong => Message::Pong,
        _ => close_message(payload)?,
    }))
}

fn close_message(payload: &[u8]) -> Result<Message<'_>, WsError> {
    match payload {
        [] => Ok(Message::Close(None)),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(WsError::Protocol("close code not allowed"));
            }
            std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close(Some(code)))
        }
    }
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A server text frame (unmasked, unfragmented).
pub fn text_frame(text: &str) -> Bytes {
    encode(0x1, text.as_bytes())
}

/// The text of a frame `text_frame` made, for reading back what a cache channel keeps.
pub fn text_payload(frame: &[u8]) -> Option<&str> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    std::str::from_utf8(frame.get(header..)?).ok()
}

/// A server pong frame echoing the ping's payload.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode(0xa, payload)
}

/// A server close frame. The reason is cut to fit the 125-byte control frame limit.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(0x8, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_read_back() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let text = "x".repeat(len);
            assert_eq!(text_payload(&text_frame(&text)), Some(text.as_str()));
        }
        assert_eq!(text_payload(&[0x81]), None);
    }

    const MAX: usize = 64 * 1024;

    /// A client frame, masked as clients must.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(mut bytes: Vec<u8>) -> Result<Vec<String>, WsError> {
        let mut assembler = Assembler::default();
        let mut seen = Vec::new();
        let mut at = 0;
        while let Some(head) = FrameHead::decode(&mut bytes[at..], MAX)? {
            let payload = bytes[at + head.header_len..at + head.frame_len()].to_vec();
            if let Some(message) = assembler.push(head, &payload, MAX)? {
                seen.push(format!("{message:?}"));
            }
            at += head.frame_len();
        }
        Ok(seen)
    }

    #[test]
    fn unmasks_text() {
        let seen = decode_all(client_frame(0x81, b"Hello")).unwrap();
        assert_eq!(seen, vec![r#"Text("Hello")"#]);
    }

    #[test]
    fn needs_more_bytes_until_complete() {
        let mut frame = client_frame(0x81, &[b'a'; 300]);
        for cut in [0, 1, 2, 3, 7, 299] {
            assert_eq!(
                FrameHead::decode(&mut frame[..cut].to_vec(), MAX),
                Ok(None),
                "{cut}"
            );
        }
        let head = FrameHead::decode(&mut frame, MAX).unwrap().unwrap();
        assert_eq!((head.header_len, head.payload_len), (8, 300));
    }

    #[test]
    fn rejects_unmasked_reserved_and_bad_control_frames() {
        let unmasked = vec![0x81, 0x01, b'a'];
        let cases: [(Vec<u8>, u16); 6] = [
            (unmasked, 1002),
            (client_frame(0xc1, b"x"), 1002),
            (client_frame(0x83, b"x"), 1002),
            (client_frame(0x8b, b"x"), 1002),
            (client_frame(0x09, b"x"), 1002),
            (client_frame(0x89, &[0; 126]), 1002),
        ];
        for (bytes, code) in cases {
            assert_eq!(decode_all(bytes).unwrap_err().close_code(), code);
        }
    }

    #[test]
    fn fragments_join_with_interleaved_control_frames() {
        let mut bytes = client_frame(0x01, b"Hel");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, "lo é".as_bytes()));
        let seen = decode_all(bytes).unwrap();
        assert_eq!(
            seen,
            vec!["Ping([112])".to_string(), r#"Text("Hello é")"#.to_string()]
        );
    }

    #[test]
    fn continuation_without_start_and_new_message_mid_fragment_fail() {
        assert!(decode_all(client_frame(0x80, b"x")).is_err());
        let mut bytes = client_frame(0x01, b"a");
        bytes.extend(client_frame(0x81, b"b"));
        assert_eq!(decode_all(bytes).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn oversize_frames_and_messages_close_with_1009() {
        assert_eq!(
            decode_all(client_frame(0x81, &vec![b'a'; MAX + 1]))
                .unwrap_err()
                .close_code(),
            1009
        );
        let mut bytes = client_frame(0x01, &vec![b'a'; MAX / 2 + 1]);
        bytes.extend(client_frame(0x80, &vec![b'a'; MAX / 2 + 1]));
        assert_eq!(decode_all(bytes).unwrap_err(), WsError::TooBig(MAX));
        let mut huge = vec![0x81, 0xff];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(decode_all(huge).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn bad_utf8_closes_with_1007() {
        assert_eq!(
            decode_all(client_frame(0x81, &[0xff, 0xfe]))
                .unwrap_err()
                .close_code(),
            1007
        );
        let mut split = client_frame(0x01, &[0xc3]);
        split.extend(client_frame(0x80, &[0x28]));
        assert_eq!(decode_all(split).unwrap_err().close_code(), 1007);
    }

    #[test]
    fn close_codes_are_checked() {
        assert_eq!(
            decode_all(client_frame(0x88, &[])).unwrap(),
            vec!["Close(None)"]
        );
        assert_eq!(
            decode_all(client_frame(0x88, &[0x03, 0xe8, b'o', b'k'])).unwrap(),
            vec!["Close(Some(1000))"]
        );
        for bad in [
            vec![0x03],
            vec![0x03, 0xed],
            vec![0x00, 0x00],
            vec![0x03, 0xe8, 0xff],
        ] {
            assert!(decode_all(client_frame(0x88, &bad)).is_err(), "{bad:?}");
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1014,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!close_code_allowed(code), "{code}");
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1013, 3000, 4999,
        ] {
            assert!(close_code_allowed(code), "{code}");
        }
    }

    #[test]
    fn binary_is_reported_and_encoding_uses_all_length_forms() {
        assert_eq!(
            decode_all(client_frame(0x82, b"\x00")).unwrap(),
            vec!["Binary"]
        );
        assert_eq!(&text_frame("hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&text_frame(&"a".repeat(200))[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&text_frame(&"a".repeat(70000))[..2], &[0x81, 127]);
        assert_eq!(close_frame(4200, &"é".repeat(100)).len(), 2 + 2 + 122);
        assert_eq!(&pong_frame(b"x")[..], &[0x8a, 1, b'x']);
    }
}
