//! A thread-per-core WebSocket gateway speaking the Pusher Channels protocol v7.
//!
//! The pure modules (`protocol`, `ws`, `http`, `channels`, `pusher`) hold what the protocols say and do no
//! IO; the shell (`shard`, `bus`, `admin`, `server`) moves bytes on monoio runtimes, one per core;
//! `webhooks` sends events to apps' servers and `cluster` joins nodes through Redis, each from a
//! thread of its own.

pub mod admin;
pub mod budget;
pub mod bus;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod http;
pub mod limits;
pub mod memory;
pub mod node;
pub mod protocol;
pub mod proxy;
pub mod pusher;
pub mod server;
pub mod shard;
pub mod tls;
pub mod webhooks;
pub mod ws;
