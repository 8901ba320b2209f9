//! The traffic policies, one module each. They depend on the host model
//! and the clock, never on the snapshot or the HTTP path, which call them.

pub mod authz;
pub mod circuit_breaker;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
pub mod retry_budget;
pub mod timeout;
