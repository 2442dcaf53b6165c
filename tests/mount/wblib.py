"""wblib: real writeback errors for ovlfs's mounted tests (SPEC §4). Stdlib only.

Two ways to make an ext4 filesystem fail to write back data, both on a loop device:

  enospc_upper(): ext4 on a sparse 512M image that lives on a 64M tmpfs. Once the
      tmpfs is full, every block that was never written before fails with ENOSPC at
      writeback; blocks that already hold data (and the journal and inode tables,
      which mkfs zeroes) still overwrite fine.
  eio_upper(): ext4 on an image on faultyfs (tests/tools/faultyfs.cc); arm() makes
      writes to a chosen file's blocks fail with EIO (or another errno), disarm()
      stops it. Everything else keeps working.

Typical use:

    wblib.enter_private_namespace()          # mounts vanish with the process
    with wblib.Cleanup() as cleanup:          # unmounts, detaches, always
        tmp = cleanup.tmpdir()
        upper = wblib.eio_upper(cleanup, tmp, faultyfs=path_to_binary)
        victim = upper.preallocate("victim", 1 << 20)
        fd = os.open(victim, os.O_RDWR)
        upper.arm(victim)
        os.pwrite(fd, data, 0)                # succeeds: the page cache takes it
        wblib.writeback(fd)                   # real writeback, fails; nobody told yet
        wblib.errno_of(os.fsync, fd)          # -> "EIO", then "0" on the next call

Rules the rig relies on (they are properties of the kernel, not of this library):
  * Write only the victim while a failure is armed. The loop driver completes a SHORT
    write as a success, so a request that begins with good blocks and runs into failing
    ones loses the failing part silently. The EIO rig caps loop requests at one FUSE
    request, so any request touching an armed block fails whole; for the ENOSPC rig a
    request that merges a never-written victim block after an already-written
    neighbour can still go through short.
  * The ENOSPC victim must be freshly preallocated: once its blocks were written they
    live in the tmpfs and overwriting them succeeds even when the tmpfs is full.
  * Create every directory and file the test needs before fill(): after it, a new
    metadata block (a new directory's, a growing directory's) fails to be written
    too, and a failed metadata write aborts the journal. Tests that must create things
    after the error use the EIO rig, which fails only the armed blocks.

Every mount, loop device and daemon made here is registered with a Cleanup and undone
in reverse order on any exit, SIGTERM and SIGINT included. As a last resort against
SIGKILL, loop devices are attached with autoclear (they go when their last user goes)
and faultyfs dies with its parent (PR_SET_PDEATHSIG) inside the private namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Iterator

# ---------------------------------------------------------------------------------------
# Small helpers


class CommandError(RuntimeError):
    """A command failed; the message carries its exit status and stderr."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str):
        self.cmd, self.returncode, self.stderr = cmd, returncode, stderr
        super().__init__(f"{' '.join(cmd)}: exit {returncode}: {stderr.strip()}")


def run(cmd: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None
        ) -> subprocess.CompletedProcess:
    """Runs cmd; raises CommandError (with stderr) if it fails and check is set.

    A signal never leaves cmd running unwatched (mkfs still writing to a loop device
    that the cleanup detaches): subprocess would lose the child if the signal raised
    inside Popen() after the fork, so signals wait until the child is owned (the child
    gets them back before exec), and a wait cut short kills and reaps it. With other
    threads alive (no safe preexec_fn) the start is not protected."""
    guarded = _in_main_thread() and threading.active_count() == 1
    with _owned(lambda: subprocess.Popen(
                    cmd, stdin=None if input is None else subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    preexec_fn=_unblock_signals if guarded else None),
                _reap, guarded) as child:
        out, err = child.communicate(input, timeout=timeout)
    if check and child.returncode != 0:
        raise CommandError(cmd, child.returncode, err or out)
    return subprocess.CompletedProcess(cmd, child.returncode, out, err)


def _unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, Cleanup._SIGNALS)


