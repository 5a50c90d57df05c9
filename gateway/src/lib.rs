//! A thread-per-core WebSocket gateway speaking the Pusher Channels protocol v7.
//!
//! The pure modules (`protocol`, `ws`, `http`, `channels`) hold what the protocols say and do no
//! IO; the shell (`shard`, `bus`, `admin`) moves bytes on monoio runtimes, one per core.

pub mod protocol;
pub mod ws;
pub mod config;
pub mod http;
pub mod channels;
