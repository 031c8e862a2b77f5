//! Fault injection for tests: a [`FaultPlan`] handed to
//! [`ShardStorage::open_with_faults`](crate::ShardStorage::open_with_faults) makes the storage's
//! I/O seam fail on demand (EIO, ENOSPC, torn writes, failed fdatasync, failed truncation or
//! small-file write, failed recovery read, failed reads after open) while everything else runs
//! on the real ring and real files, and can simulate a power loss. It also counts reads, so
//! tests can tell that a read went through the seam (the ring) and not around it.
//!
//! The power-loss model ([`FaultPlan::model_power_loss`], [`FaultPlan::lose_power`]): a write
//! or truncation through the seam is *durable* once an fdatasync of the same file (inode) that
//! was submitted after it completed, or linked behind it, completes successfully. Until then
//! the plan keeps an undo record (the bytes it overwrote, the file length before it); losing
//! power replays the undo records of every file newest first, so each file is back at its
//! durable contents and length (a file never ends before its furthest durable write: an older
//! write still in flight when a newer one was synced reads back as a hole), and can then keep a prefix of the newest lost write (a torn
//! write: any prefix of a write may reach the platter). Small files written whole through the
//! seam (indexes, checkpoint, clean marker) are durable when their write returns (they are
//! fsynced, renamed and the directory fsynced inside it). A segment file created after open
//! (a roll) is reported to the seam (`IoBackend::file_created`): losing power removes it
//! unless an fsync of its directory submitted after its creation completed. Not modelled:
//! unlinks (retention, rollback: a deleted segment cannot come back), and files written with
//! std::fs at open (recovery syncs what it changes before the log is used).
//!
//! Owns the plan, the undo records and the wrapping backend. Must never be used by the broker
//! in production; it only changes behaviour when a test arms a fault or the power model.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use crate::buffer::AlignedBuffer;
use crate::io::{FileWrite, IoBackend, IoFuture, ReadFuture, WriteSync};

/// One armed fault, consumed by the next matching operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The next write fails with this errno and writes nothing.
    WriteError(i32),
    /// The write with this number (counted from the plan's creation) fails with this errno.
    WriteErrorAt(u64, i32),
    /// The next write stores only its first `bytes`, then fails with EIO.
    TornWrite(usize),
    /// The next fdatasync fails with this errno (after its write succeeded).
    SyncError(i32),
    /// The next truncation fails with this errno and changes nothing.
    TruncateError(i32),
    /// The next small-file write (index, checkpoint, marker) fails with this errno.
    SmallFileError(i32),
    /// The next read fails with this errno and reads nothing.
    ReadError(i32),
    /// The next unlink (retention) fails with this errno and removes nothing.
    UnlinkError(i32),
}

/// A file's identity: (device, inode). Descriptor numbers are reused; inodes outlive
/// renames and unlinks.
type Inode = (u64, u64);

/// How to undo one change to a file that no completed fdatasync covers yet.
#[derive(Debug)]
struct Undo {
    /// Order of submission, plan-wide.
    sequence: u64,
    position: u64,
    /// The bytes the change overwrote (those that existed below the old length).
    old_bytes: Vec<u8>,
    len_before: u64,
    /// The bytes written (empty for a truncation): a torn write keeps a prefix of them.
    new_bytes: Vec<u8>,
    /// The change completed (a sync submitted after a completed change covers it).
    completed: bool,
}

#[derive(Debug)]
struct TrackedFile {
    /// Opened through /proc/self/fd: no O_DIRECT, and it keeps the inode even once unlinked.
    file: File,
    undo: Vec<Undo>,
    /// The length a completed fdatasync made durable (the end of the furthest durable write,
    /// or a durable truncation), None until one did. Undoing an older change that was still
    /// in flight never shortens the file below it: fdatasync persists the size a durable
    /// write needs, whatever an earlier, unfinished write left behind.
    durable_len: Option<u64>,
}

/// A file created through the seam whose directory entry no directory fsync covers yet.
#[derive(Debug)]
struct NewEntry {
    path: PathBuf,
    directory: Inode,
    /// Order of creation, in the same sequence as the changes.
    sequence: u64,
}

/// The power-loss model's state: un-synced changes per file, un-synced directory entries.
#[derive(Debug, Default)]
struct PowerModel {
    files: HashMap<Inode, TrackedFile>,
    new_entries: HashMap<Inode, NewEntry>,
    next_sequence: u64,
}

