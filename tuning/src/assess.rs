//! Turns a `HostState` and a connection target into findings (current, recommended, status, fix)
//! and an estimate of how many idle connections the host can hold.
//!
//! Each limit that caps connections is written twice, as a requirement for the target and as a
//! ceiling from the current value, and the two are exact inverses: a finding is `ok` exactly
//! when its ceiling reaches the target, so the table and the capacity line never disagree.

use serde::Serialize;

use crate::host::{
    sysctl_path, HostState, KernelVersion, ResourceLimit, CONNTRACK_MAX_KEY, UNLIMITED,
};

/// File descriptors the gateway keeps back from WebSocket connections: 32 plus 8 per shard
/// (listener, io_uring ring, wake-ups) plus 64 for HTTP API requests on a full node, the same
/// rule the gateway applies at start, taken for 64 shards.
pub const GATEWAY_RESERVED_FDS: u64 = 32 + 8 * 64 + 64;
/// Open files left for every other process on the host when sizing `fs.file-max`.
pub const OTHER_PROCESSES_FILES: u64 = 65_536;
/// Kernel memory of one idle TCP socket: tcp_sock (~2.3 KiB), socket inode (~0.8 KiB), file,
/// dentry and poll registration. Measured at 4.3 to 4.9 KiB per socket on Linux 6.18 x86_64
/// (slab growth over 18,000 idle loopback sockets); rounded up.
pub const KERNEL_BYTES_PER_CONNECTION: u64 = 5 * 1024;
/// The gateway's user-space budget per idle plaintext connection.
pub const PLAINTEXT_BYTES_PER_CONNECTION: u64 = 1024;
/// The gateway's user-space budget per idle TLS connection.
pub const TLS_BYTES_PER_CONNECTION: u64 = 4 * 1024;
/// One conntrack entry (nf_conn plus extensions), paid only while the module tracks the port.
pub const CONNTRACK_BYTES_PER_CONNECTION: u64 = 320;
/// Share of MemAvailable the connections may take; the rest absorbs socket buffers during
/// fanout bursts, the page cache and everything else on the host.
pub const MEMORY_USABLE_PERCENT: u64 = 75;
/// Socket buffer memory one connection holds while a broadcast is in flight: one page.
pub const BURST_BYTES_PER_CONNECTION: u64 = 4096;
/// Below 5.12 io_uring rings are charged to RLIMIT_MEMLOCK; later kernels charge the memory cgroup.
const MEMLOCK_FREE_KERNEL: KernelVersion = KernelVersion {
    major: 5,
    minor: 12,
};
/// Enough locked memory for one ring per shard on a large machine.
const IO_URING_LOCKED_BYTES: u64 = 64 * 1024 * 1024;
/// Ports the profile's `ip_local_port_range` (10000-65535) offers per destination.
const PROFILE_EPHEMERAL_PORTS: u64 = 55_536;
/// Ports the kernel's default `ip_local_port_range` (32768-60999) offers per destination.
const DEFAULT_EPHEMERAL_PORTS: u64 = 28_232;
const LIMITS_SOURCE: &str = "/proc/self/limits";
const OPEN_FILES_HARD: &str = "RLIMIT_NOFILE (hard)";
const SMALL_TARGET: u64 = 10_000;
const MEDIUM_TARGET: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "ok")]
    Ok,
    /// Below what the target needs.
    #[serde(rename = "LOW")]
    Low,
    /// Above a ceiling that keeps the worst case of many sockets bounded.
    #[serde(rename = "HIGH")]
    High,
    /// The file is absent, so the setting cannot be confirmed.
    #[serde(rename = "missing")]
    Missing,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Low => "LOW",
            Status::High => "HIGH",
            Status::Missing => "missing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Plaintext,
    Tls,
}

