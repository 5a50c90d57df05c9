//! The Pusher logic of a session, with no IO: what a client may ask and what the answer is.
//! The shard (`shard::session`) feeds it what the client sent and what the shard knows, and
//! carries out the answer.

pub mod requests;
