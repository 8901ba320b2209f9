//! CPU time of processes and threads from `/proc`, for the benchmarks'
//! per-CPU-second figures and the tests that check which thread worked.

use std::path::Path;

/// User + system CPU seconds in a `/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat` file (fields 14 and 15, in USER_HZ
/// ticks: 100 per second on Linux whatever the kernel's own tick); None
/// when the file is gone or unreadable.
pub fn cpu_seconds_in(stat: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let tick = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
    Some((tick(14)? + tick(15)?) as f64 / 100.0)
}

/// User + system CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_in(Path::new(&format!("/proc/{pid}/stat")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_reads_more_cpu_time_later_and_a_gone_one_reads_none() {
        let me = std::process::id();
        let before = cpu_seconds(me).expect("own stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(me).expect("own stat");
        assert!(after > before, "{before} -> {after}");
        assert_eq!(cpu_seconds_in(Path::new("/proc/0/nonexistent/stat")), None);
    }
}
