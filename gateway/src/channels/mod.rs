//! A shard's channel registry: who is subscribed to what, and the last event of cache channels.
//! No IO lives here.

mod registry;

pub use registry::{Registry, CACHE_TTL};
