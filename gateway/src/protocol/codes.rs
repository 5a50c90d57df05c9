//! Pusher error and close codes, and the WebSocket close codes the gateway sends.

/// App key unknown.
pub const APP_MISSING: u16 = 4001;
/// App disabled.
pub const APP_DISABLED: u16 = 4003;
/// App or node over its connection quota.
pub const OVER_QUOTA: u16 = 4004;
/// The request path names no endpoint.
pub const PATH_NOT_FOUND: u16 = 4005;
/// Protocol version not supported.
pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
/// Unauthorized (bad auth, bad channel) or terminated.
pub const UNAUTHORIZED: u16 = 4009;
/// Over capacity; also a subscriber too slow to keep up.
pub const OVER_CAPACITY: u16 = 4100;
/// Going away: drain or shutdown, reconnect now.
pub const GOING_AWAY: u16 = 4200;
/// Silent for too long.
pub const PONG_NOT_RECEIVED: u16 = 4201;
/// A client event refused: over the rate limit (Pusher's use of it), or, as other Pusher
/// servers also use it, too large or named too long.
pub const CLIENT_EVENT_REJECTED: u16 = 4301;
/// A sign-in's watchlist is longer than the gateway keeps.
pub const WATCHLIST_TOO_LONG: u16 = 4302;

/// WebSocket: normal closure.
pub const WS_NORMAL: u16 = 1000;
/// WebSocket: protocol error.
pub const WS_PROTOCOL_ERROR: u16 = 1002;
/// WebSocket: data type not accepted (binary frames).
pub const WS_UNSUPPORTED_DATA: u16 = 1003;
/// WebSocket: text that is not UTF-8.
pub const WS_INVALID_PAYLOAD: u16 = 1007;
/// WebSocket: a message broke a policy (here: it did not arrive whole in time).
pub const WS_POLICY_VIOLATION: u16 = 1008;
/// WebSocket: message too big.
pub const WS_MESSAGE_TOO_BIG: u16 = 1009;
/// WebSocket: the server is overloaded; come back later (here: the node's input budget is spent).
pub const WS_TRY_AGAIN_LATER: u16 = 1013;