/// What [`FaultPlan::lose_power`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerLoss {
    /// Un-synced writes and truncations undone.
    pub changes_undone: usize,
    /// Files removed because no directory fsync covered their creation.
    pub files_removed: usize,
    /// Bytes of the newest lost write kept (a torn write), 0 when none.
    pub torn_bytes_kept: usize,
}

#[derive(Debug, Default)]
struct PlanState {
    faults: VecDeque<Fault>,
    /// While set, every write fails with ENOSPC (a full disk).
    disk_full: bool,
    /// While set, every read fails with this errno (an unreadable disk).
    reads_fail: Option<i32>,
    /// While set, a group commit's fdatasyncs do not complete (a slow disk cache flush):
    /// they finish once released.
    syncs_held: bool,
    /// Wakes held fdatasyncs on release.
    syncs_released: Rc<tokio::sync::Notify>,
    /// While set, staged segment writes do not start (see [`FaultPlan::hold_writes`]).
    writes_held: bool,
    /// Starts each held write, in submission order.
    held_writes: Vec<tokio::sync::oneshot::Sender<()>>,
    writes: u64,
    syncs: u64,
    reads: u64,
    recovery_reads: u64,
    unlinks: u64,
    /// (the recovery read number that fails, errno)
    recovery_read_fault: Option<(u64, i32)>,
    /// Cleaner steps reached (`IoBackend::cleaner_step`).
    cleaner_steps: u64,
    /// The cleaner step number at which the cleaner "crashes".
    cleaner_crash_at: Option<u64>,
    power: Option<PowerModel>,
}

/// A shared, mutable list of faults to inject. Clone it to keep arming faults after open.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan(Rc<RefCell<PlanState>>);

impl FaultPlan {
    /// A plan with no faults armed.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Makes the cleaner stop dead at its `step`-th step from now (counting from 1), before
    /// doing it, as if the process were killed there: it changes nothing more on disk.
    pub fn crash_cleaner_at_step(&self, step: u64) {
        let mut state = self.0.borrow_mut();
        state.cleaner_crash_at = Some(state.cleaner_steps + step);
    }

    /// Cleaner steps reached so far (each file-changing step of a pass counts one).
    pub fn cleaner_steps(&self) -> u64 {
        self.0.borrow().cleaner_steps
    }

    /// The next write fails with `errno` (e.g. `libc::EIO`) without writing.
    pub fn fail_next_write(&self, errno: i32) {
        self.arm(Fault::WriteError(errno));
    }

    /// The write after the next `writes` ones fails with `errno` without writing (e.g. the
    /// second flush of an append written over several).
    pub fn fail_write_after(&self, writes: u64, errno: i32) {
        let target = self.0.borrow().writes + writes + 1;
        self.arm(Fault::WriteErrorAt(target, errno));
    }

    /// The next write stores only its first `bytes` bytes and then reports EIO.
    pub fn tear_next_write(&self, bytes: usize) {
        self.arm(Fault::TornWrite(bytes));
    }

    /// Holds (true) or releases (false) every group-commit fdatasync: while held, one
    /// submitted with a write completes only after the release, as on a disk whose cache
    /// flush stalls. Its write completes as usual.
    pub fn hold_syncs(&self, held: bool) {
        let released = {
            let mut state = self.0.borrow_mut();
            state.syncs_held = held;
            state.syncs_released.clone()
        };
        if !held {
            released.notify_waiters();
        }
    }

    /// Holds (true) or releases (false) every staged segment write (O_DIRECT group
    /// commits): while held, a submitted write does not start at all (nothing reaches the
    /// file) and its completion, and a linked fdatasync's, wait. On release the held writes
    /// start newest first, as a disk may complete in-flight writes in any order; each one's
    /// linked fdatasync runs after it. An armed write error still fails its write (when it
    /// starts, writing nothing); torn writes and the power model are not combined with it.
    pub fn hold_writes(&self, held: bool) {
        let released = {
            let mut state = self.0.borrow_mut();
            state.writes_held = held;
            if held {
                Vec::new()
            } else {
                std::mem::take(&mut state.held_writes)
            }
        };
        for start in released.into_iter().rev() {
            // The write's task may be gone with its shard; nothing to start then.
            let _ = start.send(());
        }
    }

    /// Writes waiting for [`FaultPlan::hold_writes`] to release them.
    pub fn held_writes(&self) -> usize {
        self.0.borrow().held_writes.len()
    }

    /// When writes are held: what starts this write.
    fn hold_write(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let mut state = self.0.borrow_mut();
        if !state.writes_held {
            return None;
        }
        let (start, started) = tokio::sync::oneshot::channel();
        state.held_writes.push(start);
        Some(started)
    }