def _reap(child: subprocess.Popen) -> None:
    """Kills child if it still runs (a wait cut short), closes its pipes, waits."""
    if child.poll() is None:
        child.kill()
    child.__exit__(None, None, None)


@contextlib.contextmanager
def _owned(acquire: Callable[[], object], release: Callable[[object], None],
           guarded: bool = True) -> Iterator:
    """acquire() with SIGINT, SIGTERM and SIGHUP held back until its result is owned
    (`guarded`, main thread only), then release(result) whatever happens: a signal
    handler that raised between the acquisition and the code that owns it (Python
    runs handlers at the next call) would lose the result."""
    old = (signal.pthread_sigmask(signal.SIG_BLOCK, Cleanup._SIGNALS)
           if guarded and _in_main_thread() else None)
    try:
        res = acquire()
    except BaseException:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    try:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending signal raises here
        yield res
    finally:
        release(res)


def fd_open(path: str, flags: int, mode: int = 0o777):
    """os.open as a context manager that closes the fd whatever happens (see _owned):
    an fd lost to a signal would keep its mount busy and the cleanup's umount fail."""
    return _owned(lambda: os.open(path, flags | os.O_CLOEXEC, mode), os.close)


def errno_name(e: int) -> str:
    return "0" if e == 0 else errno.errorcode.get(e, str(e))


def errno_of(fn: Callable, *args) -> str:
    """Calls fn(*args); returns "0" on success or the errno's name ("EIO", ...)."""
    try:
        fn(*args)
    except OSError as e:
        return errno_name(e.errno)
    return "0"


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def syncfs(fd: int) -> None:
    """syncfs(2) (Python's os has none); raises OSError with the errno."""
    _check(_libc.syncfs(fd), "syncfs")


SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
SYNC_FILE_RANGE_WRITE_AND_WAIT = 7


def sync_file_range(fd: int, offset: int = 0, nbytes: int = 0,
                    flags: int = SYNC_FILE_RANGE_WRITE_AND_WAIT) -> None:
    """sync_file_range(2); raises OSError. With WAIT_AFTER it reports (and consumes, for
    this open file) a writeback error; WRITE alone only starts writeback."""
    _check(_libc.sync_file_range(fd, offset, nbytes, flags), "sync_file_range")


_NR_CACHESTAT = 451  # x86_64 and every arch with the common syscall table


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def cachestat(fd: int) -> dict[str, int]:
    """cachestat(2) of the whole file: page counts (cached, dirty, under writeback)."""
    rng, cs = _CachestatRange(0, 0), _Cachestat()
    _check(_libc.syscall(ctypes.c_long(_NR_CACHESTAT), ctypes.c_int(fd), ctypes.byref(rng),
                         ctypes.byref(cs), ctypes.c_uint(0)), "cachestat")
    return {n: getattr(cs, n) for n, _ in _Cachestat._fields_}


def writeback(fd: int, timeout: float = 20) -> None:
    """Writes back fd's dirty pages and waits for the I/O to end, WITHOUT reporting or
    marking seen any writeback error: nobody has observed an error it causes, so an fd
    opened afterwards still gets it (errseq's "unseen" state). Uses sync_file_range
    (SYNC_FILE_RANGE_WRITE only) and polls cachestat(2) until nothing is dirty or under
    writeback."""
    deadline = time.monotonic() + timeout
    while True:
        sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
        cs = cachestat(fd)
        if cs["nr_dirty"] == 0 and cs["nr_writeback"] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"writeback of fd {fd} did not finish: {cs}")
        time.sleep(0.01)


_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HDR = struct.Struct("=QQIIII")
_FIEMAP_EXT = struct.Struct("=QQQQQI12x")


