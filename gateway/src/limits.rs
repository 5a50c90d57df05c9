//! Limits on what one client address, one app or one shard may start: concurrent connections
//! and new connections per second per client address, HTTP API requests per second per app
//! (node-wide, shared by every shard through atomics, no locks), and TLS handshakes per second
//! per shard (the shard's own). The clock is an input; no IO.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Slots in each of the two rows of a per-address table. A client address has one slot in each
/// row, picked by a keyed hash, and its count is the smaller of the two: two addresses share a
/// count only when they share both slots.
pub const ROW_SLOTS: usize = 1 << 19;
/// Largest `connection_rate_per_ip`: counts of new connections are kept in 16 bits.
pub const MAX_RATE_PER_IP: u32 = u16::MAX as u32 - 1;

/// Two rows of counters, zeroed.
fn rows() -> Box<[AtomicU32]> {
    let zeroed = Box::<[AtomicU32]>::new_zeroed_slice(2 * ROW_SLOTS);
    // SAFETY: AtomicU32 has the same in-memory representation as u32, for which all zero bits
    // are a valid value. Taking the memory zeroed, rather than writing each counter, leaves the
    // pages of slots never used untouched.
    unsafe { zeroed.assume_init() }
}

/// Why a connection was refused for its client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// The address holds `max_connections_per_ip` connections already.
    Connections,
    /// The address opened `connection_rate_per_ip` connections in this second already.
    Rate,
}

/// A connection counted against its client address, to be released when it closes: its two
/// slots, packed so that the guard that holds it stays small.
#[derive(Debug, PartialEq, Eq)]
pub struct IpClaim(NonZeroU64);

impl IpClaim {
    fn new(slots: [usize; 2]) -> IpClaim {
        // Slots are below 2^20: one more than the packed pair never overflows.
        let packed = (slots[0] as u64) << 32 | slots[1] as u64;
        IpClaim(NonZeroU64::MIN.saturating_add(packed))
    }

    fn slots(&self) -> [usize; 2] {
        let packed = self.0.get() - 1;
        [
            (packed >> 32) as usize,
            (packed & u64::from(u32::MAX)) as usize,
        ]
    }
}

/// Per client address: connections open now, and connections opened in the current second.
/// Node-wide; each limit's table exists only when the limit is on.
#[derive(Debug)]
pub struct IpLimits {
    key: RandomState,
    max_open: u32,
    max_rate: u32,
    /// Connections open, by slot.
    open: Option<Box<[AtomicU32]>>,
    /// The second (its low 16 bits) and the connections opened in it, by slot.
    recent: Option<Box<[AtomicU32]>>,
}

impl IpLimits {
    /// None when both limits are off (0).
    pub fn new(max_open: u32, max_rate: u32) -> Option<IpLimits> {
        (max_open > 0 || max_rate > 0).then(|| IpLimits {
            key: RandomState::new(),
            max_open,
            max_rate: max_rate.min(MAX_RATE_PER_IP),
            open: (max_open > 0).then(rows),
            recent: (max_rate > 0).then(rows),
        })
    }

    /// The address's slot in each row. The hash is keyed per process, so that nobody can pick
    /// addresses that share a victim's slots. An IPv6 client counts by its /64, the smallest
    /// network one subscriber is given; an IPv4 address seen as IPv6 counts as that IPv4 address.
    fn slots(&self, ip: IpAddr) -> [usize; 2] {
        let hash = match ip.to_canonical() {
            IpAddr::V4(v4) => self.key.hash_one((4u8, u32::from(v4))),
            IpAddr::V6(v6) => self.key.hash_one((6u8, (u128::from(v6) >> 64) as u64)),
        };
        let row = ROW_SLOTS as u64 - 1;
        [
            (hash & row) as usize,
            ROW_SLOTS + ((hash >> 32) & row) as usize,
        ]
    }

    /// Counts a new connection from `ip` at `second`, or refuses it. A refusal counts nothing.
    /// Shards admit at the same instant without coordination, so each limit may be passed by
    /// one connection per shard at most.
    pub fn admit(&self, ip: IpAddr, second: u64) -> Result<Option<IpClaim>, IpRefusal> {
        let slots = self.slots(ip);
        let epoch = second as u16;
        if let Some(recent) = &self.recent {
            let opened = slots.map(|slot| opened_in(recent[slot].load(Relaxed), epoch));
            if opened[0].min(opened[1]) >= self.max_rate {
                return Err(IpRefusal::Rate);
            }
        }
        let claim = match &self.open {
            Some(open) => {
                let now = slots.map(|slot| open[slot].fetch_add(1, Relaxed) + 1);
                if now[0].min(now[1]) > self.max_open {
                    for slot in slots {
                        open[slot].fetch_sub(1, Relaxed);
                    }
                    return Err(IpRefusal::Connections);
                }
                Some(IpClaim::new(slots))
            }
            None => None,
        };
        if let Some(recent) = &self.recent {
            for slot in slots {
                let _ = recent[slot].fetch_update(Relaxed, Relaxed, |packed| {
                    let opened = opened_in(packed, epoch);
                    Some(u32::from(epoch) << 16 | (opened + 1).min(u32::from(u16::MAX)))
                });
            }
        }
        Ok(claim)
    }