    /// The next fdatasync fails with `errno`.
    pub fn fail_next_sync(&self, errno: i32) {
        self.arm(Fault::SyncError(errno));
    }

    /// The next truncation (segment finalization, clean shutdown) fails with `errno`.
    pub fn fail_next_truncate(&self, errno: i32) {
        self.arm(Fault::TruncateError(errno));
    }

    /// The next small-file write (an index, the recovery checkpoint, the clean-shutdown
    /// marker) fails with `errno`.
    pub fn fail_next_small_file(&self, errno: i32) {
        self.arm(Fault::SmallFileError(errno));
    }

    /// The next unlink of a segment file (retention) fails with `errno`.
    pub fn fail_next_unlink(&self, errno: i32) {
        self.arm(Fault::UnlinkError(errno));
    }

    /// The next read of segment data by recovery (opening a partition) fails with `errno`.
    pub fn fail_next_recovery_read(&self, errno: i32) {
        self.fail_recovery_read_after(0, errno);
    }

    /// Recovery's read of segment data after the next `reads` ones fails with `errno`.
    pub fn fail_recovery_read_after(&self, reads: u64, errno: i32) {
        let mut state = self.0.borrow_mut();
        state.recovery_read_fault = Some((state.recovery_reads + reads + 1, errno));
    }

    /// Reads of segment data by recovery so far.
    pub fn recovery_reads(&self) -> u64 {
        self.0.borrow().recovery_reads
    }

    /// Unlinks through the seam so far (retention's).
    pub fn unlinks(&self) -> u64 {
        self.0.borrow().unlinks
    }

    /// The next read (fetch, index load, header walk, chunk copy) fails with `errno`.
    pub fn fail_next_read(&self, errno: i32) {
        self.arm(Fault::ReadError(errno));
    }

    /// While `Some(errno)`, every read fails with it.
    pub fn set_reads_failing(&self, errno: Option<i32>) {
        self.0.borrow_mut().reads_fail = errno;
    }

    /// Reads submitted so far (including failed ones).
    pub fn read_count(&self) -> u64 {
        self.0.borrow().reads
    }

