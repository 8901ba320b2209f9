//! The mesh CA and certificate files, shared by `weft-control` (which runs
//! the CA) and `weftctl` (which writes offline roots, issuing CAs and admin
//! certificates) so the CLI does not link the server.
#![forbid(unsafe_code)]

pub mod admin_cert;
pub mod ca;
