//! The scenarios, one file per kind of measurement. Each records into
//! `Results` only when the plan wants it (`--only`).

pub mod control_plane;
pub mod memory;
pub mod throughput;
pub mod workers;

/// Which scenarios run, and how long.
pub struct Plan {
    pub smoke: bool,
    pub rounds: usize,
    pub seconds: f64,
    /// Scenario names to run (empty: all).
    pub only: Vec<String>,
    pub push_proxies: usize,
    pub cp_streams: usize,
}

impl Plan {
    pub fn want(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == scenario)
    }
}