    /// While `full`, every write fails with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.0.borrow_mut().disk_full = full;
    }

    /// Writes and fdatasyncs submitted so far (including failed ones).
    pub fn operation_counts(&self) -> (u64, u64) {
        let state = self.0.borrow();
        (state.writes, state.syncs)
    }

    /// Starts keeping undo records of every write and truncation through the seam, for
    /// [`FaultPlan::lose_power`]. Call before the storage writes anything.
    pub fn model_power_loss(&self) {
        self.0
            .borrow_mut()
            .power
            .get_or_insert_with(PowerModel::default);
    }

    /// Loses power: every write and truncation no completed fdatasync covers is undone, newest
    /// first, and then the newest of them keeps its first `torn_bytes` bytes (0: none; at
    /// most all but one of its bytes). Call after the storage using this plan is gone (its
    /// runtime stopped, so nothing is in flight). Errors are those of restoring the files.
    pub fn lose_power(&self, torn_bytes: usize) -> io::Result<PowerLoss> {
        let mut state = self.0.borrow_mut();
        let Some(model) = state.power.as_mut() else {
            return Ok(PowerLoss::default());
        };
        let mut outcome = PowerLoss::default();
        let newest = model
            .files
            .iter()
            .flat_map(|(inode, tracked)| {
                tracked.undo.iter().map(move |undo| (undo.sequence, *inode))
            })
            .max();
        let mut torn: Option<(Inode, u64, Vec<u8>)> = None;
        for (inode, tracked) in model.files.iter_mut() {
            for undo in tracked.undo.drain(..).rev() {
                tracked.file.write_all_at(&undo.old_bytes, undo.position)?;
                let len = tracked
                    .durable_len
                    .map_or(undo.len_before, |durable| durable.max(undo.len_before));
                tracked.file.set_len(len)?;
                // What the lost write put beyond the old end but below a durable length reads
                // back as a hole (zeros), as an unwritten extent would.
                let lost_from = undo.position.max(undo.len_before);
                let lost_to = (undo.position + undo.new_bytes.len() as u64).min(len);
                if lost_to > lost_from {
                    let zeros = vec![0u8; (lost_to - lost_from) as usize];
                    tracked.file.write_all_at(&zeros, lost_from)?;
                }
                outcome.changes_undone += 1;
                if newest == Some((undo.sequence, *inode)) && !undo.new_bytes.is_empty() {
                    torn = Some((*inode, undo.position, undo.new_bytes));
                }
            }
        }
        if let Some((inode, position, new_bytes)) = torn {
            let keep = torn_bytes.min(new_bytes.len().saturating_sub(1));
            if keep > 0 {
                if let Some(tracked) = model.files.get(&inode) {
                    tracked.file.write_all_at(&new_bytes[..keep], position)?;
                    outcome.torn_bytes_kept = keep;
                }
            }
        }
        model.files.clear();
        for (inode, entry) in model.new_entries.drain() {
            // Only if the name still leads to the file created then (not unlinked, reused).
            let same = std::fs::metadata(&entry.path).is_ok_and(|meta| {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino()) == inode
            });
            if same {
                std::fs::remove_file(&entry.path)?;
                outcome.files_removed += 1;
            }
        }
        Ok(outcome)
    }

    /// Records a file created through the seam (power model on): its directory entry is lost
    /// with the power until a directory fsync submitted after this completes.
    fn record_created(&self, fd: RawFd) {
        let mut state = self.0.borrow_mut();
        let Some(model) = state.power.as_mut() else {
            return;
        };
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .expect("power model: the path of a created file");
        let parent = path
            .parent()
            .map(Path::to_path_buf)
            .expect("power model: a created file has a directory");
        let directory = {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(&parent).expect("power model: the directory");
            (meta.dev(), meta.ino())
        };
        let sequence = model.next_sequence;
        model.next_sequence += 1;
        model.new_entries.insert(
            inode_of(fd),
            NewEntry {
                path,
                directory,
                sequence,
            },
        );
    }

    /// What an fsync of the directory `fd` submitted now covers: entries created so far.
    fn directory_coverage(&self, fd: RawFd) -> Option<(Inode, u64)> {
        let state = self.0.borrow();
        let model = state.power.as_ref()?;
        let directory = inode_of(fd);
        let covered = model
            .new_entries
            .values()
            .filter(|entry| entry.directory == directory)
            .map(|entry| entry.sequence)
            .max()?;
        Some((directory, covered))
    }

    /// A completed directory fsync made the entries in `directory` up to `covered` durable.
    fn directory_synced(&self, directory: Inode, covered: u64) {
        let mut state = self.0.borrow_mut();
        if let Some(model) = state.power.as_mut() {
            model
                .new_entries
                .retain(|_, entry| entry.directory != directory || entry.sequence > covered);
        }
    }

    fn arm(&self, fault: Fault) {
        self.0.borrow_mut().faults.push_back(fault);
    }

    fn take_write_fault(&self) -> Option<Fault> {
        let mut state = self.0.borrow_mut();
        state.writes += 1;
        if state.disk_full {
            return Some(Fault::WriteError(libc::ENOSPC));
        }
        let writes = state.writes;
        let position = state.faults.iter().position(|fault| match fault {
            Fault::WriteError(_) | Fault::TornWrite(_) => true,
            Fault::WriteErrorAt(number, _) => *number == writes,
            _ => false,
        })?;
        match state.faults.remove(position) {
            Some(Fault::WriteErrorAt(_, errno)) => Some(Fault::WriteError(errno)),
            fault => fault,
        }
    }

    fn take_sync_fault(&self) -> Option<i32> {
        let mut state = self.0.borrow_mut();
        state.syncs += 1;
        let position = state
            .faults
            .iter()
            .position(|fault| matches!(fault, Fault::SyncError(_)))?;
        match state.faults.remove(position) {
            Some(Fault::SyncError(errno)) => Some(errno),
            _ => None,
        }
    }

    fn take_read_fault(&self) -> Option<i32> {
        {
            let mut state = self.0.borrow_mut();
            state.reads += 1;
            if let Some(errno) = state.reads_fail {
                return Some(errno);
            }
        }
        self.take_fault(|fault| match fault {
            Fault::ReadError(errno) => Some(*errno),
            _ => None,
        })
    }

    fn take_fault(&self, matches: impl Fn(&Fault) -> Option<i32>) -> Option<i32> {
        let mut state = self.0.borrow_mut();
        let position = state
            .faults
            .iter()
            .position(|fault| matches(fault).is_some())?;
        state
            .faults
            .remove(position)
            .and_then(|fault| matches(&fault))
    }

    /// Records the undo of a change of `fd` at `position` (a write of `new_bytes`, or a
    /// truncation to `position` when `new_bytes` is None); returns its sequence number, or
    /// None when the power model is off. Panics on an error reading the file: a test setup
    /// failure, never a broker path.
    fn record_change(
        &self,
        fd: RawFd,
        position: u64,
        new_bytes: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<u64> {
        let mut state = self.0.borrow_mut();
        let model = state.power.as_mut()?;
        // Copied only when the model is on: other fault tests write without the copy.
        let new_bytes = new_bytes();
        let inode = inode_of(fd);
        let tracked = model.files.entry(inode).or_insert_with(|| TrackedFile {
            file: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/self/fd/{fd}"))
                .expect("power model: reopening a descriptor"),
            undo: Vec::new(),
            durable_len: None,
        });
        let len_before = tracked
            .file
            .metadata()
            .expect("power model: file length")
            .len();
        let end = match &new_bytes {
            Some(bytes) => position + bytes.len() as u64,
            None => len_before,
        };
        let old_len = end.min(len_before).saturating_sub(position);
        let mut old_bytes = vec![0u8; old_len as usize];
        tracked
            .file
            .read_exact_at(&mut old_bytes, position)
            .expect("power model: reading overwritten bytes");
        let sequence = model.next_sequence;
        model.next_sequence += 1;
        tracked.undo.push(Undo {
            sequence,
            position,
            old_bytes,
            len_before,
            new_bytes: new_bytes.unwrap_or_default(),
            completed: false,
        });
        Some(sequence)
    }

    fn mark_completed(&self, sequence: u64) {
        let mut state = self.0.borrow_mut();
        if let Some(model) = state.power.as_mut() {
            for tracked in model.files.values_mut() {
                for undo in tracked
                    .undo
                    .iter_mut()
                    .filter(|undo| undo.sequence == sequence)
                {
                    undo.completed = true;
                }
            }
        }
    }

    /// What an fdatasync of `fd` submitted now covers: the changes of its file completed so
    /// far, and `linked` (the write it is linked behind). Exactly those: an older change still
    /// in flight is not covered, even though a newer one is (several writes per file may be in
    /// flight, and they complete in any order).
    fn sync_coverage(&self, fd: RawFd, linked: Option<u64>) -> Option<(Inode, Vec<u64>)> {
        self.coverage(fd, linked, false)
    }

    /// What a [`WriteSync::Own`] write (RWF_DSYNC) covers: its own change, nothing else.
    fn own_coverage(&self, fd: RawFd, change: Option<u64>) -> Option<(Inode, Vec<u64>)> {
        self.coverage(fd, change, true)
    }

    fn coverage(
        &self,
        fd: RawFd,
        linked: Option<u64>,
        own_only: bool,
    ) -> Option<(Inode, Vec<u64>)> {
        let state = self.0.borrow();
        let model = state.power.as_ref()?;
        let inode = inode_of(fd);
        let covered: Vec<u64> = model
            .files
            .get(&inode)?
            .undo
            .iter()
            .filter(|undo| (undo.completed && !own_only) || Some(undo.sequence) == linked)
            .map(|undo| undo.sequence)
            .collect();
        (!covered.is_empty()).then_some((inode, covered))
    }

    /// A completed fdatasync made the changes `covered` of `inode` durable.
    fn synced(&self, inode: Inode, covered: &[u64]) {
        let mut state = self.0.borrow_mut();
        let Some(tracked) = state
            .power
            .as_mut()
            .and_then(|model| model.files.get_mut(&inode))
        else {
            return;
        };
        // In submission order: a durable truncation sets the length, a durable write extends it.
        for undo in tracked
            .undo
            .iter()
            .filter(|undo| covered.contains(&undo.sequence))
        {
            let end = undo.position + undo.new_bytes.len() as u64;
            tracked.durable_len = Some(if undo.new_bytes.is_empty() {
                undo.position
            } else {
                tracked.durable_len.map_or(end, |len| len.max(end))
            });
        }
        tracked
            .undo
            .retain(|undo| !covered.contains(&undo.sequence));
    }
}

