//! How much memory the broker may use, and how much it could still take.
//!
//! The limit: the smaller of the machine's (`MemTotal` in `/proc/meminfo`) and its control
//! group's (cgroup v2 `memory.max`, or v1's `memory.limit_in_bytes`, the lowest on the way
//! from the process's own group up to the hierarchy's root), read once at start-up to size
//! what defaults to a share of it (`log.tail.cache.bytes`). What it could still take: the
//! machine's `MemAvailable`, and the group's limit less what the group uses apart from page
//! cache (which the kernel reclaims before anything else), the smaller; read every
//! `log.tail.cache.memory.check.interval.ms` by each shard to give tail-cache memory back.
//!
//! The process's own group comes from `/proc/self/cgroup` (v2: `0::/path` under
//! `/sys/fs/cgroup`; v1: `N:memory:/path` under `/sys/fs/cgroup/memory`); inside a cgroup
//! namespace that path is `/`, the mount root.
//!
//! Must never: fail or block the caller: a file that is missing or unreadable means "nothing
//! known from there", and no figure at all leaves the caller its fixed fallback.

use std::path::{Path, PathBuf};

/// cgroup v1 reports "no limit" as a huge page-rounded number; anything at or above this is
/// treated as no limit.
const CGROUP_V1_UNLIMITED_BYTES: u64 = 1 << 60;

/// The broker's memory limit in bytes, if any source gives one.
pub fn limit_bytes() -> Option<u64> {
    limit_from(Path::new("/"))
}

/// Bytes the broker could still take before the machine or its control group runs short, if
/// any source gives a figure.
pub fn available_bytes() -> Option<u64> {
    available_from(Path::new("/"))
}

/// The process's own control-group directories: (v2, v1 memory).
fn own_groups(root: &Path) -> (PathBuf, PathBuf) {
    let mut v2 = root.join("sys/fs/cgroup");
    let mut v1 = root.join("sys/fs/cgroup/memory");
    if let Ok(text) = std::fs::read_to_string(root.join("proc/self/cgroup")) {
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let relative = path.trim_start_matches('/');
            if id == "0" && controllers.is_empty() {
                v2 = root.join("sys/fs/cgroup").join(relative);
            } else if controllers.split(',').any(|name| name == "memory") {
                v1 = root.join("sys/fs/cgroup/memory").join(relative);
            }
        }
    }
    (v2, v1)
}

/// The lowest limit in `file` from `group` up to `mount_root` (a parent's limit binds too).
fn lowest_limit(group: &Path, mount_root: &Path, file: &str) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    let mut dir = Some(group);
    while let Some(at) = dir {
        if let Some(value) = read_cgroup_bytes(&at.join(file)) {
            lowest = Some(lowest.map_or(value, |low| low.min(value)));
        }
        if at == mount_root {
            break;
        }
        dir = at.parent().filter(|parent| parent.starts_with(mount_root));
    }
    lowest
}

fn read_cgroup_bytes(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| cgroup_bytes(&text))
}

/// [`limit_bytes`] with every file read under `root` (tests point it at a fake tree).
fn limit_from(root: &Path) -> Option<u64> {
    let machine = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|text| meminfo_bytes(&text, "MemTotal:"));
    let (v2, v1) = own_groups(root);
    let cgroup_v2 = lowest_limit(&v2, &root.join("sys/fs/cgroup"), "memory.max");
    let cgroup_v1 = lowest_limit(
        &v1,
        &root.join("sys/fs/cgroup/memory"),
        "memory.limit_in_bytes",
    );
    [machine, cgroup_v2, cgroup_v1].into_iter().flatten().min()
}

/// [`available_bytes`] with every file read under `root`.
fn available_from(root: &Path) -> Option<u64> {
    let machine = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|text| meminfo_bytes(&text, "MemAvailable:"));
    let (v2, v1) = own_groups(root);
    let headroom =
        |group: &Path, mount: &str, limit_file: &str, usage_file: &str, cache: &[&str]| {
            let limit = lowest_limit(group, &root.join(mount), limit_file)?;
            let usage = read_cgroup_bytes(&group.join(usage_file))?;
            let stat = std::fs::read_to_string(group.join("memory.stat")).unwrap_or_default();
            let page_cache = cache
                .iter()
                .find_map(|key| stat_value(&stat, key))
                .unwrap_or(0);
            Some(limit.saturating_sub(usage.saturating_sub(page_cache)))
        };
    let cgroup_v2 = headroom(
        &v2,
        "sys/fs/cgroup",
        "memory.max",
        "memory.current",
        &["file"],
    );
    let cgroup_v1 = headroom(
        &v1,
        "sys/fs/cgroup/memory",
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        &["total_cache", "cache"],
    );
    [machine, cgroup_v2, cgroup_v1].into_iter().flatten().min()
}

/// `MemTotal:   24576000 kB` (for `key` "MemTotal:") → bytes.
fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix(key))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// `key value` from a cgroup `memory.stat`.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
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
            meminfo_bytes("MemTotal:       24576000 kB\nMemFree: 1 kB\n", "MemTotal:"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(meminfo_bytes("MemFree: 1 kB\n", "MemTotal:"), None);
        assert_eq!(meminfo_bytes("MemTotal: lots kB\n", "MemTotal:"), None);
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

    #[test]
    fn the_own_group_and_its_parents_bound_the_limit_and_what_is_available() {
        let root = std::env::temp_dir().join(format!("sluice-available-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        const MIB: u64 = 1 << 20;
        write(
            "proc/meminfo",
            "MemTotal: 16777216 kB\nMemAvailable: 10485760 kB\n",
        );
        assert_eq!(available_from(&root), Some(10 << 30), "the machine alone");
        // cgroup v1: the process sits in memory:/grp.
        write("proc/self/cgroup", "4:memory:/grp\n1:cpu:/\n0::/\n");
        write(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            "sys/fs/cgroup/memory/grp/memory.limit_in_bytes",
            &format!("{}\n", 1024 * MIB),
        );
        write(
            "sys/fs/cgroup/memory/grp/memory.usage_in_bytes",
            &format!("{}\n", 800 * MIB),
        );
        write(
            "sys/fs/cgroup/memory/grp/memory.stat",
            &format!("cache 1\nrss 2\ntotal_cache {}\n", 300 * MIB),
        );
        assert_eq!(limit_from(&root), Some(1024 * MIB), "the own group's limit");
        assert_eq!(
            available_from(&root),
            Some(524 * MIB),
            "the limit less what is used apart from page cache"
        );
        write(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            &format!("{}\n", 512 * MIB),
        );
        assert_eq!(
            limit_from(&root),
            Some(512 * MIB),
            "a parent's lower limit binds"
        );
        assert_eq!(available_from(&root), Some(12 * MIB));
        // cgroup v2: the process sits in /a/b; /a has the limit.
        write("proc/self/cgroup", "0::/a/b\n");
        write("sys/fs/cgroup/a/memory.max", &format!("{}\n", 2048 * MIB));
        write("sys/fs/cgroup/a/b/memory.max", "max\n");
        write(
            "sys/fs/cgroup/a/b/memory.current",
            &format!("{}\n", 1024 * MIB),
        );
        write("sys/fs/cgroup/a/b/memory.stat", "anon 5\nfile 0\n");
        assert_eq!(
            limit_from(&root),
            Some(512 * MIB),
            "v1's root limit still read"
        );
        std::fs::remove_file(root.join("sys/fs/cgroup/memory/memory.limit_in_bytes")).unwrap();
        assert_eq!(limit_from(&root), Some(2048 * MIB));
        assert_eq!(available_from(&root), Some(1024 * MIB));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
