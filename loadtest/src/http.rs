//! A minimal HTTP/1.1 client: keep-alive requests for publishing through the Pusher HTTP API,
//! and one-shot GETs for the server's metrics. Responses are read by Content-Length, chunked
//! encoding or end of stream.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::time::timeout;

use crate::cause::FailureCause;
use crate::net::ClientStream;
use crate::pusher::EndpointError;
use crate::receive_time;
use crate::target::Url;
use crate::tls::TlsTarget;

/// Metrics pages and API answers are small; anything larger is refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
const MAX_HEADERS: usize = 64;
const READ_CHUNK_BYTES: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect: {}", .0.key())]
    Connect(FailureCause),
    #[error("connection failed: {}", .0.key())]
    Transfer(FailureCause),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("connection closed before the response ended")]
    Truncated,
}

impl HttpError {
    /// The key this failure is counted under in reports.
    pub fn cause_key(&self) -> String {
        match self {
            HttpError::Connect(cause) | HttpError::Transfer(cause) => cause.key(),
            HttpError::Timeout => FailureCause::Timeout.key(),
            HttpError::Malformed(_) | HttpError::TooLarge => "http_malformed".into(),
            HttpError::Truncated => FailureCause::EndOfStream.key(),
        }
    }
}

/// A resolved HTTP target.
pub struct HttpEndpoint {
    pub address: SocketAddr,
    /// The Host header.
    pub authority: String,
    /// The URL's own path, for one-shot GETs of that URL.
    pub path_and_query: String,
    pub tls: Option<TlsTarget>,
}

impl HttpEndpoint {
    pub fn new(
        url: &Url,
        ca: Option<&std::path::Path>,
        insecure: bool,
    ) -> Result<Self, EndpointError> {
        let tls = if url.scheme.is_tls() {
            Some(TlsTarget::new(&url.host, ca, insecure)?)
        } else {
            None
        };
        Ok(HttpEndpoint {
            address: url.resolve()?,
            authority: url.authority(),
            path_and_query: url.path_and_query.clone(),
            tls,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// False when the server asked to close or the body ran to the end of the stream.
    pub reusable: bool,
    /// From the request's write to the kernel's receipt of the response's last bytes, before
    /// this process read them (`receive_time`); None over TLS.
    pub answered_in: Option<Duration>,
}

pub struct HttpConnection {
    stream: ClientStream,
    buffer: Vec<u8>,
}

impl HttpConnection {
    pub async fn open(endpoint: &HttpEndpoint, step_timeout: Duration) -> Result<Self, HttpError> {
        let tcp = ClientStream::connect_tcp(endpoint.address, None, step_timeout)
            .await
            .map_err(HttpError::Connect)?;
        let stream = timeout(step_timeout, ClientStream::wrap(tcp, endpoint.tls.as_ref()))
            .await
            .map_err(|_| HttpError::Timeout)?
            .map_err(HttpError::Connect)?;
        if let ClientStream::Plain(tcp) = &stream {
            // Without the stamps only `answered_in` is missing.
            let _ = receive_time::enable(tcp.as_raw_fd());
        }
        Ok(HttpConnection {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Sends one request and reads its response, within `step_timeout`.
    pub async fn request(
        &mut self,
        endpoint: &HttpEndpoint,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        step_timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let mut request = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loadtest/{}\r\n",
            endpoint.authority,
            env!("CARGO_PKG_VERSION")
        );
        if !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        timeout(step_timeout, self.exchange(&bytes))
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<HttpResponse, HttpError> {
        let transfer = |error: std::io::Error| HttpError::Transfer(FailureCause::from_io(&error));
        let sent = SystemTime::now();
        self.stream.write_all(request).await.map_err(transfer)?;
        self.stream.flush().await.map_err(transfer)?;
        self.buffer.clear();
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            let (read, arrived) = self.read(&mut chunk).await.map_err(transfer)?;
            self.buffer.extend_from_slice(&chunk[..read]);
            if self.buffer.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge);
            }
            if let Some(mut response) = parse_response(&self.buffer, read == 0)? {
                response.answered_in = arrived.and_then(|at| at.duration_since(sent).ok());
                return Ok(response);
            }
            if read == 0 {
                return Err(HttpError::Truncated);
            }
        }
    }

    /// Reads what is there once the stream is readable; over plaintext also when the kernel
    /// received it.
    async fn read(&mut self, chunk: &mut [u8]) -> std::io::Result<(usize, Option<SystemTime>)> {
        let ClientStream::Plain(tcp) = &self.stream else {
            return Ok((self.stream.read(chunk).await?, None));
        };
        loop {
            tcp.readable().await?;
            match tcp.try_io(Interest::READABLE, || {
                receive_time::recv(tcp.as_raw_fd(), chunk)
            }) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

/// One GET of the endpoint's own URL on a fresh connection.
pub async fn get(
    endpoint: &HttpEndpoint,
    step_timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let mut connection = HttpConnection::open(endpoint, step_timeout).await?;
    connection
        .request(endpoint, "GET", &endpoint.path_and_query, b"", step_timeout)
        .await
}

/// The response in `buffer` once it is complete; `at_end` says the stream has ended.
fn parse_response(buffer: &[u8], at_end: bool) -> Result<Option<HttpResponse>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed("unparsable head")),
    };
    let status = response.code.ok_or(HttpError::Malformed("no status"))?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
            .map(str::trim)
    };
    let asks_close = header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
    let chunked = header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let content_length = match header("content-length") {
        Some(value) => Some(
            value
                .parse::<usize>()
                .map_err(|_| HttpError::Malformed("bad content-length"))?,
        ),
        None => None,
    };
    let body_bytes = &buffer[head_length..];
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let (body, reusable) = if bodiless {
        (Vec::new(), !asks_close)
    } else if chunked {
        match decode_chunked(body_bytes)? {
            Some(body) => (body, !asks_close),
            None => return Ok(None),
        }
    } else if let Some(length) = content_length {
        if body_bytes.len() < length {
            return Ok(None);
        }
        (body_bytes[..length].to_vec(), !asks_close)
    } else if at_end {
        (body_bytes.to_vec(), false)
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        body,
        reusable,
        answered_in: None,
    }))
}

/// The decoded body once the final chunk and trailers are in `bytes`.
fn decode_chunked(mut bytes: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find_crlf(bytes) else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&bytes[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let Some(line_end) = find_crlf(bytes) else {
                    return Ok(None);
                };
                if line_end == 0 {
                    return Ok(Some(body));
                }
                bytes = &bytes[line_end + 2..];
            }
        }
        if bytes.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&bytes[..size]);
        if &bytes[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk terminator"));
        }
        bytes = &bytes[size + 2..];
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_bodies_wait_until_complete() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{";
        assert_eq!(parse_response(head, false).expect("valid"), None);
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let response = parse_response(full, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (response.status, response.body.as_slice(), response.reusable),
            (200, &b"{}"[..], true)
        );
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n";
        let response = parse_response(text, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(response.body, b"abcdef");
        assert_eq!(
            parse_response(&text[..text.len() - 2], false).expect("valid"),
            None
        );
    }

    #[test]
    fn bodies_without_length_run_to_the_end() {
        let text = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nmetrics";
        assert_eq!(parse_response(text, false).expect("valid"), None);
        let response = parse_response(text, true)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (response.body.as_slice(), response.reusable),
            (&b"metrics"[..], false)
        );
    }
}
