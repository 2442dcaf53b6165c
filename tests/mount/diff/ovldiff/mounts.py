"""Mounting both sides, and unmounting everything on every exit path.

Kernel side: mount(2) of type "overlay". Implementation side: the program
under test run as `IMPL -o lowerdir=..,upperdir=..,workdir=..[,extra] MNT`,
which must return once the mount is ready (or "kernel": overlayfs again).

Every mount goes into REGISTRY; cleanup() unmounts in reverse order and is
called from finally blocks and from the SIGTERM path. The Watchdog thread turns
a hung FUSE request into a reported failure: it prints the serving daemon's
thread backtraces (gdb, when installed), then aborts the FUSE connections of
the implementation's mounts (fusectl), which makes the stuck system call return
ENOTCONN, so the harness reports the operation and cleans up. A daemon that
outlives its umount by 10 s gets its backtraces printed too, and is killed.
"""
import ctypes
import ctypes.util
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2
FUSECTL = "/sys/fs/fuse/connections"

KERNEL_FIXED_OPTS = "index=off,metacopy=off,xino=off"
# --rootless (set_rootless()): the harness runs as root of a user namespace of a normal
# user. The kernel's overlayfs can be mounted there only with userxattr (its metadata
# in user.overlay.*), which forces redirect_dir=nofollow: it neither makes nor follows
# redirects, since anyone may set user.* xattrs on their own files (Linux commit
# 2d2f2d7322ff, "ovl: user xattr"); redirect_dir=on or off with userxattr is EINVAL.
# The implementation gets the mode's redirect_dir and no userxattr: it must find out
# by itself that trusted.* cannot be written, as it does under container engines.
ROOTLESS = False
KERNEL_ROOTLESS_OPTS = "userxattr,redirect_dir=nofollow"
REDIRECT = {"redirect_on": "on", "redirect_off": "off", "nofollow": "nofollow"}


def set_rootless():
    global ROOTLESS
    ROOTLESS = True
    from . import layers, snapshot
    layers.set_rootless()
    snapshot.OVL_PREFIX = "user.overlay."
    snapshot.ROOTLESS = True


def rootless_description():
    with open("/proc/self/uid_map") as f:
        umap = " | ".join(" ".join(line.split()) for line in f)
    return (f"uid {os.getuid()} in a user namespace (uid_map {umap}); the kernel side is "
            f"mounted with {KERNEL_ROOTLESS_OPTS}")


class MountError(Exception):
    pass


