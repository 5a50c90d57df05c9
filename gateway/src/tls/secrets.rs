//! TLS 1.3 traffic secrets, kept by the gateway itself so that a connection can follow key
//! updates without holding on to rustls' connection state (which costs about 860 bytes per
//! connection, against 2 × 49 bytes for the two secrets).
//!
//! rustls gives out traffic secrets only through its key log, which it calls on the thread that
//! runs the handshake. `SecretCatcher` is that key log: it keeps what it is given in a slot of
//! the calling thread, and the connection whose handshake step is running takes it from there
//! (`take_caught`). A shard runs one handshake step at a time, so the slot always holds the
//! secrets of the connection at hand; it is emptied before each step.
//!
//! Key derivation is RFC 8446 §7.1 (HKDF-Expand-Label), §7.2 (the next application traffic
//! secret, label "traffic upd") and §7.3 (key and iv).

use std::cell::RefCell;

use ring::hkdf;
use rustls::KeyLog;
use zeroize::Zeroize;

/// The longest secret: the output of SHA-384.
const MAX_SECRET_LEN: usize = 48;
const IV_LEN: usize = 12;
const CLIENT_SECRET_LABEL: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET_LABEL: &str = "SERVER_TRAFFIC_SECRET_0";

/// One direction's TLS 1.3 application traffic secret (32 bytes for SHA-256 suites, 48 for
/// SHA-384 ones). Wiped where it lies when dropped; a copy is made only by `clone`, never by
/// moving it out of something that is then freed unwiped.
#[derive(Clone)]
pub struct TrafficSecret {
    bytes: [u8; MAX_SECRET_LEN],
    len: u8,
}

impl Drop for TrafficSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrafficSecret({} bytes)", self.len)
    }
}

/// A length for ring's HKDF output.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl TrafficSecret {
    /// A secret of a SHA-256 or SHA-384 suite; `None` for any other length.
    pub fn new(secret: &[u8]) -> Option<TrafficSecret> {
        if secret.len() != 32 && secret.len() != MAX_SECRET_LEN {
            return None;
        }
        let mut bytes = [0; MAX_SECRET_LEN];
        bytes[..secret.len()].copy_from_slice(secret);
        Some(TrafficSecret {
            bytes,
            len: secret.len() as u8,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// HKDF-Expand-Label(secret, label, "", out.len()), with the suite's hash.
    fn expand_label(&self, label: &[u8], out: &mut [u8]) {
        let algorithm = if self.as_bytes().len() == MAX_SECRET_LEN {
            hkdf::HKDF_SHA384
        } else {
            hkdf::HKDF_SHA256
        };
        let prk = hkdf::Prk::new_less_safe(algorithm, self.as_bytes());
        let length = (out.len() as u16).to_be_bytes();
        let label_len = [(b"tls13 ".len() + label.len()) as u8];
        let no_context = [0u8];
        let info = [&length[..], &label_len, b"tls13 ", label, &no_context];
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .expect("HKDF output of at most 255 hash lengths");
    }

    /// The secret that follows this one on a key update.
    pub fn next(&self) -> TrafficSecret {
        let mut next = TrafficSecret {
            bytes: [0; MAX_SECRET_LEN],
            len: self.len,
        };
        let len = usize::from(self.len);
        self.expand_label(b"traffic upd", &mut next.bytes[..len]);
        next
    }

    /// The record key (its first `key_len` bytes) and iv this secret makes.
    pub fn key_and_iv(&self, key_len: usize) -> ([u8; 32], [u8; IV_LEN]) {
        let mut key = [0; 32];
        let mut iv = [0; IV_LEN];
        self.expand_label(b"key", &mut key[..key_len]);
        self.expand_label(b"iv", &mut iv);
        (key, iv)
    }
}

/// The two application traffic secrets of one TLS 1.3 handshake, as they are caught.
#[derive(Debug, Default)]
pub struct Caught {
    pub client: Option<TrafficSecret>,
    pub server: Option<TrafficSecret>,
}

thread_local! {
    static CAUGHT: RefCell<Caught> = RefCell::default();
}

/// Empties this thread's slot, before a handshake step.
pub fn clear_caught() {
    CAUGHT.with(|slot| *slot.borrow_mut() = Caught::default());
}

/// Copies what was caught on this thread since `clear_caught` into `into`, and wipes the slot.
pub fn take_caught(into: &mut Caught) {
    CAUGHT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.client.is_some() {
            into.client = slot.client.clone();
        }
        if slot.server.is_some() {
            into.server = slot.server.clone();
        }
        // Dropped in place, so wiped: a move out would leave the bytes behind in the slot.
        *slot = Caught::default();
    });
}

/// The key log that catches the application traffic secrets, and nothing else.
#[derive(Debug)]
pub struct SecretCatcher;

impl KeyLog for SecretCatcher {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        // rustls logs some secrets (TLS 1.2's master secret) without asking `will_log` first.
        if !self.will_log(label) {
            return;
        }
        let secret = TrafficSecret::new(secret);
        CAUGHT.with(|slot| {
            let mut slot = slot.borrow_mut();
            if label == CLIENT_SECRET_LABEL {
                slot.client = secret;
            } else {
                slot.server = secret;
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_SECRET_LABEL || label == SERVER_SECRET_LABEL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        hex::decode(text).expect("hex")
    }

    /// RFC 8448 §3 (Simple 1-RTT Handshake): the server's application traffic secret and the
    /// key and iv derived from it.
    #[test]
    fn keys_are_derived_as_rfc_8448_shows() {
        let secret = TrafficSecret::new(&hex(
            "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f
             cb 63 16 43",
        ))
        .expect("a SHA-256 secret");
        let (key, iv) = secret.key_and_iv(16);
        assert_eq!(
            key[..16],
            hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")[..]
        );
        assert_eq!(iv[..], hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")[..]);
    }

    #[test]
    fn only_the_traffic_secrets_are_caught() {
        clear_caught();
        let catcher = SecretCatcher;
        assert!(!catcher.will_log("CLIENT_HANDSHAKE_TRAFFIC_SECRET"));
        catcher.log("CLIENT_HANDSHAKE_TRAFFIC_SECRET", &[], &[1; 32]);
        catcher.log(CLIENT_SECRET_LABEL, &[], &[2; 32]);
        catcher.log(SERVER_SECRET_LABEL, &[], &[3; 48]);
        let mut caught = Caught::default();
        take_caught(&mut caught);
        assert_eq!(caught.client.expect("client").as_bytes(), [2; 32]);
        assert_eq!(caught.server.expect("server").as_bytes(), [3; 48]);
        let mut again = Caught::default();
        take_caught(&mut again);
        assert!(
            again.client.is_none() && again.server.is_none(),
            "taken once"
        );
    }
}
