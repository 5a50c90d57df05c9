//! HTTP/1.1: request heads, the Pusher HTTP API (routes, signing, bodies) and responses.
//! No IO lives here.

pub mod api;
pub mod head;
pub mod response;

pub use head::{HeadError, RequestHead};
pub use response::Response;
