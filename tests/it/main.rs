//! End-to-end tests: the real `air-nanny` binary on real scripts and programs in a temp directory,
//! driven over real HTTP on loopback and with real signals.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod check;
mod engine;
mod events;
mod limits;
mod live;
mod logs;
mod ownership;
mod security;
mod supervision;
mod tls;
