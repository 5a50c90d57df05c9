//! A real HAProxy (Debian's `haproxy` package) for the PROXY protocol tests: run in the
//! foreground on loopback ports with the configuration a test gives, stopped when dropped.
//! `scripts/test` installs it when it is missing; without it the tests that need it say so and
//! pass.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct HaProxy {
    child: Child,
    config: std::path::PathBuf,
}

impl HaProxy {
    /// Whether the binary is there; says on stderr that `test` is skipped when it is not.
    pub fn available(test: &str) -> bool {
        let found = Command::new("haproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            eprintln!("{test}: skipped, haproxy is not installed (apt-get install haproxy)");
        }
        found
    }

    /// Starts haproxy with `config` (its `global` and `defaults` sections are added) and waits
    /// until it listens on every one of `ports`.
    pub fn start(config: &str, ports: &[u16]) -> HaProxy {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("gateway-haproxy-{}-{n}.cfg", std::process::id()));
        let whole = format!(
            "global\n    maxconn 512\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n\n{config}"
        );
        std::fs::write(&path, whole).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy starts");
        let mut haproxy = HaProxy {
            child,
            config: path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ports.iter().all(|&port| listening(port)) {
            if let Some(status) = haproxy.child.try_wait().unwrap() {
                panic!("haproxy exited ({status}) before it listened");
            }
            assert!(Instant::now() < deadline, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }
}

/// Whether something listens on the loopback port, read from the kernel's table rather than by
/// connecting (a connection through haproxy would reach the gateway, and count there).
fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let wanted = format!("0100007F:{port:04X}");
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A")
    })
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
