//! The crash-safe replacement of one segment's log file by its cleaned copy, and its
//! completion at open after a crash.
//!
//! Protocol, for the segment with base offset X (every rename is followed by an fsync of the
//! partition directory before the next step starts):
//! 1. write `X.log.cleaned` and fdatasync it;
//! 2. rename `X.log.cleaned` to `X.log.swap` — the commit point;
//! 3. unlink `X.index` and `X.timeindex` (they describe the old file's positions);
//! 4. rename `X.log.swap` over `X.log` (atomic: the name always has the old or new file);
//! 5. write the new `X.index` and `X.timeindex`.
//!
//! At open ([`complete_at_open`]): a `.cleaned` file is an unfinished copy and is removed (the
//! old segment is intact); a `.swap` file is a committed copy: the indexes are removed and it
//! is renamed over `X.log`, finishing steps 3 and 4. Missing indexes (a crash before step 5)
//! are rebuilt from batch headers on first use. So a crash anywhere leaves every segment
//! either wholly old or wholly new, never a mix and never a hole.
//!
//! Owns the file names of the protocol and the open-time completion. Must never remove or
//! rename a `.log` file other than by renaming a committed `.swap` over it.

use std::io;
use std::path::{Path, PathBuf};

use crate::segment;

/// Suffix of a cleaned copy being written.
const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a cleaned copy that is complete and durable (committed).
const SWAP_SUFFIX: &str = ".swap";

/// `X.log.cleaned`
pub(crate) fn cleaned_path(dir: &Path, base_offset: i64) -> PathBuf {
    with_suffix(&segment::log_path(dir, base_offset), CLEANED_SUFFIX)
}

/// `X.log.swap`
pub(crate) fn swap_path(dir: &Path, base_offset: i64) -> PathBuf {
    with_suffix(&segment::log_path(dir, base_offset), SWAP_SUFFIX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Finishes or undoes the swaps a crash interrupted in `dir` (blocking: at partition open,
/// before the segments are listed). Returns the base offsets whose swap it completed.
pub(crate) fn complete_at_open(dir: &Path) -> io::Result<Vec<i64>> {
    let mut completed = Vec::new();
    let mut changed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(log_name) = name.strip_suffix(CLEANED_SUFFIX) {
            if segment::parse_log_name(log_name).is_some() {
                tracing::info!(file = %entry.path().display(), "removing an unfinished cleaned segment");
                std::fs::remove_file(entry.path())?;
                changed = true;
            }
        } else if let Some(log_name) = name.strip_suffix(SWAP_SUFFIX) {
            let Some(base) = segment::parse_log_name(log_name) else {
                continue;
            };
            tracing::info!(segment = base, dir = %dir.display(), "completing a committed segment swap");
            for index in [
                segment::index_path(dir, base),
                segment::time_index_path(dir, base),
            ] {
                if let Err(error) = std::fs::remove_file(&index) {
                    if error.kind() != io::ErrorKind::NotFound {
                        return Err(error);
                    }
                }
            }
            std::fs::rename(entry.path(), segment::log_path(dir, base))?;
            completed.push(base);
            changed = true;
        }
    }
    if changed {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(completed)
}
