//! HMAC-SHA256 signatures: channel authorization strings and HTTP API request signing.

use md5::{Digest, Md5};
use ring::hmac;

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// Hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    hex::encode(hmac::sign(&key(secret), message.as_bytes()))
}

/// Checks a hex signature in constant time.
pub fn verify(secret: &str, message: &str, signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex) else {
        return false;
    };
    hmac::verify(&key(secret), message.as_bytes(), &signature).is_ok()
}

/// The string a private or presence channel's `auth` signs.
pub fn channel_auth_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// Checks a subscription's `auth` field, `<app_key>:<hex signature>`.
pub fn verify_channel_auth(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    // The key is public; only the signature needs a constant-time compare.
    key == app_key
        && verify(
            secret,
            &channel_auth_message(socket_id, channel, channel_data),
            signature,
        )
}

/// Checks a sign-in's `auth` field, which signs `"<socket_id>::user::<user_data>"`.
pub fn verify_user_auth(
    app_key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    key == app_key
        && verify(
            secret,
            &format!("{socket_id}::user::{user_data}"),
            signature,
        )
}

/// Hex MD5 of a request body, as `body_md5` carries it.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string an HTTP API request signs: `METHOD\nPATH\nk=v&...`, parameters other than
/// `auth_signature` with lower-cased keys, sorted, joined unescaped.
pub fn api_string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method}\n{path}\n{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn channel_auth_vector() {
        let expected = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(sign(SECRET, "1234.1234:private-foobar"), expected);
        let auth = format!("{KEY}:{expected}");
        let cases = [
            (KEY, "1234.1234", auth.as_str(), true),
            (KEY, "1234.1235", auth.as_str(), false),
            ("other", "1234.1234", auth.as_str(), false),
            (KEY, "1234.1234", KEY, false),
            (KEY, "1234.1234", "k:zz", false),
        ];
        for (key, socket_id, given, valid) in cases {
            let verified =
                verify_channel_auth(key, SECRET, socket_id, "private-foobar", None, given);
            assert_eq!(verified, valid, "{key} {socket_id} {given}");
        }
    }

    #[test]
    fn presence_auth_covers_channel_data() {
        let data = r#"{"user_id":"1"}"#;
        let signature = sign(SECRET, &format!("1.1:presence-a:{data}"));
        let auth = format!("{KEY}:{signature}");
        assert!(verify_channel_auth(
            KEY,
            SECRET,
            "1.1",
            "presence-a",
            Some(data),
            &auth
        ));
        assert!(!verify_channel_auth(
            KEY,
            SECRET,
            "1.1",
            "presence-a",
            Some("{}"),
            &auth
        ));
    }

    #[test]
    fn user_auth_covers_socket_and_user_data() {
        let data = r#"{"id":"u1"}"#;
        let auth = format!("{KEY}:{}", sign(SECRET, &format!("1.1::user::{data}")));
        assert!(verify_user_auth(KEY, SECRET, "1.1", data, &auth));
        assert!(!verify_user_auth(KEY, SECRET, "1.2", data, &auth));
        assert!(!verify_user_auth(
            KEY,
            SECRET,
            "1.1",
            r#"{"id":"u2"}"#,
            &auth
        ));
        assert!(!verify_user_auth("other", SECRET, "1.1", data, &auth));
    }

    #[test]
    fn api_request_vector() {
        let to_sign = api_string_to_sign(
            "POST",
            "/apps/3/events",
            [
                ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
                ("auth_version", "1.0"),
                ("AUTH_KEY", KEY),
                ("auth_timestamp", "1353088179"),
                ("auth_signature", "ignored"),
            ],
        );
        assert_eq!(
            to_sign,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let expected = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        assert_eq!(sign(SECRET, &to_sign), expected);
        assert!(verify(SECRET, &to_sign, expected));
    }

    #[test]
    fn md5_of_empty_body() {
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
