"""A FUSE passthrough filesystem for tests that can lose power: file data written but not yet
covered by an fsync/fdatasync of its file lives only in this process's memory (served to reads
like a page cache would), and a power cut throws it away.

What this module owns:
- the daemon (`python powerfs.py BACKING MOUNTPOINT`): a passthrough of BACKING at MOUNTPOINT,
  mounted with `direct_io` so the kernel keeps no page cache of its own for these files (O_DIRECT
  opens work, and every read and write reaches this process). Writes land in 4 KiB dirty blocks
  per file; fsync/fdatasync of a file writes its dirty blocks to BACKING and fsyncs there. One
  command on stdin, `cut`, is the power cut: every dirty block is dropped and every later
  operation fails with EIO until the filesystem is unmounted. `dirty` answers how many bytes are
  waiting for a sync.
- Injected faults, also commands on stdin: `fail OP ERRNO PATTERN` makes every later OP (`fsync`,
  which covers fsync, fdatasync and fsyncdir, or `write`) of a path matching PATTERN fail with
  ERRNO (`EIO`, `ENOSPC`, ...) until `heal`; `faults` answers how many of each were injected.
  A path matches when it is PATTERN or lies under it (fnmatch globs, paths as the mount sees
  them: `/topic-2` is a partition directory and every file in it). A failed fsync drops the
  file's dirty blocks unwritten, as Linux does when writeback fails (the pages are marked clean
  and their data is gone at the next eviction or reboot), so a later fsync that succeeds does
  not bring them back. A failed write changes nothing.
- `PowerLossFs`, the test side: mount, cut, unmount (also after a failure), and mount again on
  the same BACKING (what survived the cut); `fail`, `heal` and `faults` for the injected ones.

The model, stated because a test relies on it: data is volatile until its file is synced;
metadata (create, mkdir, rename, unlink, truncate) is durable at once, as if every directory
were synced after each change. So it can show that unsynced data is lost, but it never loses a
file or a rename the broker did not sync.

What it must never do: let a write reach BACKING before an fsync of its file asks for it, report
an fsync as done before BACKING's own fsync returned, or outlive its test (PowerLossFs.unmount
detaches it lazily if it is busy and then kills the daemon).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BLOCK_BYTES = 4096
MOUNT_TIMEOUT_S = 15.0
# Operations `fail` can make fail.
FAULT_OPS = ("fsync", "write")


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------


class _FileState:
    """Unsynced data of one file: its logical size and its dirty blocks."""

    def __init__(self, size: int):
        self.size = size
        self.blocks: dict = {}


def _make_operations(root: str):
    from fuse import FuseOSError, Operations

    class VolatileWrites(Operations):
        def __init__(self):
            self.root = root
            self.mutex = threading.Lock()
            self.states: dict = {}
            self.cut = False
            # op -> (errno, [patterns]) while switched on; op -> failures injected so far.
            self.faults: dict = {}
            self.injected = {op: 0 for op in FAULT_OPS}

        # -- helpers ---------------------------------------------------------------------

        def _full(self, path):
            return os.path.join(self.root, path.lstrip("/"))

        def _alive(self):
            if self.cut:
                raise FuseOSError(errno.EIO)

        def _state(self, path, fh):
            st = self.states.get(path)
            if st is None:
                st = _FileState(os.fstat(fh).st_size)
                self.states[path] = st
            return st

        def _inject(self, op, path):
            """Raises the switched-on fault of `op` for `path`, counting it (mutex held)."""
            fault = self.faults.get(op)
            if fault is None:
                return
            code, patterns = fault
            if any(fnmatch.fnmatchcase(path, pattern)
                   or fnmatch.fnmatchcase(path, pattern.rstrip("/") + "/*")
                   for pattern in patterns):
                self.injected[op] += 1
                raise FuseOSError(code)

        def _persist(self, path, fh):
            st = self.states.pop(path, None)
            if st is not None:
                for index in sorted(st.blocks):
                    start = index * BLOCK_BYTES
                    n = min(BLOCK_BYTES, st.size - start)
                    if n > 0:
                        os.pwrite(fh, bytes(st.blocks[index][:n]), start)
            os.fsync(fh)

        def command(self, line: str) -> str:
            with self.mutex:
                dirty = sum(min(len(s.blocks) * BLOCK_BYTES, s.size) for s in self.states.values())
                if line == "cut":
                    self.cut = True
                    files = len(self.states)
                    self.states.clear()
                    return f"cut files={files} bytes={dirty}"
                if line == "dirty":
                    return f"dirty files={len(self.states)} bytes={dirty}"
                if line == "heal":
                    self.faults.clear()
                    return "healed"
                if line == "faults":
                    counts = " ".join(f"{op}={n}" for op, n in self.injected.items())
                    return f"faults {counts}"
                words = line.split()
                if len(words) == 4 and words[0] == "fail" and words[1] in FAULT_OPS:
                    code = getattr(errno, words[2], None)
                    if not isinstance(code, int):
                        return f"error unknown errno {words[2]!r}"
                    _, patterns = self.faults.get(words[1], (code, []))
                    self.faults[words[1]] = (code, patterns + [words[3]])
                    return f"failing {words[1]} {words[2]} {words[3]}"
            return f"error unknown command {line!r}"

        # -- metadata: passed through, durable at once -----------------------------------

        def access(self, path, mode):
            if not os.access(self._full(path), mode):
                raise FuseOSError(errno.EACCES)

        def getattr(self, path, fh=None):
            with self.mutex:
                self._alive()
                s = os.lstat(self._full(path))
                attrs = {k: getattr(s, k) for k in (
                    "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                    "st_size", "st_uid")}
                st = self.states.get(path)
                if st is not None:
                    attrs["st_size"] = st.size
                return attrs

        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(self._full(path))

        def statfs(self, path):
            s = os.statvfs(self._full(path))
            return {k: getattr(s, k) for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")}

        def chmod(self, path, mode):
            os.chmod(self._full(path), mode)

        def chown(self, path, uid, gid):
            os.chown(self._full(path), uid, gid)

        def utimens(self, path, times=None):
            os.utime(self._full(path), times)

        def mkdir(self, path, mode):
            self._alive()
            os.mkdir(self._full(path), mode)

        def rmdir(self, path):
            self._alive()
            os.rmdir(self._full(path))

        def unlink(self, path):
            with self.mutex:
                self._alive()
                os.unlink(self._full(path))
                self.states.pop(path, None)

        def rename(self, old, new):
            with self.mutex:
                self._alive()
                os.rename(self._full(old), self._full(new))
                self.states.pop(new, None)
                st = self.states.pop(old, None)
                if st is not None:
                    self.states[new] = st

        def truncate(self, path, length, fh=None):
            with self.mutex:
                self._alive()
                os.truncate(self._full(path), length)
                st = self.states.get(path)
                if st is None:
                    return
                cut_index, cut_at = divmod(length, BLOCK_BYTES)
                for index in [i for i in st.blocks if i > cut_index or (i == cut_index
                                                                        and cut_at == 0)]:
                    del st.blocks[index]
                if cut_index in st.blocks:
                    st.blocks[cut_index][cut_at:] = bytes(BLOCK_BYTES - cut_at)
                st.size = length

        # -- files -----------------------------------------------------------------------

        def open(self, path, flags):
            # Read-write whatever the caller asked: an fsync through any descriptor of a file
            # writes its dirty blocks. No O_DIRECT (the kernel's business here, with direct_io)
            # and no O_APPEND (the kernel passes appends at the file's end).
            with self.mutex:
                self._alive()
                fh = os.open(self._full(path), os.O_RDWR)
            if flags & os.O_TRUNC:
                self.truncate(path, 0)
            return fh

        def create(self, path, mode, fi=None):
            with self.mutex:
                self._alive()
                fd = os.open(self._full(path), os.O_CREAT | os.O_RDWR, mode)
            # O_CREAT on an existing file (no O_EXCL) truncates only with O_TRUNC, which the
            # kernel sends as a separate setattr.
            return fd

        def read(self, path, size, offset, fh):
            with self.mutex:
                self._alive()
                st = self.states.get(path)
                if st is None:
                    return os.pread(fh, size, offset)
                end = min(offset + size, st.size)
                out = bytearray()
                pos = offset
                while pos < end:
                    index, within = divmod(pos, BLOCK_BYTES)
                    block = st.blocks.get(index)
                    if block is not None:
                        n = min(BLOCK_BYTES - within, end - pos)
                        out += block[within:within + n]
                    else:
                        # A run of clean blocks: one read from the backing file.
                        run_end = (index + 1) * BLOCK_BYTES
                        while run_end < end and (run_end // BLOCK_BYTES) not in st.blocks:
                            run_end += BLOCK_BYTES
                        n = min(run_end, end) - pos
                        out += os.pread(fh, n, pos).ljust(n, b"\0")
                    pos += n
                return bytes(out)

        def write(self, path, data, offset, fh):
            with self.mutex:
                self._alive()
                self._inject("write", path)
                st = self._state(path, fh)
                pos = 0
                while pos < len(data):
                    index, within = divmod(offset + pos, BLOCK_BYTES)
                    n = min(BLOCK_BYTES - within, len(data) - pos)
                    block = st.blocks.get(index)
                    if block is None:
                        start = index * BLOCK_BYTES
                        old = os.pread(fh, BLOCK_BYTES, start) if start < st.size else b""
                        block = bytearray(old[: max(0, st.size - start)].ljust(BLOCK_BYTES,
                                                                                 b"\0"))
                        st.blocks[index] = block
                    block[within:within + n] = data[pos:pos + n]
                    pos += n
                st.size = max(st.size, offset + len(data))
                return len(data)

        def flush(self, path, fh):
            return 0  # close() is not a sync

        def release(self, path, fh):
            os.close(fh)
            return 0

        def fsync(self, path, datasync, fh):
            with self.mutex:
                self._alive()
                try:
                    self._inject("fsync", path)
                except FuseOSError:
                    # Writeback failed: the dirty data is dropped, not kept for a retry.
                    self.states.pop(path, None)
                    raise
                self._persist(path, fh)
            return 0

        def fsyncdir(self, path, datasync, fh):
            with self.mutex:
                self._alive()
                self._inject("fsync", path)
            return 0

    return VolatileWrites()


def serve(backing: str, mountpoint: str):
    """Run the daemon in the foreground until unmounted; commands on stdin, answers on stdout."""
    from fuse import FUSE

    ops = _make_operations(os.path.abspath(backing))

    def commands():
        for line in sys.stdin:
            print(ops.command(line.strip()), flush=True)

    threading.Thread(target=commands, daemon=True).start()
    FUSE(ops, mountpoint, foreground=True, nothreads=False, direct_io=True, big_writes=True,
         fsname="sluice-powerfs")


# ---------------------------------------------------------------------------------------------
# The test side
# ---------------------------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why this machine cannot run the filesystem, or None when it can."""
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root here"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    try:
        import fuse  # noqa: F401 -- fusepy, which also loads libfuse
    except (ImportError, OSError, EnvironmentError) as exc:
        return f"fusepy or libfuse2 is not installed (scripts/setup-test-deps.sh): {exc}"
    return None