def fiemap(path: str) -> list[tuple[int, int, int, int]]:
    """The file's extents as (logical, physical, length, flags), all in bytes (FIEMAP,
    after syncing delayed allocation). The same map as `filefrag -v`."""
    out: list[tuple[int, int, int, int]] = []
    count, start = 256, 0
    with fd_open(path, os.O_RDONLY) as fd:
        while True:
            buf = bytearray(_FIEMAP_HDR.pack(start, 2**64 - 1 - start, _FIEMAP_FLAG_SYNC, 0,
                                             count, 0) + bytes(_FIEMAP_EXT.size * count))
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP_HDR.unpack_from(buf)[3]
            if mapped == 0:
                return out
            for i in range(mapped):
                lo, ph, ln, _, _, fl = _FIEMAP_EXT.unpack_from(
                    buf, _FIEMAP_HDR.size + i * _FIEMAP_EXT.size)
                out.append((lo, ph, ln, fl))
                if fl & _FIEMAP_EXTENT_LAST:
                    return out
            start = out[-1][0] + out[-1][2]


def mountinfo() -> list[dict[str, str]]:
    """This namespace's mounts: mountpoint, fstype, source, options, root (the
    mounted subtree of the filesystem), dev (its MAJ:MIN)."""
    def unescape(s: str) -> str:
        return s.encode().decode("unicode_escape") if "\\" in s else s
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            lf, rf = left.split(), right.split()
            mounts.append({"mountpoint": unescape(lf[4]), "options": lf[5], "fstype": rf[0],
                           "source": unescape(rf[1]), "super_options": rf[2],
                           "root": unescape(lf[3]), "dev": lf[2]})
    return mounts


def mounts_under(path: str) -> list[dict[str, str]]:
    path = os.path.realpath(path)
    return [m for m in mountinfo()
            if m["mountpoint"] == path or m["mountpoint"].startswith(path + "/")]


def is_mountpoint(path: str) -> bool:
    path = os.path.realpath(path)
    return any(m["mountpoint"] == path for m in mountinfo())


def image_name(tmpdir: str) -> str:
    """The name of the image file of a rig made in tmpdir: it spells tmpdir's real path
    ("/" as "%"). Once the mount namespace that held an image's filesystem is gone,
    sysfs gives the backing file's path as just "/NAME"; the name still tells whose it
    is (see loops_backed_under)."""
    return os.path.realpath(tmpdir).strip("/").replace("/", "%") + ".img"


def loops_backed_under(path: str) -> list[tuple[str, str]]:
    """Every loop device on the host whose backing file lies under path, or is the
    image of a rig made under path, as (device, backing file). Loop devices are
    global: other tests' are not ours."""
    path = os.path.realpath(path)
    key = path.strip("/").replace("/", "%")
    found = []
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        base = os.path.basename(backing)
        if backing.startswith(path + "/") or base == key + ".img" or base.startswith(key + "%"):
            found.append((f"/dev/{name}", backing))
    return found


# ---------------------------------------------------------------------------------------
# Namespace and cleanup

_NS_ENV = "OVLFS_WBLIB_MNTNS"


def need_root_or_skip(skip_code: int = 77) -> None:
    """Exits with skip_code (ctest's SKIP_RETURN_CODE) unless this can mount things."""
    missing = [p for p in ("/dev/fuse", "/dev/loop-control") if not os.path.exists(p)]
    if os.geteuid() != 0 or missing:
        print(f"SKIP: needs root, /dev/fuse and /dev/loop-control (missing: {missing})",
              flush=True)
        sys.exit(skip_code)


def enter_private_namespace() -> None:
    """Re-executes this program under `unshare -m --propagation private` unless that
    was already done, so that its mounts exist only for it and vanish when it and its
    children end. The environment variable records the namespace it made; a child
    that should get a namespace of its own must be started without it."""
    ns = os.readlink("/proc/self/ns/mnt")
    marker = os.environ.get(_NS_ENV, "")
    if marker == ns:
        return
    if marker.startswith("pending:"):
        if marker.removeprefix("pending:") == ns:
            raise RuntimeError("unshare -m did not give a new mount namespace")
        os.environ[_NS_ENV] = ns
        # ovlfs keeps its per-upper error records in /dev/shm for the whole boot;
        # a test's records (of loop filesystems that vanish with it) stay in a
        # tmpfs of this namespace's own, and vanish with it too.
        run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=1777", "ovlfs-test-shm", "/dev/shm"])
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[_NS_ENV] = "pending:" + ns
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
    os.execvp(argv[0], argv)