impl Transport {
    pub fn user_bytes_per_connection(self) -> u64 {
        match self {
            Transport::Plaintext => PLAINTEXT_BYTES_PER_CONNECTION,
            Transport::Tls => TLS_BYTES_PER_CONNECTION,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub setting: &'static str,
    /// The file the value comes from, as a path on the host.
    pub source: String,
    /// `None` when the setting is missing.
    pub current: Option<String>,
    pub recommended: String,
    pub status: Status,
    /// `None` when nothing needs fixing.
    pub fix: Option<String>,
}

/// How many connections one limit allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ceiling {
    pub limit: &'static str,
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryMath {
    pub available_bytes: Option<u64>,
    pub usable_percent: u64,
    pub kernel_bytes_per_connection: u64,
    pub gateway_bytes_per_connection: u64,
    pub conntrack_bytes_per_connection: u64,
    pub bytes_per_connection: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capacity {
    /// The smallest ceiling; 0 when no limit could be read.
    pub connections: u64,
    /// The limit behind the smallest ceiling; `None` when no limit could be read.
    pub limited_by: Option<&'static str>,
    pub ceilings: Vec<Ceiling>,
    pub memory: MemoryMath,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub target_connections: u64,
    pub transport: Transport,
    pub target_met: bool,
    pub settings: Vec<Finding>,
    pub capacity: Capacity,
}

pub fn assess(host: &HostState, target: u64, transport: Transport, page_size: u64) -> Assessment {
    let memory = memory_math(host, transport);
    let settings = vec![
        open_files_soft(host.open_files),
        open_files_hard(host.open_files, target),
        sysctl_at_least("fs.file-max", host.file_max, file_max_needed(target)),
        sysctl_at_least("fs.nr_open", host.nr_open, fds_needed(target)),
        sysctl_at_least("net.core.somaxconn", host.somaxconn, queue_depth(target)),
        sysctl_at_least(
            "net.ipv4.tcp_max_syn_backlog",
            host.tcp_max_syn_backlog,
            queue_depth(target),
        ),
        port_range(host.ip_local_port_range, target),
        tcp_mem(host.tcp_mem, target, page_size),
        socket_buffer(
            "net.ipv4.tcp_rmem",
            host.tcp_rmem,
            target,
            [4096, 131_072, 6_291_456],
        ),
        socket_buffer(
            "net.ipv4.tcp_wmem",
            host.tcp_wmem,
            target,
            [4096, 16_384, 4_194_304],
        ),
        sysctl_at_least(
            "net.core.netdev_max_backlog",
            host.netdev_max_backlog,
            netdev_backlog(target),
        ),
    ]
    .into_iter()
    .chain(
        host.nf_conntrack_max
            .map(|max| sysctl_at_least(CONNTRACK_MAX_KEY, Some(max), conntrack_needed(target))),
    )
    .chain([
        locked_memory(host.locked_memory, host.kernel),
        mem_available(&memory, target),
    ])
    .collect::<Vec<_>>();

    let capacity = capacity(host, memory);
    let target_met = settings.iter().all(|finding| finding.status == Status::Ok)
        && capacity.connections >= target;
    Assessment {
        target_connections: target,
        transport,
        target_met,
        settings,
        capacity,
    }
}

fn fds_needed(target: u64) -> u64 {
    target.saturating_add(GATEWAY_RESERVED_FDS)
}

fn fds_ceiling(limit: u64) -> u64 {
    limit.saturating_sub(GATEWAY_RESERVED_FDS)
}

fn file_max_needed(target: u64) -> u64 {
    fds_needed(target).saturating_add(OTHER_PROCESSES_FILES)
}

fn file_max_ceiling(file_max: u64) -> u64 {
    fds_ceiling(file_max).saturating_sub(OTHER_PROCESSES_FILES)
}

/// A full conntrack table drops new connections, so keep a quarter of it free.
fn conntrack_needed(target: u64) -> u64 {
    let needed = (u128::from(target) * 5).div_ceil(4);
    u64::try_from(needed).unwrap_or(u64::MAX)
}

fn conntrack_ceiling(max: u64) -> u64 {
    let ceiling = u128::from(max) * 4 / 5;
    u64::try_from(ceiling).unwrap_or(u64::MAX)
}

/// Accept and SYN queue depth: deep enough to take a fleet-wide reconnect after a drain.
fn queue_depth(target: u64) -> u64 {
    by_size(target, [4096, 16_384, 65_535])
}

/// Packets queued per CPU: a fanout to many sockets at once comes back as a burst of ACKs.
fn netdev_backlog(target: u64) -> u64 {
    by_size(target, [1000, 4096, 16_384])
}

/// Picks the value for targets up to 10k, up to 100k, or beyond.
fn by_size(target: u64, [small, medium, large]: [u64; 3]) -> u64 {
    if target <= SMALL_TARGET {
        small
    } else if target <= MEDIUM_TARGET {
        medium
    } else {
        large
    }
}

/// The gateway raises its soft open-files limit to the hard one at start, so the soft limit
/// never binds; it is shown because other programs (a load generator) may not do the same.
fn open_files_soft(limit: Option<ResourceLimit>) -> Finding {
    Finding {
        setting: "RLIMIT_NOFILE (soft)",
        source: LIMITS_SOURCE.to_string(),
        current: limit.map(|limit| show_limit(limit.soft)),
        recommended: "any (raised to hard)".to_string(),
        status: if limit.is_some() {
            Status::Ok
        } else {
            Status::Missing
        },
        fix: None,
    }
}

/// One fd per connection: the hard limit is what the gateway ends up with.
fn open_files_hard(limit: Option<ResourceLimit>, target: u64) -> Finding {
    let needed = fds_needed(target);
    at_least(
        OPEN_FILES_HARD,
        LIMITS_SOURCE.to_string(),
        limit.map(|limit| limit.hard),
        needed,
        || format!("ulimit -Hn {needed}  (as root; systemd: LimitNOFILE={needed})"),
    )
}

fn sysctl_at_least(key: &'static str, current: Option<u64>, needed: u64) -> Finding {
    at_least(key, sysctl_source(key), current, needed, || {
        format!("sysctl -w {key}={needed}")
    })
}

/// A finding whose value must reach `needed`; `fix` is only called when it does not.
fn at_least(
    setting: &'static str,
    source: String,
    current: Option<u64>,
    needed: u64,
    fix: impl FnOnce() -> String,
) -> Finding {
    let (current, status, fix) = match current {
        None => (None, Status::Missing, None),
        Some(value) if value >= needed => (Some(show_limit(value)), Status::Ok, None),
        Some(value) => (Some(show_limit(value)), Status::Low, Some(fix())),
    };
    Finding {
        setting,
        source,
        current,
        recommended: needed.to_string(),
        status,
        fix,
    }
}

/// Only outgoing connections take ephemeral ports: the load generator on this host and the
/// Redis client. One source address reaches at most one range's worth of one destination.
fn port_range(current: Option<[u64; 2]>, target: u64) -> Finding {
    const KEY: &str = "net.ipv4.ip_local_port_range";
    let needed_ports = target.min(PROFILE_EPHEMERAL_PORTS);
    let recommended = if target <= DEFAULT_EPHEMERAL_PORTS {
        "32768 60999"
    } else {
        "10000 65535"
    };
    let status = match current {
        None => Status::Missing,
        Some([low, high]) if ports_in_range(low, high) >= needed_ports => Status::Ok,
        Some(_) => Status::Low,
    };
    Finding {
        setting: KEY,
        source: sysctl_source(KEY),
        current: current.map(|values| join(&values)),
        recommended: recommended.to_string(),
        status,
        fix: (status == Status::Low).then(|| format!("sysctl -w {KEY}=\"{recommended}\"")),
    }
}

fn ports_in_range(low: u64, high: u64) -> u64 {
    high.saturating_add(1).saturating_sub(low)
}

/// The pressure threshold (middle value, in pages) must let every connection hold one page of
/// socket buffer at once, which is what a broadcast to all of them needs.
fn tcp_mem(current: Option<[u64; 3]>, target: u64, page_size: u64) -> Finding {
    const KEY: &str = "net.ipv4.tcp_mem";
    let burst_bytes = u128::from(target) * u128::from(BURST_BYTES_PER_CONNECTION);
    let pressure_pages =
        u64::try_from(burst_bytes.div_ceil(u128::from(page_size.max(1)))).unwrap_or(u64::MAX);
    let recommended = join(&[
        pressure_pages / 4 * 3,
        pressure_pages,
        pressure_pages.saturating_add(pressure_pages / 2),
    ]);
    let status = match current {
        None => Status::Missing,
        Some([_, pressure, _]) if pressure >= pressure_pages => Status::Ok,
        Some(_) => Status::Low,
    };
    Finding {
        setting: KEY,
        source: sysctl_source(KEY),
        current: current.map(|values| join(&values)),
        fix: (status == Status::Low).then(|| format!("sysctl -w {KEY}=\"{recommended}\"")),
        recommended,
        status,
    }
}

/// The default (middle) per-socket buffer is where autotuning starts; past 100k connections it
/// must stay small so that many busy sockets at once stay within tcp_mem.
fn socket_buffer(
    key: &'static str,
    current: Option<[u64; 3]>,
    target: u64,
    kernel_default: [u64; 3],
) -> Finding {
    let recommended = if target <= MEDIUM_TARGET {
        kernel_default
    } else {
        [4096, 16_384, 4_194_304]
    };
    let status = match current {
        None => Status::Missing,
        Some([_, default, _]) if default <= recommended[1] => Status::Ok,
        Some(_) => Status::High,
    };
    let recommended = join(&recommended);
    Finding {
        setting: key,
        source: sysctl_source(key),
        current: current.map(|values| join(&values)),
        fix: (status == Status::High).then(|| format!("sysctl -w {key}=\"{recommended}\"")),
        recommended,
        status,
    }
}

fn locked_memory(limit: Option<ResourceLimit>, kernel: Option<KernelVersion>) -> Finding {
    const SETTING: &str = "RLIMIT_MEMLOCK (soft)";
    if kernel.is_some_and(|kernel| kernel >= MEMLOCK_FREE_KERNEL) {
        return Finding {
            setting: SETTING,
            source: LIMITS_SOURCE.to_string(),
            current: limit.map(|limit| show_limit(limit.soft)),
            recommended: "any (kernel >= 5.12)".to_string(),
            status: if limit.is_some() {
                Status::Ok
            } else {
                Status::Missing
            },
            fix: None,
        };
    }
    at_least(
        SETTING,
        LIMITS_SOURCE.to_string(),
        limit.map(|limit| limit.soft),
        IO_URING_LOCKED_BYTES,
        || "ulimit -l unlimited  (systemd: LimitMEMLOCK=infinity)".to_string(),
    )
}

fn memory_math(host: &HostState, transport: Transport) -> MemoryMath {
    let conntrack_bytes_per_connection = if host.nf_conntrack_max.is_some() {
        CONNTRACK_BYTES_PER_CONNECTION
    } else {
        0
    };
    let gateway_bytes_per_connection = transport.user_bytes_per_connection();
    MemoryMath {
        available_bytes: host.mem_available_bytes,
        usable_percent: MEMORY_USABLE_PERCENT,
        kernel_bytes_per_connection: KERNEL_BYTES_PER_CONNECTION,
        gateway_bytes_per_connection,
        conntrack_bytes_per_connection,
        bytes_per_connection: KERNEL_BYTES_PER_CONNECTION
            + gateway_bytes_per_connection
            + conntrack_bytes_per_connection,
    }
}

fn memory_needed(memory: &MemoryMath, target: u64) -> u64 {
    let bytes = u128::from(target) * u128::from(memory.bytes_per_connection) * 100;
    u64::try_from(bytes.div_ceil(u128::from(memory.usable_percent))).unwrap_or(u64::MAX)
}

fn memory_ceiling(memory: &MemoryMath, available_bytes: u64) -> u64 {
    let usable = u128::from(available_bytes) * u128::from(memory.usable_percent);
    let per_connection = u128::from(memory.bytes_per_connection) * 100;
    u64::try_from(usable / per_connection).unwrap_or(u64::MAX)
}

fn mem_available(memory: &MemoryMath, target: u64) -> Finding {
    let needed = memory_needed(memory, target);
    let (current, status) = match memory.available_bytes {
        None => (None, Status::Missing),
        Some(bytes) => (
            Some(show_bytes(bytes)),
            if bytes >= needed {
                Status::Ok
            } else {
                Status::Low
            },
        ),
    };
    Finding {
        setting: "MemAvailable",
        source: "/proc/meminfo".to_string(),
        current,
        recommended: show_bytes(needed),
        status,
        fix: (status == Status::Low)
            .then(|| "add RAM, or spread the connections over more nodes".to_string()),
    }
}

fn capacity(host: &HostState, memory: MemoryMath) -> Capacity {
    let ceilings: Vec<Ceiling> = [
        host.open_files
            .map(|limit| (OPEN_FILES_HARD, fds_ceiling(limit.hard))),
        host.file_max
            .map(|max| ("fs.file-max", file_max_ceiling(max))),
        host.nf_conntrack_max
            .map(|max| (CONNTRACK_MAX_KEY, conntrack_ceiling(max))),
        memory
            .available_bytes
            .map(|bytes| ("MemAvailable", memory_ceiling(&memory, bytes))),
    ]
    .into_iter()
    .flatten()
    .map(|(limit, connections)| Ceiling { limit, connections })
    .collect();
    let smallest = ceilings.iter().min_by_key(|ceiling| ceiling.connections);
    Capacity {
        connections: smallest.map_or(0, |ceiling| ceiling.connections),
        limited_by: smallest.map(|ceiling| ceiling.limit),
        memory,
        ceilings,
    }
}

/// The `/proc/sys` file a sysctl key is read from, as a path on the host.
fn sysctl_source(key: &str) -> String {
    format!("/{}", sysctl_path(key).display())
}

fn show_limit(value: u64) -> String {
    if value == UNLIMITED {
        "unlimited".to_string()
    } else {
        value.to_string()
    }
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bytes in the largest binary unit that keeps the number at or above 1, one decimal.
pub fn show_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    /// A 4 GiB Debian 12 VM as installed: systemd's default limits, kernel-sized TCP memory.
    fn debian_vm() -> HostState {
        HostState {
            open_files: Some(ResourceLimit {
                soft: 1024,
                hard: 524_288,
            }),
            locked_memory: Some(ResourceLimit {
                soft: 8 << 20,
                hard: 8 << 20,
            }),
            file_max: Some(9_223_372_036_854_775_807),
            nr_open: Some(1_073_741_816),
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(512),
            ip_local_port_range: Some([32768, 60999]),
            tcp_mem: Some([44_433, 59_244, 88_866]),
            tcp_rmem: Some([4096, 131_072, 6_291_456]),
            tcp_wmem: Some([4096, 16_384, 4_194_304]),
            netdev_max_backlog: Some(1000),
            nf_conntrack_max: None,
            mem_available_bytes: Some(3_500_000 * 1024),
            kernel: Some(KernelVersion { major: 6, minor: 1 }),
        }
    }

    fn status_of(assessment: &Assessment, setting: &str) -> Option<Status> {
        assessment
            .settings
            .iter()
            .find(|finding| finding.setting == setting)
            .map(|finding| finding.status)
    }

    #[test]
    fn a_default_host_has_room_for_100k_but_not_the_queues_and_buffers() {
        let assessment = assess(&debian_vm(), 100_000, Transport::Plaintext, PAGE);
        assert!(!assessment.target_met);
        // 3.5 GB available, 75% usable, 6 KiB per connection.
        assert_eq!(assessment.capacity.connections, 437_500);
        assert_eq!(assessment.capacity.limited_by, Some("MemAvailable"));
        for low in [
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_mem",
            "net.core.netdev_max_backlog",
        ] {
            assert_eq!(status_of(&assessment, low), Some(Status::Low), "{low}");
        }
        for ok in [
            "RLIMIT_NOFILE (soft)",
            "RLIMIT_NOFILE (hard)",
            "fs.file-max",
            "RLIMIT_MEMLOCK (soft)",
            "MemAvailable",
        ] {
            assert_eq!(status_of(&assessment, ok), Some(Status::Ok), "{ok}");
        }
        assert_eq!(status_of(&assessment, CONNTRACK_MAX_KEY), None);
    }

    #[test]
    fn the_hard_fd_limit_binds_because_the_gateway_raises_the_soft_one() {
        let mut host = debian_vm();
        host.open_files = Some(ResourceLimit {
            soft: 1024,
            hard: 65_536,
        });
        let assessment = assess(&host, 100_000, Transport::Plaintext, PAGE);
        assert_eq!(
            status_of(&assessment, "RLIMIT_NOFILE (soft)"),
            Some(Status::Ok)
        );
        let hard = &assessment.settings[1];
        assert_eq!(hard.setting, "RLIMIT_NOFILE (hard)");
        assert_eq!(hard.status, Status::Low);
        assert_eq!(
            hard.fix.as_deref(),
            Some("ulimit -Hn 100608  (as root; systemd: LimitNOFILE=100608)")
        );
        assert_eq!(assessment.capacity.limited_by, Some("RLIMIT_NOFILE (hard)"));
        assert_eq!(
            assessment.capacity.connections,
            65_536 - GATEWAY_RESERVED_FDS
        );
    }

    #[test]
    fn large_targets_want_small_default_socket_buffers() {
        let assessment = assess(&debian_vm(), 1_000_000, Transport::Plaintext, PAGE);
        assert_eq!(
            status_of(&assessment, "net.ipv4.tcp_rmem"),
            Some(Status::High)
        );
        assert_eq!(
            status_of(&assessment, "net.ipv4.tcp_wmem"),
            Some(Status::Ok)
        );
        let medium = assess(&debian_vm(), 100_000, Transport::Plaintext, PAGE);
        assert_eq!(status_of(&medium, "net.ipv4.tcp_rmem"), Some(Status::Ok));
    }

    #[test]
    fn old_kernels_need_locked_memory_for_io_uring() {
        let mut host = debian_vm();
        host.kernel = Some(KernelVersion {
            major: 5,
            minor: 10,
        });
        host.locked_memory = Some(ResourceLimit {
            soft: 65_536,
            hard: 65_536,
        });
        let assessment = assess(&host, 1000, Transport::Plaintext, PAGE);
        assert_eq!(
            status_of(&assessment, "RLIMIT_MEMLOCK (soft)"),
            Some(Status::Low)
        );
        host.locked_memory = Some(ResourceLimit {
            soft: UNLIMITED,
            hard: UNLIMITED,
        });
        let assessment = assess(&host, 1000, Transport::Plaintext, PAGE);
        assert_eq!(
            status_of(&assessment, "RLIMIT_MEMLOCK (soft)"),
            Some(Status::Ok)
        );
    }

    #[test]
    fn missing_settings_fail_the_target() {
        let mut host = debian_vm();
        host.somaxconn = None;
        host.open_files = Some(ResourceLimit {
            soft: 1 << 20,
            hard: 1 << 20,
        });
        let assessment = assess(&host, 500, Transport::Plaintext, PAGE);
        assert_eq!(
            status_of(&assessment, "net.core.somaxconn"),
            Some(Status::Missing)
        );
        assert!(!assessment.target_met);
    }

    #[test]
    fn tls_and_conntrack_raise_the_memory_per_connection() {
        let mut host = debian_vm();
        let plaintext = assess(&host, 1000, Transport::Plaintext, PAGE);
        host.nf_conntrack_max = Some(262_144);
        let tls = assess(&host, 1000, Transport::Tls, PAGE);
        assert_eq!(plaintext.capacity.memory.bytes_per_connection, 6 * 1024);
        assert_eq!(
            tls.capacity.memory.bytes_per_connection,
            9 * 1024 + CONNTRACK_BYTES_PER_CONNECTION
        );
    }

    /// The table and the capacity line must agree: each limit is ok exactly when its ceiling
    /// reaches the target, including at the boundary.
    #[test]
    fn requirements_and_ceilings_are_inverses() {
        let memory = memory_math(&debian_vm(), Transport::Plaintext);
        for target in [1, 999, 1000, 10_000, 100_000, 123_457, 1_000_000] {
            let fds = fds_needed(target);
            assert!(fds_ceiling(fds) >= target && fds_ceiling(fds - 1) < target);
            let files = file_max_needed(target);
            assert!(file_max_ceiling(files) >= target && file_max_ceiling(files - 1) < target);
            let entries = conntrack_needed(target);
            assert!(
                conntrack_ceiling(entries) >= target && conntrack_ceiling(entries - 1) < target,
                "conntrack at {target}"
            );
            let bytes = memory_needed(&memory, target);
            assert!(
                memory_ceiling(&memory, bytes) >= target
                    && memory_ceiling(&memory, bytes - 1) < target,
                "memory at {target}"
            );
        }
    }

    #[test]
    fn tcp_mem_is_sized_in_pages() {
        let four_k = tcp_mem(Some([1, 1, 1]), 1_000_000, 4096);
        assert_eq!(four_k.recommended, "750000 1000000 1500000");
        let sixty_four_k = tcp_mem(Some([1, 62_500, 1]), 1_000_000, 65_536);
        assert_eq!(sixty_four_k.status, Status::Ok);
    }

    #[test]
    fn byte_counts_are_shown_in_binary_units() {
        assert_eq!(show_bytes(320), "320 B");
        assert_eq!(show_bytes(5 * 1024), "5.0 KiB");
        assert_eq!(show_bytes(3 << 30), "3.0 GiB");
    }
}