fn inode_of(fd: RawFd) -> Inode {
    // SAFETY: fstat writes only into `stat`; an invalid descriptor returns an error.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(fd, &mut stat) };
    assert_eq!(rc, 0, "power model: fstat of a descriptor in use");
    (stat.st_dev, stat.st_ino)
}

/// Wraps a backend and applies a [`FaultPlan`].
pub(crate) struct FaultBackend<B> {
    pub(crate) inner: B,
    pub(crate) plan: FaultPlan,
}

/// A write that starts only when `started` fires ([`FaultPlan::hold_writes`]), then its
/// fdatasync (when `sync`) once the write is in, as a linked one would.
fn held_write<B: IoBackend + 'static>(
    inner: B,
    staging: Rc<AlignedBuffer>,
    write: FileWrite,
    sync: bool,
    started: tokio::sync::oneshot::Receiver<()>,
    errno: Option<i32>,
) -> (IoFuture, Option<IoFuture>) {
    let (written_tx, written_rx) = tokio::sync::oneshot::channel();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        if started.await.is_err() {
            return;
        }
        let result = match errno {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => inner.write(&staging, write, WriteSync::None).0.await,
        };
        let ok = result.is_ok();
        let _ = written_tx.send(result);
        if sync && ok {
            let _ = synced_tx.send(inner.fdatasync(write.fd).await);
        }
    });
    let written: IoFuture = Box::pin(async move {
        written_rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("held write never started")))
    });
    let synced: Option<IoFuture> = sync.then(|| {
        Box::pin(async move {
            synced_rx
                .await
                .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::ECANCELED)))
        }) as IoFuture
    });
    (written, synced)
}

