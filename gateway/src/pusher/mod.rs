//! The Pusher logic of a shard, with no IO. `requests` decides whether a client may do what it
//! asks; `Core` is the shard's state machine (sessions, channels, presence, counts, publish,
//! drain) that the runtime (`shard`) feeds with inputs and whose outputs it carries out.

mod core;
mod counts;
mod fanout;

mod members;
pub mod requests;
mod session;
#[cfg(test)]
mod tests;

pub use self::core::{
    Core, Handle, Place, Publish, QueueFull, Sent, SessionState, Transmit, DRAIN_TICKS_PER_SECOND,
};
