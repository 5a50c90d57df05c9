//! The gateway's integration tests, in one binary so that the library links once: each module
//! runs the real `gateway` binary (or several, with Redis) and talks to it as clients do.

mod common;

mod apps;
mod client_limits;
mod cluster;
mod cluster_bench;
mod cluster_presence;
mod deploy;
mod fanout;
mod frames;
mod http_api;
mod input;
mod lifecycle;
mod limits;
mod presence;
mod proxy;
mod pusher_js;
mod python_sdk;
mod redis_cluster;
mod tls;
mod users;
mod webhooks;