def mount_table():
    """[(mountpoint, fstype, 'major:minor')] of this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mp = parts[4].encode().decode("unicode_escape")
            out.append((mp, parts[sep + 1], parts[2]))
    return out


def is_mounted(path):
    path = os.path.realpath(path)
    return any(mp == path for mp, _, _ in mount_table())


def mounts_under(base):
    base = os.path.realpath(base)
    return [mp for mp, _, _ in mount_table() if mp == base or mp.startswith(base + "/")]


def _opts(dirs, mode):
    return (f"lowerdir={':'.join(dirs.lowers)},upperdir={dirs.upper},"
            f"workdir={dirs.work},redirect_dir={REDIRECT[mode]}")


class Mount:
    def __init__(self, mnt, kind, label):
        self.mnt = mnt
        self.kind = kind  # "kernel" or "fuse"
        self.label = label
        self.devid = next((d for mp, _, d in mount_table() if mp == os.path.realpath(mnt)), None)

    def umount(self):
        if self not in REGISTRY.mounts:
            return
        _umount(self.mnt)
        REGISTRY.mounts.remove(self)
        if self.kind == "fuse":
            reap_children(10.0)


def _umount(mnt):
    for attempt in range(50):
        if libc.umount2(mnt.encode(), 0) == 0:
            return
        err = ctypes.get_errno()
        if err in (22, 2):  # EINVAL/ENOENT: not mounted
            return
        if err != 16:  # EBUSY
            break
        time.sleep(0.05)
    libc.umount2(mnt.encode(), MNT_DETACH)


KEEP_CHILDREN = set()  # pids of our own long-lived children (workers)
LINGERED = []  # daemons killed because they did not exit after their umount


def _child_pids():
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out.append(int(d))
    return out


def reap_children(timeout):
    """Waits for exited daemons. Inside our pid namespace the harness is pid 1
    and a daemonized FUSE server becomes its child; it exits after umount."""
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for pid in _child_pids():
            if pid in KEEP_CHILDREN:
                continue
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done == 0:
                pending.append(pid)
        if not pending:
            return True
        if time.monotonic() > deadline:
            # Shown with where each thread waits, then killed: a daemon that outlives
            # its mount would otherwise cost this wait again after every later umount.
            print(f"warning: processes {pending} still running {timeout} s after umount; "
                  f"killed. Threads: {_threads(pending)}", flush=True)
            for pid in pending:
                print_stacks(pid, "still running after its umount")
            LINGERED.extend(pending)
            for pid in pending:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            return False
        time.sleep(0.005)


def _threads(pids):
    """`comm:wchan` of every thread of pids (where each one waits)."""
    out = []
    for pid in pids:
        try:
            for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
                t = f"/proc/{pid}/task/{tid}"
                with open(f"{t}/comm") as c, open(f"{t}/wchan") as w:
                    out.append(f"{pid}/{tid} {c.read().strip()}:{w.read().strip() or '-'}")
        except OSError:
            continue
    return ", ".join(out)


class Registry:
    """Every mount and temp dir of this run, for cleanup on any exit path."""

    def __init__(self):
        self.mounts = []
        self.tmpdirs = []

    def remove_tmpdirs(self, keep=False):
        """Removes the registered temp dirs that have nothing mounted below."""
        for d in list(self.tmpdirs):
            if mounts_under(d):
                print(f"warning: not removing {d}: still mounted", flush=True)
                continue
            if not keep:
                shutil.rmtree(d, ignore_errors=True)
            self.tmpdirs.remove(d)

    def cleanup(self):
        for m in reversed(list(self.mounts)):
            try:
                _umount(m.mnt)
            except Exception:
                pass
        had_fuse = any(m.kind == "fuse" for m in self.mounts)
        self.mounts.clear()
        if had_fuse:
            reap_children(5.0)


REGISTRY = Registry()


class KernelMounter:
    name = "kernel"

    def mount(self, dirs, mode, label="kernel"):
        opts = f"{_opts(dirs, mode)},{KERNEL_FIXED_OPTS}"
        if ROOTLESS:  # its only mode there, whatever the implementation's
            opts = f"{_opts(dirs, 'nofollow')},userxattr,{KERNEL_FIXED_OPTS}"
        if libc.mount(b"overlay", dirs.mnt.encode(), b"overlay", 0, opts.encode()) != 0:
            err = ctypes.get_errno()
            raise MountError(f"{label}: mount -t overlay -o {opts} {dirs.mnt}: "
                             f"{os.strerror(err)}")
        m = Mount(dirs.mnt, "kernel", label)
        REGISTRY.mounts.append(m)
        return m


class ProgramMounter:
    """Runs the implementation under test; it must return once mounted."""

    def __init__(self, program, extra_opts, drop_opts=()):
        self.program = program
        self.extra_opts = extra_opts
        self.drop_opts = drop_opts
        self.name = os.path.basename(program)

    def command(self, dirs, mode):
        opts = _opts(dirs, mode)
        if self.drop_opts:
            opts = ",".join(o for o in opts.split(",")
                            if o.split("=")[0] not in self.drop_opts)
        if self.extra_opts:
            opts += "," + self.extra_opts
        return [self.program, "-o", opts, dirs.mnt]

    def mount(self, dirs, mode, label="impl"):
        cmd = self.command(dirs, mode)
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=60)
        except subprocess.TimeoutExpired:
            _umount(dirs.mnt)
            raise MountError(f"{label}: {' '.join(cmd)} did not return within 60 s")
        if p.returncode != 0 or not is_mounted(dirs.mnt):
            _umount(dirs.mnt)
            raise MountError(f"{label}: {' '.join(cmd)} exited {p.returncode}"
                             f" (mounted: {is_mounted(dirs.mnt)}): {p.stderr.strip()[:2000]}")
        m = Mount(dirs.mnt, "fuse", label)
        REGISTRY.mounts.append(m)
        return m


def make_impl(spec, extra_opts):
    """--impl kernel | fuse-overlayfs | /path/to/program."""
    if spec == "kernel":
        return KernelMounter()
    if spec == "fuse-overlayfs":
        path = shutil.which("fuse-overlayfs")
        if not path:
            raise MountError("fuse-overlayfs is not installed")
        # fuse-overlayfs knows no redirect_dir option.
        return ProgramMounter(path, extra_opts, drop_opts=("redirect_dir",))
    if not (os.path.isfile(spec) and os.access(spec, os.X_OK)):
        raise MountError(f"--impl {spec}: not an executable file")
    return ProgramMounter(os.path.abspath(spec), extra_opts)


def private_tmpfs(parent):
    """A tmpfs on a new temp dir, in this mount namespace only; unmounted last
    by REGISTRY.cleanup(), and the dir removed by remove_tmpdirs()."""
    base = tempfile.mkdtemp(prefix="ovlfs-diff-tmpfs-", dir=parent)
    REGISTRY.tmpdirs.append(base)
    if libc.mount(b"tmpfs", base.encode(), b"tmpfs", 0, b"mode=0755,size=4g") != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount -t tmpfs {base}: {os.strerror(err)}")
    REGISTRY.mounts.insert(0, Mount(base, "tmpfs", "tmpfs"))
    return base


def ensure_fusectl():
    if os.path.isdir(FUSECTL) and not is_mounted(FUSECTL):
        libc.mount(b"fusectl", FUSECTL.encode(), b"fusectl", 0, None)


def abort_fuse_mounts():
    for m in list(REGISTRY.mounts):
        if m.kind == "fuse" and m.devid:
            minor = m.devid.split(":")[1]
            try:
                with open(f"{FUSECTL}/{minor}/abort", "w") as f:
                    f.write("1")
            except OSError:
                # No fusectl in a user namespace: a daemon that dies ends its
                # connection the same way (the stuck call returns ENOTCONN).
                for pid in _daemons_of([m.mnt]):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _daemons_of(mnts):
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(mnt in argv for mnt in mnts):
            out.append(int(pid))
    return out


def print_daemon_stacks():
    """The thread backtraces of the daemons serving the implementation's mounts:
    where a hung request waits."""
    fuse = [m.mnt for m in REGISTRY.mounts if m.kind == "fuse"]
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if pid.isdigit() and int(pid) != os.getpid() and any(mnt in argv for mnt in fuse):
            print_stacks(int(pid), "serving a hung request")


def print_stacks(pid, why):
    """gdb's backtrace of every thread of pid, without arguments (nothing without gdb)."""
    gdb = shutil.which("gdb")
    if not gdb:
        return
    try:
        p = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex",
                            "set print frame-arguments none", "-ex", "thread apply all bt"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return
    frames = [ln for ln in p.stdout.splitlines() if ln.startswith(("Thread ", "#"))]
    print(f"pid {pid} ({why}), thread backtraces:\n  " + "\n  ".join(frames), flush=True)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that finally blocks run."""


class Watchdog:
    """A thread that fails a stuck operation instead of hanging forever.

    arm(label, seconds) before a call into a mount, disarm() after. On expiry,
    or on SIGTERM, the FUSE connections of the implementation are aborted.
    """

    def __init__(self):
        self.label = None
        self.deadline = None
        self.expired = []
        self.lock = threading.Lock()
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.wfd, False)
        signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        t = threading.Thread(target=self._run, name="watchdog", daemon=True)
        t.start()

    @staticmethod
    def _on_term(signum, frame):
        # One-shot, so that a second signal cannot cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    def arm(self, label, seconds):
        with self.lock:
            self.label, self.deadline = label, time.monotonic() + seconds

    def disarm(self):
        with self.lock:
            self.label = self.deadline = None

    def _run(self):
        while True:
            r, _, _ = select.select([self.rfd], [], [], 0.5)
            if r:
                data = os.read(self.rfd, 64)
                if signal.SIGTERM in data:
                    abort_fuse_mounts()
            with self.lock:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.expired.append(self.label)
                    print(f"WATCHDOG: '{self.label}' did not complete in time;"
                          " aborting the implementation's FUSE connections", flush=True)
                    self.deadline = None
                    print_daemon_stacks()
                    abort_fuse_mounts()


WATCHDOG = None


def hung_lines(timeout, consequence=""):
    """The operations the watchdog found stuck since the last call, as failure
    lines (then forgotten)."""
    if not WATCHDOG or not WATCHDOG.expired:
        return []
    lines = [f"hung: {x} (no answer in {timeout} s; the implementation's FUSE connection "
             f"was aborted{consequence})" for x in WATCHDOG.expired]
    WATCHDOG.expired.clear()
    return lines


def start_watchdog():
    global WATCHDOG
    if WATCHDOG is None:
        WATCHDOG = Watchdog()
    return WATCHDOG
