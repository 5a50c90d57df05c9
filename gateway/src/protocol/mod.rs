//! What the Pusher Channels protocol says: messages, channel kinds and name rules, signatures and
//! error codes. No IO lives here.

pub mod channel;
pub mod codes;
pub mod member;
pub mod message;
pub mod signature;
pub mod socket_id;

pub use channel::{ChannelKind, ChannelNameError};
pub use message::{ClientMessage, MessageError};
pub use socket_id::SocketId;