fn failed(errno: i32) -> IoFuture {
    Box::pin(async move { Err(io::Error::from_raw_os_error(errno)) })
}

/// A write that lands and then reports `errno`: an RWF_DSYNC write whose sync failed.
fn fails_after(written: IoFuture, errno: i32) -> IoFuture {
    Box::pin(async move {
        let _ = written.await;
        Err(io::Error::from_raw_os_error(errno))
    })
}

/// A torn write: lets the partial write land, then reports the failure the device gave.
fn torn(written: IoFuture) -> IoFuture {
    Box::pin(async move {
        let _ = written.await;
        Err(io::Error::from_raw_os_error(libc::EIO))
    })
}

impl<B> FaultBackend<B> {
    /// Runs `write(sync)` with the plan's next sync fault applied: a failing sync still lets
    /// the write itself happen; with [`WriteSync::Own`] the write then fails too (one result
    /// for both, as RWF_DSYNC gives). `change` is the write's undo record (power model), which
    /// a successful sync makes durable (with the file's completed changes, for a linked
    /// fdatasync).
    fn with_sync_fault(
        &self,
        fd: RawFd,
        sync: WriteSync,
        change: Option<u64>,
        write: impl FnOnce(WriteSync) -> (IoFuture, Option<IoFuture>),
    ) -> (IoFuture, Option<IoFuture>) {
        if sync == WriteSync::None {
            let (written, _) = write(WriteSync::None);
            return (self.completes(written, change), None);
        }
        match self.plan.take_sync_fault() {
            None => {
                let (written, synced) = write(sync);
                let coverage = match sync {
                    WriteSync::Own => self.plan.own_coverage(fd, change),
                    _ => self.plan.sync_coverage(fd, change),
                };
                (
                    self.completes(written, change),
                    synced.map(|synced| self.held(self.covers(synced, coverage))),
                )
            }
            Some(errno) => {
                let (written, _) = write(WriteSync::None);
                let written = self.completes(written, change);
                let written = match sync {
                    WriteSync::Own => fails_after(written, errno),
                    _ => written,
                };
                (written, Some(failed(errno)))
            }
        }
    }

    /// `future`, completing only once syncs are not held ([`FaultPlan::hold_syncs`]).
    fn held(&self, future: IoFuture) -> IoFuture {
        let plan = self.plan.clone();
        Box::pin(async move {
            let result = future.await;
            loop {
                let released = {
                    let state = plan.0.borrow();
                    if !state.syncs_held {
                        return result;
                    }
                    state.syncs_released.clone()
                };
                let notified = released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if plan.0.borrow().syncs_held {
                    notified.await;
                }
            }
        })
    }

    /// Marks the change `change` completed when `future` succeeds.
    fn completes(&self, future: IoFuture, change: Option<u64>) -> IoFuture {
        let Some(sequence) = change else {
            return future;
        };
        let plan = self.plan.clone();
        Box::pin(async move {
            let result = future.await;
            if result.is_ok() {
                plan.mark_completed(sequence);
            }
            result
        })
    }

    /// Makes the changes `coverage` names durable when the fdatasync `future` succeeds.
    fn covers(&self, future: IoFuture, coverage: Option<(Inode, Vec<u64>)>) -> IoFuture {
        let Some((inode, covered)) = coverage else {
            return future;
        };
        let plan = self.plan.clone();
        Box::pin(async move {
            let result = future.await;
            if result.is_ok() {
                plan.synced(inode, &covered);
            }
            result
        })
    }
}

