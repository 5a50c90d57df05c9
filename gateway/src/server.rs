//! Start-up and shutdown: open-files limit, listeners, shards, the admin thread and signals.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::admin::stats::ShardStats;
use crate::bus;
use crate::cluster::{self, ClusterLink, ClusterStats};
use crate::config::{Config, Port};
use crate::node::{Node, NodeTls, ShardLink};
use crate::shard::Listeners;
use crate::tls::{CertStore, SettledChange};

/// Descriptors kept back from the connection ceiling for the runtime itself (io_uring rings,
/// event fds, listeners, the admin port, logs).
const RESERVED_FDS_BASE: u64 = 32;
const RESERVED_FDS_PER_SHARD: u64 = 8;
/// Sockets kept back from WebSocket sessions for HTTP connections, so that a backend can still
/// publish to a node full of clients.
pub const API_RESERVE: usize = 64;
/// Pending connections each listener's kernel queue holds (capped by net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// How often the certificate files are checked for changes. Changed files load once they have
/// held still for one interval, so within two intervals of the last write.
const CERT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long start-up waits for a port's listener to go before calling the port taken.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(3);
const PORT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("port {port} on {bind} is already in use (is another gateway running there?)")]
    PortInUse { bind: std::net::IpAddr, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot write the ports file {path}: {source}")]
    PortsFile { path: PathBuf, source: io::Error },
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: io::Error },
}

/// Raises the soft open-files limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // A refused raise leaves the soft limit as it was; 1024 is the usual soft limit, for the case
    // where even that cannot be read.
    rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::Resource::NOFILE.get_soft())
        .unwrap_or(1024)
}

/// WebSocket sessions this process can hold with `fd_limit` descriptors and `shards` shards,
/// leaving `API_RESERVE` sockets to HTTP connections.
pub fn connection_ceiling(fd_limit: u64, shards: usize) -> usize {
    let reserved = RESERVED_FDS_BASE + RESERVED_FDS_PER_SHARD * shards as u64;
    (fd_limit.saturating_sub(reserved) as usize).saturating_sub(API_RESERVE)
}

fn socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
}

/// Fails if anything still listens on the address after `wait`. Needed because shards bind
/// with SO_REUSEPORT, which would let a second gateway on the same port silently share its
/// traffic. The wait is for a gateway that has just exited without closing its listeners
/// itself (killed, say): the kernel then closes them only when it tears down the process's
/// io_uring rings, which it does in the background, after the process is gone.
fn ensure_port_free(addr: SocketAddr, wait: Duration) -> Result<(), StartError> {
    let deadline = Instant::now() + wait;
    let mut waiting = false;
    loop {
        match probe_port(addr) {
            Err(StartError::PortInUse { .. }) if Instant::now() < deadline => {
                if !waiting {
                    waiting = true;
                    tracing::info!(
                        %addr,
                        wait_ms = wait.as_millis() as u64,
                        "port in use; waiting in case it is a gateway that just exited"
                    );
                }
                std::thread::sleep(PORT_POLL_INTERVAL);
            }
            result => return result,
        }
    }
}

/// Whether a listener holds the address now. A socket of any other state, such as a closed
/// connection in TIME_WAIT, does not count: SO_REUSEADDR binds past it, as the shards do.
fn probe_port(addr: SocketAddr) -> Result<(), StartError> {
    let listen_error = |source| StartError::Listen { addr, source };
    let probe = socket(addr).map_err(listen_error)?;
    probe.set_reuse_address(true).map_err(listen_error)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(StartError::PortInUse {
            bind: addr.ip(),
            port: addr.port(),
        }),
        Err(e) => Err(listen_error(e)),
    }
}

/// One of the shards' listeners: SO_REUSEPORT so the kernel spreads connections over them.
fn shard_listener(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = socket(addr).map_err(listen_error)?;
    listener.set_reuse_port(true).map_err(listen_error)?;
    listener.set_reuse_address(true).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    listener.bind(&addr.into()).map_err(listen_error)?;
    listener.listen(LISTEN_BACKLOG).map_err(listen_error)?;
    Ok(listener.into())
}

/// The admin port's listener, and the address it got.
fn admin_listener(bind: IpAddr, port: Port) -> Result<(TcpListener, SocketAddr), StartError> {
    let addr = match port {
        Port::Fixed(port) => {
            let addr = SocketAddr::new(bind, port);
            ensure_port_free(addr, PORT_RELEASE_WAIT)?;
            addr
        }
        // Refused by the configuration's checks; the kernel's pick is as good.
        Port::Any | Port::Off => SocketAddr::new(bind, 0),
    };
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = socket(addr).map_err(listen_error)?;
    listener.set_reuse_address(true).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    listener.bind(&addr.into()).map_err(listen_error)?;
    listener.listen(128).map_err(listen_error)?;
    let listener: TcpListener = listener.into();
    let addr = local_addr(&listener, addr)?;
    Ok((listener, addr))
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|source| StartError::Thread { name, source })
}

