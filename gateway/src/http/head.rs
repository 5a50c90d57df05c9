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
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("chunked request bodies are not accepted; send Content-Length")]
    Chunked,
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
}

impl RequestHead {
    /// Parses the head at the start of `buf`. `Ok(None)` means it is not complete yet; otherwise
    /// returns the head and how many bytes it took.
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

    /// The body length the head announces.
    pub fn content_length(&self) -> Result<usize, HeadError> {
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Err(HeadError::Chunked);
        }
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| HeadError::BadContentLength),
        }
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
        assert_eq!(head.content_length(), Ok(5));
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
        let (head, _) = RequestHead::parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.content_length(), Err(HeadError::Chunked));
        let (head, _) = RequestHead::parse(b"GET / HTTP/1.0\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive());
        let (head, _) = RequestHead::parse(
            b"GET / HTTP/1.1\r\nConnection: close\r\nContent-Length: x\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert!(!head.keep_alive());
        assert_eq!(head.content_length(), Err(HeadError::BadContentLength));
    }
}
