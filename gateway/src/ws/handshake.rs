//! Validation of the HTTP upgrade that opens a WebSocket.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY};

/// Appended to the client's key before hashing (RFC 6455, 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("a WebSocket upgrade must use GET")]
    NotGet,
    #[error("missing \"Upgrade: websocket\" header")]
    NoUpgradeHeader,
    #[error("missing \"Connection: upgrade\" header")]
    NoConnectionUpgrade,
    #[error("only Sec-WebSocket-Version 13 is supported")]
    BadVersion,
    #[error("Sec-WebSocket-Key is missing or not 16 bytes in base64")]
    BadKey,
}

impl UpgradeError {
    /// 426 asks the client to change protocol or version; everything else is a bad request.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::NoUpgradeHeader | UpgradeError::BadVersion => 426,
            _ => 400,
        }
    }
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value to answer with.
/// `header` looks a header up by name, case-insensitively.
pub fn accept_upgrade<'a>(
    method: &str,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, UpgradeError> {
    if method != "GET" {
        return Err(UpgradeError::NotGet);
    }
    if !has_token(header("upgrade"), "websocket") {
        return Err(UpgradeError::NoUpgradeHeader);
    }
    if !has_token(header("connection"), "upgrade") {
        return Err(UpgradeError::NoConnectionUpgrade);
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(UpgradeError::BadVersion);
    }
    let key = header("sec-websocket-key")
        .map(str::trim)
        .ok_or(UpgradeError::BadKey)?;
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key)),
        _ => Err(UpgradeError::BadKey),
    }
}

/// `Sec-WebSocket-Accept` for a client's key: base64 of SHA-1 over the key as sent and the GUID.
/// SHA-1 is what the RFC fixes here; it proves the server read the key, it protects nothing.
fn accept_key(key: &str) -> String {
    let mut sha1 = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes());
    sha1.update(ACCEPT_GUID);
    BASE64.encode(sha1.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    const GOOD: [(&str, &str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            accept_upgrade("GET", headers(&GOOD)),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())
        );
    }

    #[test]
    fn each_missing_piece_is_named() {
        assert_eq!(
            accept_upgrade("POST", headers(&GOOD)),
            Err(UpgradeError::NotGet)
        );
        let cases: [(usize, (&str, &str), UpgradeError); 5] = [
            (0, ("Upgrade", "h2c"), UpgradeError::NoUpgradeHeader),
            (
                1,
                ("Connection", "keep-alive"),
                UpgradeError::NoConnectionUpgrade,
            ),
            (2, ("Sec-WebSocket-Version", "8"), UpgradeError::BadVersion),
            (3, ("Sec-WebSocket-Key", "c2hvcnQ="), UpgradeError::BadKey),
            (3, ("Sec-WebSocket-Key", "!!!"), UpgradeError::BadKey),
        ];
        for (index, replacement, error) in cases {
            let mut pairs = GOOD;
            pairs[index] = replacement;
            assert_eq!(accept_upgrade("GET", headers(&pairs)), Err(error.clone()));
        }
        assert_eq!(UpgradeError::BadVersion.status(), 426);
        assert_eq!(UpgradeError::BadKey.status(), 400);
    }
}
