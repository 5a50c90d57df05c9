//! The data of every fanout test event: who sent it when, and its place in its channel.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Sent as the event's `data` string. Wall-clock microseconds rather than a monotonic clock, so
/// that publisher and subscribers can live in different processes of the same machine.
#[derive(Debug, Serialize)]
pub struct Stamp<'a> {
    pub seq: u64,
    pub sent_us: u64,
    /// Filler up to `--payload-bytes`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub pad: &'a str,
}

/// What a subscriber reads back; the filler is skipped.
#[derive(Debug, Deserialize)]
pub struct ReceivedStamp {
    pub seq: u64,
    pub sent_us: u64,
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}
