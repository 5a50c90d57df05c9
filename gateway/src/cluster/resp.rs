//! What a Redis connection in subscribe mode sends: RESP2 pushes, arrays of bulk strings and
//! integers (`smessage`, `ssubscribe`, `sunsubscribe`). Sans-IO: `Push::parse` reads one from
//! the front of a buffer, or says it is not whole yet; the link's reader owns the socket.
//!
//! Every length is bounded before anything is held for it, so a server (or whatever answers on
//! its address) that sends nonsense ends its link instead of growing the buffer without end.

/// Longest bulk string: a broadcast envelope or a roster chunk is far smaller.
pub const MAX_BULK: usize = 64 * 1024 * 1024;
/// Longest header line with its CRLF (`*3`, `$1234`, `:1`, `-ERR ...`).
pub const MAX_LINE: usize = 1024;
/// Most elements of one push; the longest a subscribe-mode connection sends has three.
pub const MAX_ELEMENTS: usize = 16;

/// A push: its kind (lower case) and its other elements; an integer is kept as its digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub kind: Vec<u8>,
    pub fields: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the server answered an error: {0}")]
    ServerError(String),
    #[error("a push is not an array")]
    NotAnArray,
    #[error("a push has no elements")]
    Empty,
    #[error("a push has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("an array element is not a bulk string or integer")]
    BadElement,
    #[error("a length is not a number")]
    BadLength,
    #[error("a bulk string is longer than {MAX_BULK} bytes")]
    BulkTooLong,
    #[error("a line is longer than {MAX_LINE} bytes or not ended by CRLF")]
    BadLine,
}

impl Push {
    /// The push at the front of `buf` and how many bytes it took; None while it is not whole.
    pub fn parse(buf: &[u8]) -> Result<Option<(Push, usize)>, PushError> {
        let mut reader = Reader { buf, at: 0 };
        let Some(header) = reader.line()? else {
            return Ok(None);
        };
        let count = match header.split_first() {
            Some((b'*', digits)) => length(digits)?,
            Some((b'-', error)) => {
                return Err(PushError::ServerError(
                    String::from_utf8_lossy(error).into_owned(),
                ))
            }
            _ => return Err(PushError::NotAnArray),
        };
        if count == 0 {
            return Err(PushError::Empty);
        }
        if count > MAX_ELEMENTS {
            return Err(PushError::TooManyElements);
        }
        // Where each element lies; copied only once the whole push is there, so that a push
        // arriving over many reads is not copied again at each.
        let mut spans = [(0, 0); MAX_ELEMENTS];
        for span in &mut spans[..count] {
            let Some(element) = reader.element()? else {
                return Ok(None);
            };
            *span = element;
        }
        let mut elements = spans[..count]
            .iter()
            .map(|&(from, to)| buf[from..to].to_vec());
        let kind = elements.next().unwrap_or_default().to_ascii_lowercase();
        let push = Push {
            kind,
            fields: elements.collect(),
        };
        Ok(Some((push, reader.at)))
    }
}

/// A position in a buffer being parsed.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next line without its CRLF; None while it is not whole.
    fn line(&mut self) -> Result<Option<&'a [u8]>, PushError> {
        let rest = &self.buf[self.at..];
        let window = &rest[..rest.len().min(MAX_LINE)];
        let Some(end) = window.iter().position(|&byte| byte == b'\n') else {
            return match rest.len() >= MAX_LINE {
                true => Err(PushError::BadLine),
                false => Ok(None),
            };
        };
        let line = window[..end]
            .strip_suffix(b"\r")
            .ok_or(PushError::BadLine)?;
        self.at += end + 1;
        Ok(Some(line))
    }

    /// Where the next bulk string or integer (its digits) lies in the buffer; None while it is
    /// not whole.
    fn element(&mut self) -> Result<Option<(usize, usize)>, PushError> {
        let Some(line) = self.line()? else {
            return Ok(None);
        };
        match line.split_first() {
            Some((b'$', digits)) => {
                let len = length(digits)?;
                if len > MAX_BULK {
                    return Err(PushError::BulkTooLong);
                }
                let rest = &self.buf[self.at..];
                if rest.len() < len + 2 {
                    return Ok(None);
                }
                if &rest[len..len + 2] != b"\r\n" {
                    return Err(PushError::BadLine);
                }
                let from = self.at;
                self.at += len + 2;
                Ok(Some((from, from + len)))
            }
            Some((b':', digits)) => {
                std::str::from_utf8(digits)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or(PushError::BadLength)?;
                // The digits end where the line's CRLF begins.
                let to = self.at - 2;
                Ok(Some((to - digits.len(), to)))
            }
            _ => Err(PushError::BadElement),
        }
    }
}