def child_env() -> dict[str, str]:
    """The environment for a child that must enter a private namespace of its own."""
    env = dict(os.environ)
    env.pop(_NS_ENV, None)
    return env


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP so that cleanups run."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


class Cleanup:
    """A stack of undo actions run in reverse order on exit, whatever the exit.

    While active (as a context manager, main thread) SIGTERM and SIGHUP raise
    Terminated, so a ctest timeout unwinds through it; signals are blocked while the
    actions run so that a second signal cannot cut the cleanup short. An action that
    fails is reported on stderr and the rest still run; close() returns the failures.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self._old_handlers: dict[int, object] = {}
        self.errors: list[str] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._actions.append((what, fn))

    def tmpdir(self, prefix: str = "ovlfs-wb.") -> str:
        """A new directory under /tmp, removed at cleanup if nothing is mounted there."""
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")

        def remove() -> None:
            left = mounts_under(path)
            if left:
                raise RuntimeError(f"not removing {path}: still mounted: "
                                   f"{[m['mountpoint'] for m in left]}")
            shutil.rmtree(path)
        self.push(f"remove {path}", remove)
        return path

    def close(self) -> list[str]:
        in_main = _in_main_thread()
        if in_main:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._SIGNALS)
        try:
            while self._actions:
                what, fn = self._actions.pop()
                try:
                    fn()
                except Exception as e:  # keep going: every other action must still run
                    msg = f"cleanup: {what}: {e}"
                    print(msg, file=sys.stderr, flush=True)
                    self.errors.append(msg)
        finally:
            if in_main:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return self.errors

    def __enter__(self) -> "Cleanup":
        if _in_main_thread():
            for s in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[s] = signal.signal(s, _raise_terminated)
        return self

    def __exit__(self, *exc) -> None:
        if exc[2] is not None:
            # The exception's traceback keeps its frames' locals alive, and with them
            # whatever they hold open on a mount about to be unmounted: a signal that
            # raised in a context manager's __exit__ before it closed its fd leaves
            # that fd to the suspended generator that __exit__'s frame holds.
            traceback.clear_frames(exc[2])
        try:
            self.close()
        finally:
            for s, h in self._old_handlers.items():
                signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT, SIGTERM and SIGHUP back until the block ends (main thread only),
    so that a step and its registration with a Cleanup happen together or not at all.
    Children started inside inherit the blocked mask: start none that may hang."""
    if not _in_main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, Cleanup._SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


# ---------------------------------------------------------------------------------------
# Mounts


def mount(cleanup: Cleanup, source: str, target: str, fstype: str | None = None,
          options: str | None = None) -> str:
    """mount(8), undone at cleanup. The undo is registered first (if mount(8) is
    interrupted, the mount may exist all the same) and removes only mounts stacked on
    target after this call."""
    cmd = ["mount"]
    if fstype:
        cmd += ["-t", fstype]
    if options:
        cmd += ["-o", options]
    below = mount_count(target)
    cleanup.push(f"umount {target}", lambda: umount(target, keep=below))
    run(cmd + [source, target])
    return target


def mount_count(target: str) -> int:
    """How many mounts are stacked on target."""
    target = os.path.realpath(target)
    return sum(m["mountpoint"] == target for m in mountinfo())


def umount(target: str, timeout: float = 10, keep: int = 0) -> None:
    """Unmounts target until `keep` mounts are left on it, retrying while it is busy;
    detaches it lazily as a last resort (and then still raises: the leak is reported)."""
    deadline = time.monotonic() + timeout
    while mount_count(target) > keep:
        p = run(["umount", target], check=False, timeout=30)
        if p.returncode == 0:
            continue
        if time.monotonic() > deadline:
            run(["umount", "-l", target], check=False)
            raise CommandError(["umount", target], p.returncode, p.stderr + " (detached lazily)")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------
