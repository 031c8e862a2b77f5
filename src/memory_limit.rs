//! How much memory the broker may use: the smaller of the machine's (`MemTotal` in
//! `/proc/meminfo`) and its control group's limit (cgroup v2 `memory.max`, or v1's
//! `memory.limit_in_bytes`), read once at start-up to size what defaults to a share of it
//! (`log.tail.cache.bytes`).
//!
//! Must never: fail the start-up: a file that is missing or unreadable means "no limit known
//! from there", and no figure at all leaves the caller its fixed fallback.

use std::path::Path;

/// cgroup v1 reports "no limit" as a huge page-rounded number; anything at or above this is
/// treated as no limit.
const CGROUP_V1_UNLIMITED_BYTES: u64 = 1 << 60;

/// The broker's memory limit in bytes, if any source gives one.
pub fn limit_bytes() -> Option<u64> {
    limit_from(Path::new("/"))
}

/// [`limit_bytes`] with every file read under `root` (tests point it at a fake tree).
fn limit_from(root: &Path) -> Option<u64> {
    let machine = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|text| mem_total_bytes(&text));
    let cgroup_v2 = std::fs::read_to_string(root.join("sys/fs/cgroup/memory.max"))
        .ok()
        .and_then(|text| cgroup_bytes(&text));
    let cgroup_v1 =
        std::fs::read_to_string(root.join("sys/fs/cgroup/memory/memory.limit_in_bytes"))
            .ok()
            .and_then(|text| cgroup_bytes(&text));
    [machine, cgroup_v2, cgroup_v1].into_iter().flatten().min()
}

/// `MemTotal:   24576000 kB` → bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// A cgroup limit file: a byte count, or "max" (v2) / a huge value (v1) for none.
fn cgroup_bytes(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < CGROUP_V1_UNLIMITED_BYTES).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_files_parse_and_the_smallest_wins() {
        assert_eq!(
            mem_total_bytes("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        assert_eq!(cgroup_bytes("max\n"), None);
        assert_eq!(cgroup_bytes("9223372036854771712\n"), None, "v1: no limit");
        assert_eq!(cgroup_bytes("4294967296\n"), Some(4 << 30));

        let root = std::env::temp_dir().join(format!("sluice-memory-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(root.join("sys/fs/cgroup")).unwrap();
        std::fs::write(root.join("proc/meminfo"), "MemTotal: 8388608 kB\n").unwrap();
        assert_eq!(limit_from(&root), Some(8 << 30), "the machine alone");
        std::fs::write(root.join("sys/fs/cgroup/memory.max"), "max\n").unwrap();
        assert_eq!(limit_from(&root), Some(8 << 30), "no cgroup limit");
        std::fs::write(root.join("sys/fs/cgroup/memory.max"), "2147483648\n").unwrap();
        assert_eq!(
            limit_from(&root),
            Some(2 << 30),
            "the cgroup's limit is lower"
        );
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(limit_from(&root), None, "nothing to read");
    }
}