/// A length: decimal digits only, no sign (a null bulk string, `$-1`, is no push's element).
fn length(digits: &[u8]) -> Result<usize, PushError> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(PushError::BadLength);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(PushError::BadLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every push in `stream`, and the error that ended it, if any.
    fn parse_all(mut stream: &[u8]) -> (Vec<Push>, Option<PushError>) {
        let mut pushes = Vec::new();
        loop {
            match Push::parse(stream) {
                Ok(Some((push, used))) => {
                    pushes.push(push);
                    stream = &stream[used..];
                }
                Ok(None) => return (pushes, None),
                Err(error) => return (pushes, Some(error)),
            }
        }
    }

    const STREAM: &[u8] = b"*3\r\n$10\r\nssubscribe\r\n$3\r\nc:1\r\n:1\r\n\
                            *3\r\n$8\r\nsmessage\r\n$3\r\nc:1\r\n$7\r\nhi\r\nyou\r\n\
                            *3\r\n$12\r\nSUNSUBSCRIBE\r\n$3\r\nc:1\r\n:0\r\n";

    #[test]
    fn subscribe_mode_pushes_are_read_whole() {
        let (pushes, error) = parse_all(STREAM);
        assert_eq!(error, None);
        let kinds: Vec<&[u8]> = pushes.iter().map(|push| push.kind.as_slice()).collect();
        assert_eq!(kinds, [&b"ssubscribe"[..], b"smessage", b"sunsubscribe"]);
        assert_eq!(pushes[0].fields, [b"c:1".to_vec(), b"1".to_vec()]);
        assert_eq!(pushes[1].fields, [b"c:1".to_vec(), b"hi\r\nyou".to_vec()]);
    }

    #[test]
    fn a_push_cut_anywhere_is_not_whole_until_its_last_byte() {
        let first = b"*3\r\n$10\r\nssubscribe\r\n$3\r\nc:1\r\n:1\r\n".len();
        for cut in 0..first {
            assert_eq!(Push::parse(&STREAM[..cut]), Ok(None), "cut at {cut}");
        }
        let (push, used) = Push::parse(&STREAM[..first]).unwrap().unwrap();
        assert_eq!((push.kind.as_slice(), used), (&b"ssubscribe"[..], first));
    }

    #[test]
    fn what_is_not_a_push_ends_the_link() {
        for (bad, expected) in [
            (
                &b"-MOVED 1 127.0.0.1:7002\r\n"[..],
                PushError::ServerError("MOVED 1 127.0.0.1:7002".into()),
            ),
            (b"+OK\r\n", PushError::NotAnArray),
            (b"*0\r\n", PushError::Empty),
            (b"*17\r\n", PushError::TooManyElements),
            (b"*99999999999999999999999\r\n", PushError::BadLength),
            (b"*-1\r\n", PushError::BadLength),
            (b"*1\r\n+x\r\n", PushError::BadElement),
            (b"*1\r\n$99999999999\r\n", PushError::BulkTooLong),
            (b"*1\r\n$-1\r\n", PushError::BadLength),
            (b"*1\r\n:1x\r\n", PushError::BadLength),
            (b"*1\r\n$2\r\nabc\r\n", PushError::BadLine),
            (b"*1\n", PushError::BadLine),
        ] {
            assert_eq!(
                Push::parse(bad),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_line_is_refused_once_it_is_too_long_to_end_in_time() {
        let long = format!("*1\r\n${}", "9".repeat(MAX_LINE));
        assert_eq!(Push::parse(long.as_bytes()), Err(PushError::BadLine));
        let short = format!("*1\r\n${}", "9".repeat(MAX_LINE - 3));
        assert_eq!(Push::parse(short.as_bytes()), Ok(None));
    }
}