/// Runs the gateway until it has drained after SIGTERM or SIGINT (or POST /drain).
pub fn run(config: Config) -> Result<(), StartError> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let shard_count = match config.shards {
        0 => cores.len().max(1),
        n => n,
    };
    let (fd_limit, max_connections) = connection_limits(&config, shard_count);
    if let Some(path) = &config.ports_file {
        // A previous run's ports must not be read as this one's.
        let _ = std::fs::remove_file(path);
    }
    let listening = Listening::open(&config, shard_count)?;
    let tls = node_tls(&config, listening.ports.tls_port)?;
    if let Some(path) = &config.ports_file {
        listening.ports.write(path)?;
    }
    if config.uses_default_secret() {
        tracing::warn!("!!! an app uses the published development secret \"app-secret\": anyone can sign its requests; set app_secret or an apps list before exposing this gateway !!!");
    }
    let (node, queues) = build_node(config, max_connections, shard_count, tls);
    tracing::info!(
        shards = shard_count,
        io_driver = node.io_driver,
        fd_limit,
        max_connections,
        listen = %listening.ports.show(node.config.bind, listening.ports.port),
        admin = %listening.admin_addr,
        tls = %listening.ports.show(node.config.bind, listening.ports.tls_port),
        cluster = %node.config.redis_url.as_deref().map_or("off", |_| "redis"),
        node_id = node.id,
        "gateway started"
    );
    let Listening {
        shards: shard_listeners,
        admin,
        admin_socket,
        ..
    } = listening;
    let shards = spawn_shards(&node, &cores, queues.inboxes, shard_listeners)?;
    spawn_helpers(&node, admin, queues.webhook_jobs, queues.bridge)?;
    watch_signals_from_now(&node)?;
    node.set_ready();

    for shard in shards {
        let _ = shard.join();
    }
    // Frees the admin port before the process exits, so that a gateway started right after
    // this one finds it free (see `stop_listening`).
    crate::shard::io::stop_listening(admin_socket.as_raw_fd());
    tracing::info!("drained; exiting");
    Ok(())
}

/// The open-files limit (raised to the hard one) and the WebSocket sessions the node holds.
fn connection_limits(config: &Config, shards: usize) -> (u64, usize) {
    let fd_limit = raise_fd_limit();
    let ceiling = connection_ceiling(fd_limit, shards);
    let max_connections = match config.max_connections {
        0 => ceiling,
        n if n > ceiling => {
            tracing::warn!(
                max_connections = n,
                ceiling,
                "max_connections is above what the open-files limit allows"
            );
            n
        }
        n => n,
    };
    (fd_limit, max_connections)
}

/// Every listening socket of the node, open before any thread starts.
struct Listening {
    /// Each shard's plaintext and TLS listeners.
    shards: Vec<Listeners>,
    admin: TcpListener,
    admin_addr: SocketAddr,
    /// Kept to stop the admin listener at exit: the admin thread never returns on its own.
    admin_socket: TcpListener,
    ports: Ports,
}

impl Listening {
    fn open(config: &Config, shards: usize) -> Result<Listening, StartError> {
        let (plain, port) = bind_shard_listeners(config.bind, config.port, shards)?;
        let (tls, tls_port) = bind_shard_listeners(config.bind, config.tls_port, shards)?;
        let (admin, admin_addr) = admin_listener(config.admin_bind, config.admin_port)?;
        let admin_socket = admin.try_clone().map_err(|source| StartError::Listen {
            addr: admin_addr,
            source,
        })?;
        let ports = Ports {
            port,
            tls_port,
            admin_port: admin_addr.port(),
        };
        let shards = plain
            .into_iter()
            .zip(tls)
            .map(|(plain, tls)| Listeners { plain, tls })
            .collect();
        Ok(Listening {
            shards,
            admin,
            admin_addr,
            admin_socket,
            ports,
        })
    }
}

/// The certificate and TLS configuration, when a TLS port is open.
fn node_tls(config: &Config, tls_port: Option<u16>) -> Result<Option<NodeTls>, StartError> {
    let (Some(cert), Some(key), Some(_)) = (&config.tls_cert, &config.tls_key, tls_port) else {
        return Ok(None);
    };
    let store = Arc::new(CertStore::load(cert, key)?);
    let config = crate::tls::server_config(store.clone())?;
    Ok(Some(NodeTls { config, store }))
}

