//! Clustering through Redis pub/sub: what is pure lives in its own module with its tests:
//! `wire` (Redis channel names, the broadcast envelope, control messages), `interest` (which
//! shards hold which channels), `nodes` (heartbeats and expiry), `queries` (questions waiting on
//! other nodes) and `backoff`.

pub mod backoff;
pub mod interest;
pub mod nodes;
pub mod queries;
pub mod wire;