class MountRefused(Exception):
    """The daemon exited before its filesystem appeared: this machine refuses the FUSE mount
    (no CAP_SYS_ADMIN, e.g. an unprivileged container with /dev/fuse passed in)."""


class PowerLossFs:
    """One mount of the daemon over `backing` at `mountpoint`; `log_path` gets its stderr."""

    def __init__(self, backing: Path, mountpoint: Path, log_path: Path):
        self.backing, self.mountpoint, self.log_path = Path(backing), Path(mountpoint), log_path
        self.proc: subprocess.Popen | None = None
        # Unsynced bytes each cut dropped, in order.
        self.dropped_bytes: list = []

    def mount(self):
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        # The brokers' guard (conftest), with SIGTERM rather than SIGKILL: when pytest dies the
        # daemon gets SIGTERM, on which libfuse's fuse_main leaves its loop and unmounts, so a
        # killed run leaves neither a daemon nor a dead mount behind.
        from conftest import _signal_on_parent_death

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.backing), str(self.mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
            preexec_fn=lambda: _signal_on_parent_death(signal.SIGTERM))
        log.close()
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(self.mountpoint):
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.unmount()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                if exited:
                    raise MountRefused(f"powerfs could not mount at {self.mountpoint} (FUSE "
                                       f"mounts need CAP_SYS_ADMIN or fusermount): {tail}")
                raise AssertionError(f"powerfs did not mount at {self.mountpoint}: {tail}")
            time.sleep(0.05)
        return self

    def _ask(self, command: str) -> str:
        assert self.proc is not None and self.proc.poll() is None, "powerfs is not running"
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def dirty_bytes(self) -> int:
        answer = self._ask("dirty")
        return int(answer.rsplit("bytes=", 1)[1])

    def cut(self) -> int:
        """The power cut: drop every unsynced byte (returned) and fail everything after."""
        answer = self._ask("cut")
        assert answer.startswith("cut "), answer
        self.dropped_bytes.append(int(answer.rsplit("bytes=", 1)[1]))
        return self.dropped_bytes[-1]

    def fail(self, op: str, pattern: str, error: str = "EIO"):
        """From now until `heal`, every `op` ("fsync" or "write") of a path that is `pattern`
        or lies under it fails with errno `error` (a name: "EIO", "ENOSPC")."""
        answer = self._ask(f"fail {op} {error} {pattern}")
        assert answer.startswith("failing "), answer

    def heal(self):
        """Switches every injected fault off (what a failed fsync dropped stays dropped)."""
        answer = self._ask("heal")
        assert answer == "healed", answer

    def injected(self) -> dict:
        """{op: failures injected so far}."""
        answer = self._ask("faults")
        assert answer.startswith("faults "), answer
        return {op: int(n) for op, n in (w.split("=") for w in answer.split()[1:])}

    def unmount(self):
        if self.proc is None:
            return
        # Unconditionally: after a cut, stat of the mountpoint fails (EIO), so os.path.ismount
        # would say it is not mounted.
        from helpers import unmount  # here: the daemon side of this file needs no helpers

        unmount(self.mountpoint)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None


def power_cut(broker, fs: PowerLossFs, down_s: float = 0.0) -> int:
    """Power cut (unsynced data dropped), broker killed, the filesystem mounted again from what
    survived, `down_s` later the broker started again. Returns the bytes the cut dropped."""
    dropped_bytes = fs.cut()
    broker.kill9()
    fs.unmount()
    time.sleep(down_s)
    fs.mount()
    broker.start()
    return dropped_bytes


def power_cut_and_restart(fs: PowerLossFs):
    """power_cut as a crash for chaos.run_chaos."""

    def crash(broker, down_s: float):
        power_cut(broker, fs, down_s)

    return crash


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: powerfs.py BACKING MOUNTPOINT")
    serve(sys.argv[1], sys.argv[2])