/// The receiving ends of the node's queues, for the threads that serve them.
struct Queues {
    inboxes: Vec<bus::Inbox>,
    webhook_jobs: Option<Receiver<crate::webhooks::Job>>,
    bridge: Option<(bus::Inbox<cluster::BridgeMessage>, Arc<ClusterStats>)>,
}

/// The node every thread shares, and the queues its threads read.
fn build_node(
    config: Config,
    max_connections: usize,
    shards: usize,
    tls: Option<NodeTls>,
) -> (Arc<Node>, Queues) {
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| bus::inbox(config.inbox_capacity))
        .unzip();
    let links = senders
        .into_iter()
        .map(|inbox| ShardLink {
            inbox,
            stats: Arc::new(ShardStats::new(config.apps.len())),
        })
        .collect();
    // The sender thread and its queue exist only when some app wants webhooks.
    let (webhooks, webhook_jobs) = if config.apps.iter().any(|a| !a.webhooks.is_empty()) {
        let (sender, receiver) = crate::webhooks::queue(config.webhook_queue_capacity);
        (Some(sender), Some(receiver))
    } else {
        (None, None)
    };
    let (cluster_link, bridge) = match config.redis_url {
        Some(_) => {
            let (sender, inbox) = bus::inbox(config.inbox_capacity);
            let stats = Arc::new(ClusterStats::default());
            (
                Some(ClusterLink::new(sender, stats.clone())),
                Some((inbox, stats)),
            )
        }
        None => (None, None),
    };
    let io_driver = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    };
    let node = Node::new(
        config,
        io_driver,
        max_connections,
        links,
        tls,
        webhooks,
        cluster_link,
    );
    let queues = Queues {
        inboxes,
        webhook_jobs,
        bridge,
    };
    (Arc::new(node), queues)
}

/// One thread per shard, pinned to a core in turn.
fn spawn_shards(
    node: &Arc<Node>,
    cores: &[core_affinity::CoreId],
    inboxes: Vec<bus::Inbox>,
    listeners: Vec<Listeners>,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let mut shards = Vec::new();
    for (index, (inbox, listeners)) in inboxes.into_iter().zip(listeners).enumerate() {
        let node = node.clone();
        let core = (node.config.pin_shards)
            .then(|| cores.get(index % cores.len().max(1)).copied())
            .flatten();
        shards.push(spawn(format!("shard-{index}"), move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            if let Err(e) = crate::shard::run(node, index, inbox, listeners) {
                tracing::error!(shard = index, error = %e, "shard stopped");
            }
        })?);
    }
    Ok(shards)
}

/// The threads beside the shards: the admin port, the webhook sender and the Redis bridge
/// (each only when it is needed).
fn spawn_helpers(
    node: &Arc<Node>,
    admin: TcpListener,
    webhook_jobs: Option<Receiver<crate::webhooks::Job>>,
    bridge: Option<(bus::Inbox<cluster::BridgeMessage>, Arc<ClusterStats>)>,
) -> Result<(), StartError> {
    let admin_node = node.clone();
    spawn("admin".into(), move || {
        if let Err(e) = crate::admin::run(admin_node, admin) {
            tracing::error!(error = %e, "admin port stopped");
        }
    })?;
    if let Some(jobs) = webhook_jobs {
        let webhook_node = node.clone();
        spawn("webhooks".into(), move || {
            crate::webhooks::run(webhook_node, jobs)
        })?;
    }
    if let Some((inbox, stats)) = bridge {
        let bridge_node = node.clone();
        spawn("redis-bridge".into(), move || {
            if let Err(e) = cluster::run(bridge_node, stats, inbox) {
                tracing::error!(error = %e, "redis bridge stopped: this node no longer clusters");
            }
        })?;
    }
    Ok(())
}

/// Starts the certificate watcher (with TLS) and the signal thread. Called before the node says
/// it is ready: a SIGTERM sent as soon as /ready says 200 must find the handler in place, or it
/// kills the process without a drain.
fn watch_signals_from_now(node: &Arc<Node>) -> Result<(), StartError> {
    // SIGHUP asks the certificate thread to reload, so that one thread alone loads the files
    // and knows which of their versions is in service.
    let reload_requests = match &node.tls {
        Some(tls) => {
            let (requests, requested) = crossbeam_channel::bounded(1);
            let store = tls.store.clone();
            spawn("cert-watch".into(), move || {
                watch_certificate_files(&store, &requested)
            })?;
            Some(requests)
        }
        None => None,
    };
    match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => {
            let signal_node = node.clone();
            spawn("signals".into(), move || {
                watch_signals(signals, &signal_node, reload_requests.as_ref())
            })?;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot watch signals; SIGTERM will kill without a drain");
        }
    }
    Ok(())
}

