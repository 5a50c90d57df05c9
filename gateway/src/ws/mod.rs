//! RFC 6455, server side: upgrade validation, frame decoding and encoding. No IO lives here.

pub mod frame;
pub mod handshake;
pub mod incoming;

pub use frame::{Assembler, FrameHead, Message, WsError};
pub use handshake::{accept_upgrade, UpgradeError};
