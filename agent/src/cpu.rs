//! The agent's CPU time, its own plus its waited-for children's (kubeadm,
//! systemctl, ...), for the per-step `cpu_ms` in status.json. Read from
//! `/proc/self/stat` rather than getrusage(2) so no unsafe code is needed.

/// Clock ticks per second of `/proc/*/stat`: the kernel's USER_HZ, which is
/// 100 on every architecture piha targets (amd64, arm64).
const USER_HZ: u64 = 100;

/// Milliseconds of user + system CPU used by this process and its reaped
/// children so far, or `None` if /proc is unreadable.
pub fn used_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// Fields 14-17 of proc(5) `stat` (utime, stime, cutime, cstime), counted
/// after the command name, which may itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state), so field N is at index N - 3.
    let ticks: u64 = fields.get(11..15)?.iter().map(|f| f.parse::<u64>().ok()).sum::<Option<u64>>()?;
    Some(ticks * 1000 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::{parse_stat, used_ms};

    #[test]
    fn sums_self_and_children() {
        let stat = "1234 (piha (agent)) S 1 1234 1234 0 -1 4194560 100 0 0 0 12 3 40 5 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat(stat), Some((12 + 3 + 40 + 5) * 10));
    }

    #[test]
    fn reads_this_process() {
        assert!(used_ms().is_some());
    }
}