impl<B: IoBackend + Clone + 'static> IoBackend for FaultBackend<B> {
    fn write(
        &self,
        staging: &Rc<AlignedBuffer>,
        write: FileWrite,
        sync: WriteSync,
    ) -> (IoFuture, Option<IoFuture>) {
        if let Some(started) = self.plan.hold_write() {
            let errno = match self.plan.take_write_fault() {
                Some(Fault::WriteError(errno)) => Some(errno),
                _ => None,
            };
            return held_write(
                self.inner.clone(),
                staging.clone(),
                write,
                sync != WriteSync::None,
                started,
                errno,
            );
        }
        let canceled = || (sync != WriteSync::None).then(|| failed(libc::ECANCELED));
        let new_bytes = |len: usize| {
            // SAFETY: the writer filled this range before submitting and leaves it alone until
            // the write completes; this copy only reads it.
            unsafe { staging.slice(write.staging_offset, len) }.to_vec()
        };
        match self.plan.take_write_fault() {
            Some(Fault::WriteError(errno)) => return (failed(errno), canceled()),
            Some(Fault::TornWrite(bytes)) => {
                let torn_write = FileWrite {
                    len: bytes.min(write.len),
                    ..write
                };
                let change = self.plan.record_change(write.fd, write.file_position, || {
                    Some(new_bytes(torn_write.len))
                });
                let (written, _) = self.inner.write(staging, torn_write, WriteSync::None);
                return (torn(self.completes(written, change)), canceled());
            }
            _ => {}
        }
        let change = self
            .plan
            .record_change(write.fd, write.file_position, || Some(new_bytes(write.len)));
        self.with_sync_fault(write.fd, sync, change, |sync| {
            self.inner.write(staging, write, sync)
        })
    }

    fn write_vectored(
        &self,
        fd: RawFd,
        file_position: u64,
        pieces: Vec<Bytes>,
        sync: bool,
    ) -> (IoFuture, Option<IoFuture>) {
        let canceled = || sync.then(|| failed(libc::ECANCELED));
        let mut pieces = pieces;
        let mut torn_write = false;
        match self.plan.take_write_fault() {
            Some(Fault::WriteError(errno)) => return (failed(errno), canceled()),
            Some(Fault::TornWrite(bytes)) => {
                let mut left = bytes;
                let mut torn_pieces = Vec::new();
                for piece in pieces {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(piece.len());
                    torn_pieces.push(piece.slice(..take));
                    left -= take;
                }
                pieces = torn_pieces;
                torn_write = true;
            }
            _ => {}
        }
        let change = self
            .plan
            .record_change(fd, file_position, || Some(pieces.concat()));
        if torn_write {
            let (written, _) = self.inner.write_vectored(fd, file_position, pieces, false);
            return (torn(self.completes(written, change)), canceled());
        }
        let mode = if sync {
            WriteSync::File
        } else {
            WriteSync::None
        };
        self.with_sync_fault(fd, mode, change, |mode| {
            self.inner
                .write_vectored(fd, file_position, pieces, mode != WriteSync::None)
        })
    }

    fn fdatasync(&self, fd: RawFd) -> IoFuture {
        match self.plan.take_sync_fault() {
            Some(errno) => failed(errno),
            None => {
                let coverage = self.plan.sync_coverage(fd, None);
                let entries = self.plan.directory_coverage(fd);
                let synced = self.covers(self.inner.fdatasync(fd), coverage);
                let Some((directory, covered)) = entries else {
                    return synced;
                };
                let plan = self.plan.clone();
                Box::pin(async move {
                    let result = synced.await;
                    if result.is_ok() {
                        plan.directory_synced(directory, covered);
                    }
                    result
                })
            }
        }
    }

    fn file_created(&self, fd: RawFd) {
        self.plan.record_created(fd);
        self.inner.file_created(fd);
    }

    fn truncate(&self, file: File, len_bytes: u64) -> IoFuture {
        let errno = self.plan.take_fault(|fault| match fault {
            Fault::TruncateError(errno) => Some(*errno),
            _ => None,
        });
        if let Some(errno) = errno {
            return failed(errno);
        }
        let change = self
            .plan
            .record_change(file.as_raw_fd(), len_bytes, || None);
        self.completes(self.inner.truncate(file, len_bytes), change)
    }

    fn recovery_read(&self, file: &File, buf: &mut [u8], position: u64) -> io::Result<()> {
        let errno = {
            let mut state = self.plan.0.borrow_mut();
            state.recovery_reads += 1;
            match state.recovery_read_fault {
                Some((number, errno)) if number == state.recovery_reads => {
                    state.recovery_read_fault = None;
                    Some(errno)
                }
                _ => None,
            }
        };
        match errno {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => self.inner.recovery_read(file, buf, position),
        }
    }

    fn write_small_file(
        &self,
        dir: PathBuf,
        name: String,
        contents: Vec<u8>,
        atomic: bool,
    ) -> IoFuture {
        let errno = self.plan.take_fault(|fault| match fault {
            Fault::SmallFileError(errno) => Some(*errno),
            _ => None,
        });
        match errno {
            Some(errno) => failed(errno),
            None => self.inner.write_small_file(dir, name, contents, atomic),
        }
    }

    fn unlink(&self, path: PathBuf) -> IoFuture {
        let errno = self.plan.take_fault(|fault| match fault {
            Fault::UnlinkError(errno) => Some(*errno),
            _ => None,
        });
        self.plan.0.borrow_mut().unlinks += 1;
        match errno {
            Some(errno) => failed(errno),
            None => self.inner.unlink(path),
        }
    }

    fn swap_op(&self, op: crate::io::SwapOp) -> IoFuture {
        self.inner.swap_op(op)
    }

    fn cleaner_step(&self, step: &'static str) -> io::Result<()> {
        let mut state = self.plan.0.borrow_mut();
        state.cleaner_steps += 1;
        if state.cleaner_crash_at == Some(state.cleaner_steps) {
            state.cleaner_crash_at = None;
            return Err(io::Error::other(format!(
                "injected crash before cleaner step {} ({step})",
                state.cleaner_steps
            )));
        }
        Ok(())
    }

    fn read(
        &self,
        fd: RawFd,
        buffer: Vec<u8>,
        at: usize,
        len: usize,
        file_position: u64,
    ) -> ReadFuture {
        match self.plan.take_read_fault() {
            Some(errno) => {
                Box::pin(async move { (Err(io::Error::from_raw_os_error(errno)), buffer) })
            }
            None => self.inner.read(fd, buffer, at, len, file_position),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writes in flight on one file, the newer completed and synced, the older still in
    /// flight when the power goes: the sync covers only the newer one, so the older one is
    /// lost (a hole), and the newer one, durable, stays where it was written.
    #[test]
    fn a_sync_covers_only_the_writes_completed_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment");
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("create");
        let fd = file.as_raw_fd();
        let plan = FaultPlan::new();
        plan.model_power_loss();
        let older = vec![0xAA; 100];
        let newer = vec![0xBB; 100];
        let older_change = plan
            .record_change(fd, 0, || Some(older.clone()))
            .expect("power model on");
        let newer_change = plan
            .record_change(fd, 100, || Some(newer.clone()))
            .expect("power model on");
        file.write_all_at(&older, 0).expect("older write");
        file.write_all_at(&newer, 100).expect("newer write");
        plan.mark_completed(newer_change);
        let (inode, covered) = plan.sync_coverage(fd, None).expect("one change covered");
        assert_eq!(covered, vec![newer_change]);
        plan.synced(inode, &covered);
        plan.mark_completed(older_change); // completed after the sync was submitted
        let loss = plan.lose_power(0).expect("restore");
        assert_eq!(loss.changes_undone, 1);
        let after = std::fs::read(&path).expect("read back");
        assert_eq!(
            after.len(),
            200,
            "the durable newer write keeps the file's length"
        );
        assert!(
            after[..100].iter().all(|&byte| byte == 0),
            "the older write is lost"
        );
        assert_eq!(&after[100..], &newer[..], "the synced write survives");
    }

    /// A sync linked behind a write covers it, and the changes completed before it, but not a
    /// change submitted after it. An RWF_DSYNC write covers its own change only: not an
    /// earlier completed, never-synced change of the same file (the disk may still hold that
    /// one in its cache).
    #[test]
    fn a_linked_sync_covers_the_completed_writes_and_a_dsync_write_only_itself() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = tempfile::tempfile_in(dir.path()).expect("temp file");
        let fd = file.as_raw_fd();
        let plan = FaultPlan::new();
        plan.model_power_loss();
        let first = plan.record_change(fd, 0, || Some(vec![1; 10])).expect("on");
        plan.mark_completed(first);
        let linked = plan
            .record_change(fd, 10, || Some(vec![2; 10]))
            .expect("on");
        let later = plan
            .record_change(fd, 20, || Some(vec![3; 10]))
            .expect("on");
        let (_, covered) = plan.sync_coverage(fd, Some(linked)).expect("covered");
        assert_eq!(covered, vec![first, linked]);
        assert!(!covered.contains(&later));
        let (_, covered) = plan.own_coverage(fd, Some(linked)).expect("covered");
        assert_eq!(covered, vec![linked]);
    }
}
