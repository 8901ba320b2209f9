//! weftctl as a library: the pieces the demo, the e2e tests and the benches
//! share (starting the real binaries on loopback).
#![forbid(unsafe_code)]

pub mod admin_conn;
pub mod localmesh;
