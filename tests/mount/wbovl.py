"""wbovl: ovlfs mounts for the writeback-error tests (on top of wblib). Stdlib only.

    m = wbovl.mount(cleanup, ovlfs, mnt, lower, upper, work, volatile=True)
    m.status()                 # `ovlfs status --json`, parsed
    wbovl.syncfs_ioctl(path)   # OVLFS_IOC_SYNCFS through a new fd: "0", "EIO", ...
    m.unmount()                # umount, then wait until the daemon has exited

Every mount is unmounted at cleanup, and its daemon waited for (killed if it does not
exit), so that its volatile record is final before anything looks at the workdir.
The daemons run in the foreground (-f) as children that get SIGTERM when the test dies
(PR_SET_PDEATHSIG), so even a SIGKILLed test leaves no daemon (and so no mount
namespace, mount or loop device) behind. The shared error record of the upper
(/dev/shm/ovlfs-wb-*) is removed at cleanup too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402

# include/ovlfs/ioctl.h
OVLFS_IOC_SYNCFS = 0xB901  # _IO(0xB9, 1)
SEEN = 1 << 12             # errseq's SEEN bit (SPEC 1.1)


def errno_of(fn, *args) -> str:
    return wblib.errno_of(fn, *args)


def syncfs_ioctl_fd(fd: int) -> str:
    """OVLFS_IOC_SYNCFS on fd: "0" or the errno's name."""
    return errno_of(fcntl.ioctl, fd, OVLFS_IOC_SYNCFS)


def syncfs_ioctl(path: str) -> str:
    """OVLFS_IOC_SYNCFS through a new fd of path (a file or directory of a mount)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return syncfs_ioctl_fd(fd)
    finally:
        os.close(fd)


def wait_for(what: str, pred, timeout: float = 20, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Mount:
    """One ovlfs mount and its daemon (a child of this process, in the foreground)."""

    def __init__(self, ovlfs: str, mnt: str, opts: str):
        self.ovlfs, self.mnt, self.opts = ovlfs, mnt, opts
        self.pid = 0
        self.proc: subprocess.Popen | None = None
        self.log = mnt.rstrip("/") + ".ovlfs.log"

    def start(self, timeout: float = 30) -> tuple[int, str]:
        """Starts the daemon; returns (0, "") once mounted, or (exit status, message)."""
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [self.ovlfs, "-f", "-o", self.opts, self.mnt], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent())
        deadline = time.monotonic() + timeout
        while not self.mounted():
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                return rc, self.log_text()
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                return -1, "timed out mounting: " + self.log_text()
            time.sleep(0.005)
        self.pid = self.proc.pid
        return 0, ""

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read().strip()

    def status(self) -> dict:
        p = wblib.run([self.ovlfs, "status", self.mnt, "--json"])
        return json.loads(p.stdout)

    def sync_cli(self) -> tuple[int, str]:
        """`ovlfs sync MNT`: (exit status, what it printed on stdout)."""
        p = wblib.run([self.ovlfs, "sync", self.mnt], check=False)
        return p.returncode, p.stdout.strip()

    def mounted(self) -> bool:
        return wblib.is_mountpoint(self.mnt)

    def unmount(self, timeout: float = 20) -> None:
        """Unmounts and waits until the daemon has written its record and exited."""
        if self.mounted():
            wblib.umount(self.mnt, timeout=timeout)
        self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 20) -> int:
        """Waits for the daemon to exit (killing it after timeout); its exit status."""
        if not self.proc:
            return 0
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"ovlfs {self.pid} ({self.mnt}) did not exit; killed")
        finally:
            self.proc = None
            self.pid = 0
        return rc

    def kill(self) -> None:
        """SIGKILL the daemon (the mount stays, dead, until unmounted)."""
        os.kill(self.pid, signal.SIGKILL)
        self.wait_exit()


def options(lower: str, upper: str, work: str, *, volatile: bool = False,
            interval_ms: int | None = None, errors: str | None = None, extra: str = "") -> str:
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if volatile:
        opts += ",volatile"
    if interval_ms is not None:
        opts += f",writeback_interval={interval_ms}"
    if errors:
        opts += f",errors={errors}"
    if extra:
        opts += "," + extra
    return opts


_shm_registered: set[str] = set()


def forget_shm_at_cleanup(cleanup: wblib.Cleanup, shm_path: str) -> None:
    """Removes the upper's shared record at cleanup (once per record)."""
    if not shm_path or shm_path in _shm_registered:
        return
    _shm_registered.add(shm_path)

    def remove() -> None:
        _shm_registered.discard(shm_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shm_path)
    cleanup.push(f"remove {shm_path}", remove)


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """A preexec_fn: the child gets SIGTERM when this process dies, even by SIGKILL."""
    parent = os.getpid()

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK,
                               {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


def try_mount(cleanup: wblib.Cleanup, ovlfs: str, mnt: str, opts: str, shm: bool = True
              ) -> tuple[Mount | None, int, str]:
    """Mounts; (the mount, 0, "") or (None, exit status, ovlfs's message). `shm`: remove
    the upper's shared record at cleanup (once per upper is enough)."""
    m = Mount(ovlfs, mnt, opts)
    os.makedirs(mnt, exist_ok=True)
    cleanup.push(f"unmount ovlfs {mnt}", m.unmount)
    rc, msg = m.start()
    if rc != 0:
        return None, rc, msg
    if shm:
        forget_shm_at_cleanup(cleanup, m.status()["upper"]["shm"])
    return m, 0, ""


def mount(cleanup: wblib.Cleanup, ovlfs: str, mnt: str, lower: str, upper: str, work: str,
          shm: bool = True, **kw) -> Mount:
    """Mounts ovlfs (raising with its message on failure); undone at cleanup."""
    opts = options(lower, upper, work, **kw)
    m, rc, msg = try_mount(cleanup, ovlfs, mnt, opts, shm)
    if m is None:
        raise wblib.CommandError([ovlfs, "-f", "-o", opts, mnt], rc, msg)
    return m


class Fds:
    """Open fds of a test, closed at cleanup (before the unmounts registered earlier)."""

    def __init__(self, cleanup: wblib.Cleanup) -> None:
        self.fds: list[int] = []
        cleanup.push("close the test's fds", self.close_all)

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def close_all(self) -> list[str]:
        """Closes every fd; returns close(2)'s answers ("0" or an errno name)."""
        out = [errno_of(os.close, fd) for fd in self.fds]
        self.fds.clear()
        return out


def open_fd(path: str, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_CLOEXEC)


def seen(status: dict) -> bool:
    """Whether the upper's latest error has been reported to some watcher."""
    return bool(int(status["upper"]["errseq"], 16) & SEEN)


def errno_name(e: int) -> str:
    return "0" if e == 0 else errno.errorcode.get(e, str(e))
