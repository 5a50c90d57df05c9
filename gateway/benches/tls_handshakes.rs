//! What a TLS handshake costs a shard: the server side of full and resumed handshakes, TLS 1.3
//! and 1.2, with the gateway's ECDSA P-256 development certificate, the gateway's server
//! configuration and its per-connection TLS session (rustls' unbuffered API, then the hand-over
//! to the gateway's record layer). Client and server are joined by memory, so no socket and no
//! client work is counted: only the time spent in the server's calls, which is what bounds the
//! handshakes one shard (one core) completes per second.
//!
//! The baseline, in the same run and with the same client and configuration, is rustls' own
//! buffered `ServerConnection`. Rounds of the two alternate; each figure is the median of the
//! rounds.
//!
//! ```sh
//! cargo bench -p gateway --bench tls_handshakes
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::tls::session::TlsSession;
use gateway::tls::{server_config, write_development_certificates, CertStore};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
    SupportedProtocolVersion,
};

const ROUNDS: usize = 7;
/// Handshakes per round: about a tenth of a second of server time each.
const FULL_PER_ROUND: usize = 300;
const RESUMED_PER_ROUND: usize = 1000;

/// The server side of one connection, fed and drained through memory.
trait Server {
    /// Takes everything the client sent; panics on a protocol error (the bench's peers agree).
    fn absorb(&mut self, wire: &mut Vec<u8>);
    /// What the server has to send.
    fn drain(&mut self) -> Vec<u8>;
}

impl Server for TlsSession {
    fn absorb(&mut self, wire: &mut Vec<u8>) {
        let used = TlsSession::absorb(self, wire, &mut |_| {}).expect("server accepts");
        assert_eq!(used, wire.len(), "memory delivers whole records");
    }

    fn drain(&mut self) -> Vec<u8> {
        let out = self.outgoing().to_vec();
        self.sent(out.len());
        out
    }
}

impl Server for ServerConnection {
    fn absorb(&mut self, wire: &mut Vec<u8>) {
        let mut unread = &wire[..];
        while !unread.is_empty() {
            self.read_tls(&mut unread).expect("buffer");
            self.process_new_packets().expect("server accepts");
        }
    }

    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.wants_write() {
            self.write_tls(&mut out).expect("buffer");
        }
        out
    }
}

/// Runs one handshake to its end, the server's tickets included, and returns the time spent in
/// the server (its construction included) and how the client says it went.
fn handshake<S: Server>(
    new_server: &dyn Fn() -> S,
    client: &Arc<ClientConfig>,
) -> (Duration, Option<HandshakeKind>) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(client.clone(), name).expect("client");
    let started = Instant::now();
    let mut server = new_server();
    let mut server_time = started.elapsed();
    for _ in 0..16 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("buffer");
        }
        let started = Instant::now();
        if !to_server.is_empty() {
            server.absorb(&mut to_server);
        }
        let to_client = server.drain();
        server_time += started.elapsed();
        let mut unread = &to_client[..];
        while !unread.is_empty() {
            client.read_tls(&mut unread).expect("buffer");
            client.process_new_packets().expect("client accepts");
        }
        if to_server.is_empty() && to_client.is_empty() && !client.is_handshaking() {
            return (server_time, client.handshake_kind());
        }
    }
    panic!("the handshake did not finish");
}

struct Case {
    name: &'static str,
    version: &'static SupportedProtocolVersion,
    resumed: bool,
}

fn client_config(ca: &[CertificateDer<'static>], case: &Case) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[case.version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !case.resumed {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

/// Handshakes per second of server time over one round.
fn round<S: Server>(
    new_server: &dyn Fn() -> S,
    client: &Arc<ClientConfig>,
    case: &Case,
    count: usize,
) -> f64 {
    let expected = if case.resumed {
        HandshakeKind::Resumed
    } else {
        HandshakeKind::Full
    };
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let (spent, kind) = handshake(new_server, client);
        assert_eq!(kind, Some(expected), "{}", case.name);
        total += spent;
    }
    count as f64 / total.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("gateway-bench-tls-{}", std::process::id()));
    let made = write_development_certificates(&dir, &["localhost".into()]).expect("certificates");
    let store = Arc::new(CertStore::load(&made.chain, &made.key).expect("certificate loads"));
    let gateway_config: Arc<ServerConfig> = server_config(store).expect("server config");
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&made.ca)
        .expect("ca")
        .collect::<Result<_, _>>()
        .expect("ca");
    std::fs::remove_dir_all(&dir).expect("clean up");

    let gateway_server = || TlsSession::new(gateway_config.clone()).expect("session");
    let rustls_server = || ServerConnection::new(gateway_config.clone()).expect("connection");
    let cases = [
        Case {
            name: "TLS 1.3 full",
            version: &rustls::version::TLS13,
            resumed: false,
        },
        Case {
            name: "TLS 1.3 resumed (ticket)",
            version: &rustls::version::TLS13,
            resumed: true,
        },
        Case {
            name: "TLS 1.2 full",
            version: &rustls::version::TLS12,
            resumed: false,
        },
        Case {
            name: "TLS 1.2 resumed (ticket)",
            version: &rustls::version::TLS12,
            resumed: true,
        },
    ];
    println!(
        "server-side handshakes per second of one core, ECDSA P-256, median of {ROUNDS} rounds"
    );
    println!(
        "{:<26} {:>14} {:>18} {:>7}",
        "case", "gateway", "rustls baseline", "ratio"
    );
    for case in &cases {
        let client = client_config(&ca, case);
        let count = if case.resumed {
            // The first handshake leaves the ticket the rounds resume with.
            handshake(&gateway_server, &client);
            RESUMED_PER_ROUND
        } else {
            FULL_PER_ROUND
        };
        let mut ours = Vec::with_capacity(ROUNDS);
        let mut baseline = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            ours.push(round(&gateway_server, &client, case, count));
            baseline.push(round(&rustls_server, &client, case, count));
        }
        let (ours, baseline) = (median(ours), median(baseline));
        println!(
            "{:<26} {:>14.0} {:>18.0} {:>6.2}x",
            case.name,
            ours,
            baseline,
            ours / baseline
        );
    }
}