    /// Releases a connection counted by `admit`.
    pub fn release(&self, claim: IpClaim) {
        if let Some(open) = &self.open {
            for slot in claim.slots() {
                open[slot].fetch_sub(1, Relaxed);
            }
        }
    }
}

/// Connections a rate slot counts for the second `epoch`. The epoch is the second's low 16
/// bits, so a slot left untouched for a multiple of 18 hours reads as current: its old count
/// stands for at most that one second.
fn opened_in(packed: u32, epoch: u16) -> u32 {
    match (packed >> 16) as u16 == epoch {
        true => packed & u32::from(u16::MAX),
        false => 0,
    }
}

/// HTTP API requests per second of each app, node-wide: the second and the count in one word.
#[derive(Debug)]
pub struct AppRates {
    /// Requests a second for each app; 0 for none.
    limits: Box<[u32]>,
    windows: Box<[AtomicU64]>,
}

impl AppRates {
    pub fn new(limits: Vec<u32>) -> AppRates {
        let windows = limits.iter().map(|_| AtomicU64::new(0)).collect();
        AppRates {
            limits: limits.into(),
            windows,
        }
    }

    /// Counts a request of `app` at `second`; false, counting nothing, when the app has made
    /// its share of requests this second already.
    pub fn admit(&self, app: usize, second: u64) -> bool {
        let (Some(&limit), Some(window)) = (self.limits.get(app), self.windows.get(app)) else {
            return true;
        };
        if limit == 0 {
            return true;
        }
        let second = second as u32;
        let updated = window.fetch_update(Relaxed, Relaxed, |packed| {
            let count = match (packed >> 32) as u32 == second {
                true => packed as u32,
                false => 0,
            };
            (count < limit).then(|| u64::from(second) << 32 | u64::from(count + 1))
        });
        updated.is_ok()
    }
}

/// TLS handshakes a shard starts per second: a token bucket of one second's handshakes, kept as
/// the time its next token is due (GCRA), so it holds one number.
#[derive(Debug)]
pub struct HandshakeBudget {
    /// Time between two handshakes at the steady rate.
    interval: Duration,
    /// How far ahead of the clock the schedule may run: a burst of one second's handshakes.
    burst: Duration,
    /// When the next handshake is due on the schedule, as time since the shard started.
    due: Duration,
}

impl HandshakeBudget {
    /// None when `per_second` is 0 (no budget).
    pub fn new(per_second: u32) -> Option<HandshakeBudget> {
        (per_second > 0).then(|| {
            let interval = Duration::from_secs(1) / per_second;
            HandshakeBudget {
                interval,
                burst: Duration::from_secs(1).saturating_sub(interval),
                due: Duration::ZERO,
            }
        })
    }

