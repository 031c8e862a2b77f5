//! The file seam under the raft log and the snapshot: [`StoreFile`] is what they need from a
//! file, [`DiskFile`] is the real one, [`PowerLossFile`] a test file that keeps only what a
//! completed fdatasync covered when it "loses power". Owns those three; must never buffer a
//! write past `sync_data` (a caller's durability promise rests on it returning Ok only when
//! every earlier append is on disk).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// What the raft log and the snapshot need from a file.
pub trait StoreFile: Send + 'static {
    /// Reads the whole file.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Appends at the end; not durable until [`StoreFile::sync_data`] returns Ok.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// fdatasync: every byte appended before it is durable once it returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len_bytes` and makes the new length durable.
    fn truncate_synced(&mut self, len_bytes: u64) -> io::Result<()>;
    /// Replaces the whole content atomically and durably: after a crash the file holds either
    /// the old content or `bytes`, never a mix.
    fn replace_synced(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// A real file, appended to; replaced through a synced temp file, a rename and a synced
/// directory.
#[derive(Debug)]
pub struct DiskFile {
    path: PathBuf,
    file: File,
}

impl DiskFile {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_append(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

impl StoreFile for DiskFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate_synced(&mut self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)?;
        self.file.sync_all()
    }

    fn replace_synced(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut temp_name = self.path.clone().into_os_string();
        temp_name.push(".tmp");
        let temp = PathBuf::from(temp_name);
        {
            let mut file = File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &self.path)?;
        sync_parent(&self.path)?;
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

/// What a [`PowerLossFile`] holds: the bytes a reader sees and the prefix that is durable.
#[derive(Debug, Default)]
struct PowerLossState {
    current: Vec<u8>,
    durable_len: usize,
    fail_next_sync: bool,
}

/// An in-memory file that models a power loss: appends are lost unless a later `sync_data`
/// returned Ok, and a torn prefix of the lost bytes may survive. Clones share the same file,
/// so a test keeps one to cut the power while the store owns another. Test-only.
#[derive(Debug, Clone, Default)]
pub struct PowerLossFile {
    state: Arc<Mutex<PowerLossState>>,
}

impl PowerLossFile {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut PowerLossState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// Loses power: every byte not covered by a completed sync is dropped, except the first
    /// `torn_bytes_kept` of them (a torn write).
    pub fn lose_power(&self, torn_bytes_kept: usize) {
        self.with(|s| {
            let keep = (s.durable_len + torn_bytes_kept).min(s.current.len());
            s.current.truncate(keep);
            s.durable_len = keep;
        });
    }

    /// Makes the next `sync_data` fail with EIO (and keep nothing new durable).
    pub fn fail_next_sync(&self) {
        self.with(|s| s.fail_next_sync = true);
    }

    /// The bytes a reader would see now.
    pub fn contents(&self) -> Vec<u8> {
        self.with(|s| s.current.clone())
    }

    /// Bytes not yet covered by a sync.
    pub fn unsynced_len(&self) -> usize {
        self.with(|s| s.current.len() - s.durable_len)
    }

    /// Flips one byte (bit rot, or a torn write inside the durable part).
    pub fn corrupt_byte(&self, at: usize) {
        self.with(|s| {
            if let Some(byte) = s.current.get_mut(at) {
                *byte ^= 0xff;
            }
        });
    }
}

impl StoreFile for PowerLossFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.contents())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.with(|s| s.current.extend_from_slice(bytes));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|s| {
            if std::mem::take(&mut s.fail_next_sync) {
                return Err(io::Error::from_raw_os_error(5));
            }
            s.durable_len = s.current.len();
            Ok(())
        })
    }

    fn truncate_synced(&mut self, len_bytes: u64) -> io::Result<()> {
        self.with(|s| {
            let len = usize::try_from(len_bytes)
                .unwrap_or(usize::MAX)
                .min(s.current.len());
            s.current.truncate(len);
            s.durable_len = len;
        });
        Ok(())
    }

    fn replace_synced(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.with(|s| {
            s.current = bytes.to_vec();
            s.durable_len = bytes.len();
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_synced_bytes_and_a_torn_prefix() {
        let file = PowerLossFile::new();
        let mut handle = file.clone();
        handle.append(b"abc").unwrap();
        handle.sync_data().unwrap();
        handle.append(b"defgh").unwrap();
        file.lose_power(2);
        assert_eq!(file.contents(), b"abcde");
        file.fail_next_sync();
        handle.append(b"x").unwrap();
        assert!(handle.sync_data().is_err());
        file.lose_power(0);
        assert_eq!(file.contents(), b"abcde");
    }

    #[test]
    fn disk_file_replace_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = DiskFile::open(&dir.path().join("f")).unwrap();
        file.append(b"hello").unwrap();
        file.sync_data().unwrap();
        file.replace_synced(b"xy").unwrap();
        file.append(b"z").unwrap();
        assert_eq!(file.read_all().unwrap(), b"xyz");
        file.truncate_synced(1).unwrap();
        assert_eq!(file.read_all().unwrap(), b"x");
    }
}
