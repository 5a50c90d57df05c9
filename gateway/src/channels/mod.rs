//! A shard's channel registry: who is subscribed to what, the last event of cache channels, the
//! members of presence channels and the signed-in users. No IO lives here.

pub mod counts;
pub mod presence;
mod registry;
pub mod users;

pub use registry::{Registry, CACHE_TTL};