    /// Takes a handshake at `now` (time since the shard started), or says there is none left.
    pub fn admit(&mut self, now: Duration) -> bool {
        let due = self.due.max(now);
        if due > now + self.burst {
            return false;
        }
        self.due = due + self.interval;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Of `clients` addresses, the fraction whose count is shared with another address: those
    /// with another address in both of their slots (each row holds `clients` addresses in
    /// `ROW_SLOTS`). The README quotes it.
    fn shared_fraction(clients: f64) -> f64 {
        let one_row = 1.0 - (-clients / ROW_SLOTS as f64).exp();
        one_row * one_row
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn tables_start_at_zero_and_only_when_on() {
        assert!(IpLimits::new(0, 0).is_none());
        let limits = IpLimits::new(3, 0).unwrap();
        let open = limits.open.as_ref().unwrap();
        assert_eq!(open.len(), 2 * ROW_SLOTS);
        assert!(open.iter().all(|slot| slot.load(Relaxed) == 0));
        assert!(limits.recent.is_none());
        assert!(IpLimits::new(0, 5).unwrap().open.is_none());
    }

    #[test]
    fn concurrent_connections_per_address() {
        let limits = IpLimits::new(2, 0).unwrap();
        let a = ip("203.0.113.7");
        let first = limits.admit(a, 0).unwrap().unwrap();
        let second = limits.admit(a, 0).unwrap().unwrap();
        assert_eq!(limits.admit(a, 0), Err(IpRefusal::Connections));
        assert_eq!(
            limits.admit(a, 0),
            Err(IpRefusal::Connections),
            "refusals count nothing"
        );
        assert!(
            limits.admit(ip("203.0.113.8"), 0).is_ok(),
            "another address"
        );
        limits.release(first);
        let third = limits.admit(a, 9).unwrap().unwrap();
        limits.release(second);
        limits.release(third);
        let open = limits.open.as_ref().unwrap();
        let held: u32 = open.iter().map(|slot| slot.load(Relaxed)).sum();
        assert_eq!(held, 2, "only 203.0.113.8's connection, in both rows");
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let limits = IpLimits::new(1, 0).unwrap();
        let _held = limits.admit(ip("2001:db8:1:2::1"), 0).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:ffff::9"), 0),
            Err(IpRefusal::Connections)
        );
        assert!(limits.admit(ip("2001:db8:1:3::1"), 0).is_ok());
        let _v4 = limits.admit(ip("198.51.100.1"), 0).unwrap();
        assert_eq!(
            limits.admit(ip("::ffff:198.51.100.1"), 0),
            Err(IpRefusal::Connections),
            "an IPv4 client seen through a dual-stack socket is the same client"
        );
    }

    #[test]
    fn new_connections_per_address_per_second() {
        let limits = IpLimits::new(0, 3).unwrap();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(limits.admit(a, 100), Ok(None));
        }
        assert_eq!(limits.admit(a, 100), Err(IpRefusal::Rate));
        assert!(limits.admit(ip("192.0.2.2"), 100).is_ok());
        assert!(limits.admit(a, 101).is_ok(), "a new second");
        assert!(limits.admit(a, 101 + 65_536 * 3).is_ok(), "the epoch wraps");
    }

    #[test]
    fn both_limits_together() {
        let limits = IpLimits::new(1, 2).unwrap();
        let a = ip("192.0.2.1");
        let claim = limits.admit(a, 5).unwrap().unwrap();
        assert_eq!(limits.admit(a, 5), Err(IpRefusal::Connections));
        limits.release(claim);
        let _claim = limits.admit(a, 5).unwrap();
        assert_eq!(
            limits.admit(a, 5),
            Err(IpRefusal::Rate),
            "two opened this second"
        );
    }

    #[test]
    fn a_claim_packs_both_slots() {
        let slots = [ROW_SLOTS - 1, 2 * ROW_SLOTS - 1];
        assert_eq!(IpClaim::new(slots).slots(), slots);
        assert_eq!(IpClaim::new([0, ROW_SLOTS]).slots(), [0, ROW_SLOTS]);
        assert_eq!(size_of::<Option<IpClaim>>(), 8);
    }

    #[test]
    fn collisions_only_share_a_limit_and_are_rare() {
        // Every address gets its own count unless both its slots are shared.
        assert!(shared_fraction(10_000.0) < 0.001);
        assert!(shared_fraction(100_000.0) < 0.035);
        let limits = IpLimits::new(1, 0).unwrap();
        let held: Vec<_> = (0..10_000u32)
            .map(|n| limits.admit(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), 0))
            .collect();
        let refused = held.iter().filter(|r| r.is_err()).count();
        assert!(
            refused < 10,
            "{refused} of 10,000 addresses refused at one connection each"
        );
    }

    #[test]
    fn api_requests_per_app_per_second() {
        let rates = AppRates::new(vec![2, 0]);
        assert!(rates.admit(0, 7) && rates.admit(0, 7));
        assert!(!rates.admit(0, 7));
        assert!(rates.admit(0, 8));
        assert!((0..1000).all(|_| rates.admit(1, 7)), "0 is no limit");
        assert!(rates.admit(5, 7), "no such app: nothing to count");
    }

    #[test]
    fn handshake_budget_allows_a_second_at_once_then_its_rate() {
        assert!(HandshakeBudget::new(0).is_none());
        let mut budget = HandshakeBudget::new(10).unwrap();
        let start = Duration::from_secs(5);
        assert_eq!((0..20).filter(|_| budget.admit(start)).count(), 10);
        assert!(!budget.admit(start + Duration::from_millis(50)));
        assert!(budget.admit(start + Duration::from_millis(100)));
        assert!(!budget.admit(start + Duration::from_millis(150)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| budget.admit(later)).count(), 10);
        let mut steady = HandshakeBudget::new(1000).unwrap();
        let admitted = (0..10_000u64)
            .filter(|ms| steady.admit(Duration::from_millis(*ms)))
            .count();
        assert_eq!(admitted, 10_000, "one a millisecond is the rate");
    }
}
