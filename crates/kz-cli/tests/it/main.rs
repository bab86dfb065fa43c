//! Integration tests: the real `kz` binary in temporary projects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod util;

mod add_rm;
mod audit;
mod backends;
mod blind;
mod blind_exit;
mod cache;
mod config;
mod docker;
mod export;
mod first_hour;
mod help;
mod hook;
mod import;
mod isolate;
mod leaks;
mod mcp;
mod put;
mod run;
mod server;
mod server_docs;
mod server_replicas;
mod status;
mod supervise;
mod team;
mod trust;
