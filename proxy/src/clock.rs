//! The process clock every policy's timestamps share: monotonic, starting
//! with the process, read as plain integers so they fit in atomics.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the process started (monotonic).
pub fn clock_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `clock_ns` in milliseconds.
pub fn clock_ms() -> u64 {
    clock_ns() / 1_000_000
}
