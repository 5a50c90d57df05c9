//! Request heads, parsed with httparse into an owned form that outlives the read buffer.

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Why a request head is refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("bad Content-Length: only digits are valid")]
    BadContentLength,
    #[error("Content-Length values differ")]
    ConflictingContentLengths,
    #[error("Transfer-Encoding and Content-Length together")]
    LengthWithTransferEncoding,
    #[error("chunked request bodies are not accepted; send Content-Length")]
    Chunked,
    #[error("unsupported Transfer-Encoding")]
    TransferEncoding,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            HeadError::Chunked => 411,
            _ => 400,
        }
    }
}

/// A parsed request line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path and query exactly as sent.
    pub target: String,
    /// HTTP minor version: 0 or 1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    /// The body's length, from the one framing the head allows: Content-Length, or none.
    pub content_length: usize,
}

impl RequestHead {
    /// Parses the head at the start of `buf`. `Ok(None)` means it is not complete yet; otherwise
    /// returns the head and how many bytes it took. A head whose body framing is ambiguous is
    /// refused (RFC 9112 section 6): a request smuggled behind it must never be read.
    pub fn parse(buf: &[u8], max_head: usize) -> Result<Option<(RequestHead, usize)>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let status = request
            .parse(buf)
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        let httparse::Status::Complete(len) = status else {
            return if buf.len() > max_head {
                Err(HeadError::TooLarge(max_head))
            } else {
                Ok(None)
            };
        };
        if len > max_head {
            return Err(HeadError::TooLarge(max_head));
        }
        let content_length = body_length(request.headers)?;
        let head = RequestHead {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            minor_version: request.version.unwrap_or(1),
            headers: request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            content_length,
        };
        Ok(Some((head, len)))
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }

    /// The raw query string, empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").map(str::to_ascii_lowercase);
        match connection.as_deref() {
            Some(v) if v.contains("close") => false,
            Some(v) if v.contains("keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }
}

/// The body length the headers announce. Every Content-Length (and every element of a list
/// in one) must be digits only and agree; Transfer-Encoding is refused, chunked with 411.
fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, HeadError> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let mut length = None;
    for header in named("content-length") {
        for element in header.value.split(|&b| b == b',') {
            let digits = element.trim_ascii();
            let value = std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok())
                .ok_or(HeadError::BadContentLength)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(HeadError::ConflictingContentLengths);
            }
            length = Some(value);
        }
    }
    let mut encodings = named("transfer-encoding").peekable();
    if encodings.peek().is_none() {
        return Ok(length.unwrap_or(0));
    }
    if length.is_some() {
        return Err(HeadError::LengthWithTransferEncoding);
    }
    let chunked = encodings.any(|h| {
        h.value
            .split(|&b| b == b',')
            .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    Err(if chunked {
        HeadError::Chunked
    } else {
        HeadError::TransferEncoding
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_head_and_reports_length() {
        let raw = b"POST /apps/1/events?a=b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let (head, len) = RequestHead::parse(raw, 8192).unwrap().unwrap();
        assert_eq!(len, raw.len() - 5);
        assert_eq!(
            (head.method.as_str(), head.path(), head.query()),
            ("POST", "/apps/1/events", "a=b")
        );
        assert_eq!(head.header("content-length"), Some("5"));
        assert_eq!(head.content_length, 5);
        assert!(head.keep_alive());
    }

    #[test]
    fn partial_heads_wait_until_too_large() {
        assert_eq!(
            RequestHead::parse(b"GET / HTTP/1.1\r\nHost:", 8192),
            Ok(None)
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(
            RequestHead::parse(long.as_bytes(), 8192),
            Err(HeadError::TooLarge(8192))
        );
        assert_eq!(HeadError::TooLarge(8192).status(), 431);
    }

    #[test]
    fn malformed_chunked_and_connection_rules() {
        assert!(matches!(
            RequestHead::parse(b"\x01\x02 / HTTP/1.1\r\n\r\n", 8192),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            RequestHead::parse(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                8192
            ),
            Err(HeadError::Chunked)
        );
        let (head, _) = RequestHead::parse(b"GET / HTTP/1.0\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive());
        let (head, _) = RequestHead::parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive());
    }

    fn framing(headers: &str) -> Result<usize, HeadError> {
        let raw = format!("POST /apps/1/events HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        RequestHead::parse(raw.as_bytes(), 8192).map(|head| head.unwrap().0.content_length)
    }

    #[test]
    fn content_length_is_digits_and_one_value() {
        assert_eq!(framing(""), Ok(0));
        assert_eq!(framing("Content-Length: 63\r\n"), Ok(63));
        assert_eq!(framing("Content-Length:  63 \r\n"), Ok(63));
        assert_eq!(framing("Content-Length: 5\r\ncontent-length: 5\r\n"), Ok(5));
        assert_eq!(framing("Content-Length: 5, 5\r\n"), Ok(5));
        for bad in [
            "+63",
            "-1",
            "0x10",
            "6 3",
            "",
            "1e3",
            "99999999999999999999999",
        ] {
            assert_eq!(
                framing(&format!("Content-Length: {bad}\r\n")),
                Err(HeadError::BadContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 63\r\n"),
            Err(HeadError::ConflictingContentLengths)
        );
        assert_eq!(
            framing("Content-Length: 5, 63\r\n"),
            Err(HeadError::ConflictingContentLengths)
        );
    }

    #[test]
    fn transfer_encoding_is_refused() {
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            Err(HeadError::LengthWithTransferEncoding)
        );
        assert_eq!(
            framing("Content-Length: 5\r\nTransfer-Encoding: gzip\r\n"),
            Err(HeadError::LengthWithTransferEncoding)
        );
        assert_eq!(
            framing("Transfer-Encoding: gzip, Chunked\r\n"),
            Err(HeadError::Chunked)
        );
        assert_eq!(
            framing("Transfer-Encoding: gzip\r\n"),
            Err(HeadError::TransferEncoding)
        );
        assert_eq!(HeadError::Chunked.status(), 411);
        assert_eq!(HeadError::TransferEncoding.status(), 400);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length\t: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
            "POST / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n",
            "POST / HTTP/1.1\rX: y\r\n\r\n",
            "POST / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
            "POST / HTTP/1.1\r\nX-A\r: a\r\n\r\n",
            "POST /\r HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(
                    RequestHead::parse(raw.as_bytes(), 8192),
                    Err(HeadError::Malformed(_))
                ),
                "{raw:?}"
            );
        }
    }
}
