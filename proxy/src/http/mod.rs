//! The HTTP path. A connection is served by `server` (HTTP/2, told by its
//! preface, on `h2_server`; HTTP/1.1 on `fast_h1` or hyper); each request
//! then runs the phases of its direction:
//!
//! - `inbound`: authorize → rate-limit → caller identity → app → respond.
//! - `outbound`: route → pick backend → breaker → body → mirror →
//!   tries (pick host → send → outlier bookkeeping → retry) → respond.
//!
//! Each phase is one call into one policy module (`crate::policy`,
//! `crate::lb`, `crate::route`); the helpers both directions share are
//! `headers`, `upgrade` and `local_response`; `upstream` holds the pools and
//! connectors (HTTP/2 to upstreams: `h2_client`; an HTTP/2 stream's bodies:
//! `h2_stream`), `body` the request and response bodies, `prefixed` a
//! connection with bytes already read in front, `idle` when a client connection has been idle too long,
//! `head_timeout` the 408 for a request head that did not arrive in time,
//! `limits` its deadlines and header limits.
//!
//! hyper replaced a pingora-based path after both were measured side by
//! side (1.66x the HTTP/1.1 requests/s; see benches/RESULTS.md).

pub mod body;
pub mod fast_h1;
pub mod forward;
pub mod h2_client;
pub mod h2_server;
pub mod h2_stream;
pub mod head_timeout;
pub mod headers;
pub mod idle;
pub mod inbound;
pub mod limits;
pub mod local_response;
pub mod mirror;
pub mod outbound;
pub mod prefixed;
pub mod replay;
pub mod server;
pub mod upgrade;
pub mod upstream;

pub use server::{Direction, HttpServer};