# Loop devices (ioctls of <linux/loop.h>)

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CLR_FD = 0x4C01
_LO_FLAGS_AUTOCLEAR = 4
_LO_FLAGS_DIRECT_IO = 16
# struct loop_info64: device, inode, rdevice, offset, sizelimit (u64); number,
# encrypt_type, encrypt_key_size, flags (u32); file_name[64], crypt_name[64],
# encrypt_key[32]; init[2] (u64). struct loop_config: fd, block_size (u32), info,
# reserved[8] (u64).
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s16x")
_LOOP_CONFIG = struct.Struct("=II" + _LOOP_INFO64.format[1:] + "64x")


class LoopDevice:
    """A loop device attached to an image, with autoclear set at attach time.

    This object keeps the device open, which keeps it attached; detach() (run by the
    cleanup) asks the kernel to detach it and closes the fd, after which it goes as soon
    as nothing else (a mount) holds it. If the process is killed, closing the fd does
    the same. `path` is /dev/loopN.
    """

    def __init__(self, image: str, *, direct_io: bool = False):
        self.image = os.path.realpath(image)
        self.fd = -1
        self.path = ""
        file_fd = os.open(self.image, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._attach(file_fd, direct_io)
        finally:
            os.close(file_fd)

    def _attach(self, file_fd: int, direct_io: bool) -> None:
        flags = _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_DIRECT_IO if direct_io else 0)
        name = self.image.encode()[:63]
        cfg = _LOOP_CONFIG.pack(file_fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"")
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(100):
                n = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                try:
                    fd = _open_retry(dev)
                except OSError:
                    continue
                try:
                    fcntl.ioctl(fd, _LOOP_CONFIGURE, cfg)
                except OSError as e:
                    os.close(fd)
                    if e.errno == errno.EBUSY:  # another process took it first
                        continue
                    raise
                self.fd, self.path = fd, dev
                return
            raise RuntimeError("no free loop device")
        finally:
            os.close(ctl)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def attached(self) -> bool:
        """Whether the device is still attached to our image."""
        try:
            with open(f"/sys/block/{self.name}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            return False
        return backing.removesuffix(" (deleted)") == self.image

    def set_max_request(self, nbytes: int) -> None:
        """Caps the size of the requests the loop sends to its file (queue/max_sectors_kb)."""
        with open(f"/sys/block/{self.name}/queue/max_sectors_kb", "w") as f:
            f.write(str(nbytes // 1024))

    def max_request(self) -> int:
        with open(f"/sys/block/{self.name}/queue/max_sectors_kb") as f:
            return int(f.read()) * 1024

    def detach(self, timeout: float = 10) -> None:
        """Detaches the device once nothing else holds it; waits (timeout) for that."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            fcntl.ioctl(fd, _LOOP_CLR_FD)  # if still mounted it just marks autoclear
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.EBUSY):
                os.close(fd)
                raise
        os.close(fd)
        deadline = time.monotonic() + timeout
        while self.attached():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path} still attached to {self.image}")
            time.sleep(0.02)


def _open_retry(dev: str) -> int:
    for _ in range(50):
        try:
            return os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            time.sleep(0.01)  # the node appears once the kernel has created the device
    return os.open(dev, os.O_RDWR | os.O_CLOEXEC)


def attach_loop(cleanup: Cleanup, image: str, *, direct_io: bool = False) -> LoopDevice:
    with signals_deferred():
        loop = LoopDevice(image, direct_io=direct_io)
        cleanup.push(f"detach {loop.path}", loop.detach)
    return loop


# ---------------------------------------------------------------------------------------
# faultyfs


class FaultyFs:
    """A running faultyfs: `mnt` passes through `backing`. Control it with fail()/clear()
    or by writing lines to `<mnt>/.faultyfs` (see faultyfs.cc)."""

    def __init__(self, binary: str, backing: str, mnt: str, log: str,
                 options: list[str] | None = None):
        self.binary, self.options = binary, options or []
        self.mnt, self.backing, self.log = mnt, backing, log
        self.control = os.path.join(mnt, ".faultyfs")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Starts the daemon (in a session of its own, so that a signal to the test's
        process group does not unmount it under the loop device) and waits for the
        mount. faultyfs gets SIGTERM if this process dies."""
        with open(self.log, "wb") as logf, signals_deferred():
            self.proc = subprocess.Popen(
                [self.binary, "-f", *self.options, self.backing, self.mnt],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent())
        mnt = self.mnt
        deadline = time.monotonic() + 10
        while not is_mountpoint(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"faultyfs did not mount {mnt}: {self.log_text()}")
            time.sleep(0.01)

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read().strip()

    def command(self, line: str) -> None:
        with fd_open(self.control, os.O_WRONLY) as fd:
            os.write(fd, (line + "\n").encode())

    def fail(self, path: str, start: int, length: int, err: str = "EIO") -> None:
        self.command(f"fail {path} {start} {length} {err}")

    def clear(self, path: str = "") -> None:
        self.command(f"clear {path}".strip())

    def status(self) -> dict:
        """{"rules": [(path, start, len, errno, hits)], "writes", "failed", "max_write"}."""
        with open(self.control) as f:
            text = f.read()
        st: dict = {"rules": []}
        for line in text.splitlines():
            w = line.split()
            if w and w[0] == "rule":
                st["rules"].append((w[1], int(w[2]), int(w[3]), w[4], int(w[5].split("=")[1])))
            else:
                st.update({k: int(v) for k, v in (x.split("=") for x in w)})
        return st

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            return
        try:
            if is_mountpoint(self.mnt):
                umount(self.mnt, timeout=timeout)
            elif self.proc.poll() is None:
                # Stopped while starting: not mounted yet, so an unmount cannot end it.
                self.proc.terminate()
        finally:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                raise RuntimeError("faultyfs did not exit after unmount; killed")
        if is_mountpoint(self.mnt):  # it mounted after all, and died before unmounting
            umount(self.mnt, timeout=timeout)


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for Popen: the child gets SIGTERM when this process dies, even by
    SIGKILL (PR_SET_PDEATHSIG, kept across exec), and does not inherit the signals
    that signals_deferred() holds back."""
    parent = os.getpid()

    def preexec() -> None:
        _unblock_signals()
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


def start_faultyfs(cleanup: Cleanup, binary: str, backing: str, mnt: str,
                   options: list[str] | None = None) -> FaultyFs:
    fs = FaultyFs(binary, backing, mnt, mnt.rstrip("/") + ".log", options)
    cleanup.push(f"stop faultyfs on {mnt}", fs.stop)
    fs.start()
    return fs


# ---------------------------------------------------------------------------------------
# The two rigs

MKFS_EXT4 = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0",
             "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"]

_EXT4_IOC_CHECKPOINT = 0x4004662B  # _IOW('f', 43, __u32)


class Ext4OnLoop:
    """ext4 on a loop device; `mnt` is where it is mounted."""

    def __init__(self, cleanup: Cleanup, image: str, mnt: str, mount_options: str,
                 max_request: int | None = None):
        self.image, self.mnt = image, mnt
        self.loop = attach_loop(cleanup, image)
        if max_request is not None and self.loop.max_request() > max_request:
            self.loop.set_max_request(max_request)
        run(MKFS_EXT4 + [self.loop.path])
        mount(cleanup, self.loop.path, mnt, "ext4", mount_options)

    def path(self, name: str) -> str:
        return os.path.join(self.mnt, name)

    def preallocate(self, name: str, size: int) -> str:
        """Creates file `name` with `size` bytes allocated but never written (fallocate:
        unwritten extents) and makes its metadata durable. Returns its path."""
        path = self.path(name)
        with fd_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644) as fd:
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        self.settle()
        return path

    def settle(self) -> None:
        """Puts every dirty page and all metadata in its final place on the device:
        writes back each regular file (as writeback() does) and checkpoints the journal
        (EXT4_IOC_CHECKPOINT). Unlike syncfs it neither reports nor marks seen any
        writeback error. (Not a freeze and thaw: a signal or SIGKILL between the two
        would leave a frozen filesystem that outlives its mount and its loop device.)"""
        for path in list(_regular_files(self.mnt)):
            with contextlib.suppress(FileNotFoundError):  # removed since the listing
                with fd_open(path, os.O_RDONLY | os.O_NOFOLLOW) as fd:
                    writeback(fd)
        with fd_open(self.mnt, os.O_RDONLY | os.O_DIRECTORY) as fd:
            fcntl.ioctl(fd, _EXT4_IOC_CHECKPOINT, struct.pack("I", 0))

    def extents(self, path: str) -> list[tuple[int, int]]:
        """The (start, length) byte ranges of the image that hold path's data."""
        return [(ph, ln) for _, ph, ln, _ in fiemap(path)]

    def read_only(self) -> bool:
        for m in mountinfo():
            if m["mountpoint"] == os.path.realpath(self.mnt):
                return "ro" in m["options"].split(",") + m["super_options"].split(",")
        raise RuntimeError(f"{self.mnt} is not mounted")


def _regular_files(top: str) -> Iterator[str]:
    with os.scandir(top) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                yield from _regular_files(e.path)
            elif e.is_file(follow_symlinks=False):
                yield e.path


class EnospcUpper(Ext4OnLoop):
    """SPEC §4 way 1. See enospc_upper()."""

    def __init__(self, cleanup: Cleanup, tmpdir: str, tmpfs_size: str, image_size: int,
                 mount_options: str):
        self.tmpfs = os.path.join(tmpdir, "tmpfs")
        os.mkdir(self.tmpfs)
        mnt = os.path.join(tmpdir, "ext4")
        os.mkdir(mnt)
        mount(cleanup, "tmpfs", self.tmpfs, "tmpfs", f"size={tmpfs_size},mode=0700")
        image = os.path.join(self.tmpfs, image_name(tmpdir))
        with open(image, "wb") as f:
            f.truncate(image_size)
        self.filler = os.path.join(self.tmpfs, "filler")
        super().__init__(cleanup, image, mnt, mount_options)

    def fill(self) -> int:
        """Settles the ext4 (so its metadata is in place), then fills the tmpfs to the
        last page. From now on, writeback of never-written blocks fails with ENOSPC.
        Returns the bytes the filler took."""
        self.settle()
        n = 0
        with fd_open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) as fd:
            for chunk in (1 << 20, 4096):
                block = bytes(chunk)
                while True:
                    try:
                        n += os.write(fd, block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        return n

    def free(self) -> None:
        """Gives the tmpfs space back: writes to the ext4 succeed again."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.filler)

    def tmpfs_free(self) -> int:
        st = os.statvfs(self.tmpfs)
        return st.f_bavail * st.f_frsize


def enospc_upper(cleanup: Cleanup, tmpdir: str, *, tmpfs_size: str = "64M",
                 image_size: int = 512 << 20, mount_options: str = "errors=continue"
                 ) -> EnospcUpper:
    """ext4 (mounted at .mnt) on a sparse image_size image on a tmpfs_size tmpfs. mkfs
    zeroes the journal and inode tables, so they take real tmpfs pages (about 25M for
    512M); data blocks are holes until written. preallocate() a victim, fill(), write
    it: write(2) succeeds, writeback fails with ENOSPC; free() ends it."""
    return EnospcUpper(cleanup, tmpdir, tmpfs_size, image_size, mount_options)


class EioUpper(Ext4OnLoop):
    """SPEC §4 way 2. See eio_upper()."""

    def __init__(self, cleanup: Cleanup, tmpdir: str, faultyfs: str, image_size: int,
                 mount_options: str):
        backing = os.path.join(tmpdir, "faulty-backing")
        fmnt = os.path.join(tmpdir, "faulty")
        mnt = os.path.join(tmpdir, "ext4")
        for d in (backing, fmnt, mnt):
            os.mkdir(d)
        # The image's real bytes live in a tmpfs of this namespace: nothing is left on
        # the host's disk even if the test is killed.
        mount(cleanup, "tmpfs", backing, "tmpfs", f"size={image_size + (64 << 20)},mode=0700")
        self.faulty = start_faultyfs(cleanup, faultyfs, backing, fmnt)
        image = os.path.join(fmnt, image_name(tmpdir))
        with open(image, "wb") as f:
            f.truncate(image_size)
        # A loop request that faultyfs got in pieces could fail only in part, and the
        # loop driver takes a short write for a success: keep every request in one
        # piece (half of max_write leaves room for a request that is not page-aligned).
        piece = min(self.faulty.status()["max_write"], 1 << 20) // 2 // 4096 * 4096
        super().__init__(cleanup, image, mnt, mount_options, max_request=piece)

    def arm(self, path: str, err: str = "EIO", offset: int = 0, length: int | None = None
            ) -> list[tuple[int, int]]:
        """From now on, writes to the image blocks that hold `path`'s data (bytes
        [offset, offset+length) of it; all by default) fail with err (a name or number).
        The blocks are those of now: preallocate (or write and sync) the victim first,
        and do not truncate it while armed. Returns the image byte ranges armed."""
        end = offset + length if length is not None else 2**63
        ranges = []
        for logical, physical, size, _ in fiemap(path):
            lo, hi = max(logical, offset), min(logical + size, end)
            if lo < hi:
                ranges.append((physical + lo - logical, hi - lo))
        if not ranges:
            raise RuntimeError(f"{path} has no blocks in [{offset}, {end})")
        for start, size in ranges:
            self.faulty.fail(self._image_in_faulty, start, size, err)
        return ranges

    def disarm(self) -> None:
        self.faulty.clear(self._image_in_faulty)

    @property
    def _image_in_faulty(self) -> str:
        return "/" + os.path.basename(self.image)

    def failed_writes(self) -> int:
        return self.faulty.status()["failed"]


def eio_upper(cleanup: Cleanup, tmpdir: str, *, faultyfs: str, image_size: int = 512 << 20,
              mount_options: str = "errors=continue") -> EioUpper:
    """ext4 (mounted at .mnt) on a loop device on a sparse image on faultyfs (binary
    path `faultyfs`). faultyfs serves the image with direct_io and no writeback cache,
    so every write the loop makes reaches it at once: arm(victim) makes the victim's
    writeback fail; disarm() ends it."""
    return EioUpper(cleanup, tmpdir, faultyfs, image_size, mount_options)


# ---------------------------------------------------------------------------------------
# Reporting


class Checks:
    """Collects named checks and prints a PASS/FAIL summary."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def expect(self, name: str, observed, expected) -> bool:
        ok = observed == expected
        detail = f"observed {observed!r}" + ("" if ok else f", expected {expected!r}")
        self.results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return ok

    def true(self, name: str, cond: bool, detail: str = "") -> bool:
        self.results.append((name, bool(cond), detail))
        print(f"{'PASS' if cond else 'FAIL'}  {name}{': ' + detail if detail else ''}",
              flush=True)
        return bool(cond)

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        """Runs a block; an exception in it is a FAIL of `name`, and the run goes on."""
        print(f"--- {name}", flush=True)
        try:
            yield
        except Exception:
            traceback.print_exc()
            self.true(f"{name}: ran to the end", False, "raised (traceback above)")

    def summary(self) -> int:
        failed = [r for r in self.results if not r[1]]
        print(f"\n{len(self.results) - len(failed)} passed, {len(failed)} failed", flush=True)
        for name, _, detail in failed:
            print(f"FAILED  {name}: {detail}")
        print("RESULT:", "PASS" if not failed and self.results else "FAIL", flush=True)
        return 0 if not failed and self.results else 1