/// One listener a shard on `port`, or none when it is off; and the port they share.
fn bind_shard_listeners(
    bind: IpAddr,
    port: Port,
    shards: usize,
) -> Result<(Vec<Option<TcpListener>>, Option<u16>), StartError> {
    let first = match port {
        Port::Off => return Ok(((0..shards).map(|_| None).collect(), None)),
        Port::Fixed(port) => {
            ensure_port_free(SocketAddr::new(bind, port), PORT_RELEASE_WAIT)?;
            shard_listener(SocketAddr::new(bind, port))?
        }
        // The kernel picks the first shard's port; the others join it.
        Port::Any => shard_listener(SocketAddr::new(bind, 0))?,
    };
    let addr = local_addr(&first, SocketAddr::new(bind, 0))?;
    let mut listeners = vec![Some(first)];
    for _ in 1..shards {
        listeners.push(Some(shard_listener(addr)?));
    }
    Ok((listeners, Some(addr.port())))
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Listen {
        addr: asked,
        source,
    })
}

/// The ports the gateway listens on, once they are open: what the start-up line and
/// `ports_file` report (the only way to learn a port given as `any`).
#[derive(Debug, serde::Serialize)]
struct Ports {
    port: Option<u16>,
    tls_port: Option<u16>,
    admin_port: u16,
}

impl Ports {
    fn show(&self, bind: IpAddr, port: Option<u16>) -> String {
        port.map_or("off".into(), |port| SocketAddr::new(bind, port).to_string())
    }

    /// Writes the ports as JSON, whole: to a file beside `path`, then renamed over it, so that
    /// a reader never sees half of it.
    fn write(&self, path: &Path) -> Result<(), StartError> {
        let error = |source| StartError::PortsFile {
            path: path.to_owned(),
            source,
        };
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let json = serde_json::to_string(self)
            .map_err(io::Error::other)
            .map_err(error)?;
        std::fs::write(&partial, json).map_err(error)?;
        std::fs::rename(&partial, path).map_err(error)
    }
}

/// Reloads the certificate when asked (SIGHUP) and when its files change on disk. A refusal is
/// logged and counted by the store, and the old certificate stays.
fn watch_certificate_files(store: &CertStore, requested: &Receiver<()>) {
    let mut change = SettledChange::new(store.files_changed_at());
    loop {
        match requested.recv_timeout(CERT_POLL_INTERVAL) {
            Ok(()) => {
                // Taken before loading: a change made meanwhile is seen, and loaded, next time.
                let stamps = store.files_changed_at();
                let _ = store.reload();
                change = SettledChange::new(stamps);
            }
            Err(RecvTimeoutError::Timeout) => {
                if change.poll(store.files_changed_at()) {
                    let _ = store.reload();
                }
            }
            // No signal thread: keep watching the files alone.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(CERT_POLL_INTERVAL),
        }
    }
}

/// The first SIGTERM or SIGINT starts the drain; a second one exits at once. SIGHUP asks for the
/// TLS certificate to be reloaded.
fn watch_signals(mut signals: Signals, node: &Node, reload_requests: Option<&Sender<()>>) {
    for signal in signals.forever() {
        if signal == SIGHUP {
            match reload_requests {
                // Full: a reload is already asked for, and will read the files as they are now.
                Some(requests) => {
                    let _ = requests.try_send(());
                }
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            }
            continue;
        }
        if node.start_drain() {
            tracing::info!(
                signal,
                drain_seconds = node.config.drain_seconds,
                "draining: listeners closed, clients told to reconnect"
            );
        } else {
            tracing::warn!(signal, "second signal: exiting now");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_keeps_descriptors_back_for_the_runtime() {
        assert_eq!(connection_ceiling(20_000, 2), 20_000 - 48 - API_RESERVE);
        assert_eq!(connection_ceiling(10, 2), 0);
    }

    #[test]
    fn a_second_listener_on_a_taken_port_is_refused() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let started = Instant::now();
        assert!(matches!(
            ensure_port_free(addr, Duration::from_millis(100)),
            Err(StartError::PortInUse { .. })
        ));
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(taken);
        assert!(ensure_port_free(addr, Duration::ZERO).is_ok());
    }

    #[test]
    fn a_port_released_during_the_wait_is_free() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(taken);
        });
        assert!(ensure_port_free(addr, Duration::from_secs(5)).is_ok());
        release.join().unwrap();
    }

    #[test]
    fn raising_the_fd_limit_reaches_the_hard_limit() {
        let raised = raise_fd_limit();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(raised, soft);
        assert_eq!(soft, hard);
    }
}
