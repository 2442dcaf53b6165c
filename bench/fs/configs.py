"""The configurations a workload runs on, and the mounts that make them.

A configuration turns (lower layers, upper, work) into one directory tree to work in:
the plain directory is the tree itself, the others mount an overlay of the layers.
Every mount is made inside the benchmark's private mount namespace, under its temp
dir, and `Mounter.cleanup()` takes down whatever is left on any exit path.
"""

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Config:
    name: str       # as on the command line: plain, kernel, kernel-volatile, ...
    label: str      # as in tables
    kind: str       # plain | kernel | fuse-overlayfs | ovlfs
    volatile: bool
    na: str = ""    # when set, the whole configuration is skipped: "n/a: <na>"
    rootless: bool = False  # the FUSE daemon runs as ROOTLESS_UID (bench/fs/run --rootless)
    binary: str = ""        # an ovlfs program other than the run's (--baseline)

    @property
    def is_overlay(self):
        return self.kind != "plain"

    @property
    def is_fuse(self):
        return self.kind in ("fuse-overlayfs", "ovlfs")


ALL = [
    Config("plain", "plain directory", "plain", False),
    Config("kernel", "kernel overlayfs", "kernel", False),
    Config("kernel-volatile", "kernel overlayfs volatile", "kernel", True),
    Config("fuse-overlayfs", "fuse-overlayfs", "fuse-overlayfs", False),
    Config("ovlfs", "ovlfs", "ovlfs", False),
    Config("ovlfs-volatile", "ovlfs volatile", "ovlfs", True),
]
# With --rootless: ovlfs and fuse-overlayfs once more, each daemon run as a plain user
# (through fusermount3, as `ovlfs -o ... MNT` by a user mounts): no passthrough,
# metadata in user.overlay.*, the user's own writeback-error record. The workloads
# still run as root (allow_other, granted by a fuse.conf of the run's own).
ROOTLESS = [
    Config("fuse-overlayfs-rootless", "fuse-overlayfs rootless", "fuse-overlayfs", False,
           rootless=True),
    Config("ovlfs-rootless", "ovlfs rootless", "ovlfs", False, rootless=True),
    Config("ovlfs-rootless-volatile", "ovlfs rootless volatile", "ovlfs", True, rootless=True),
]
ROOTLESS_UID = 65534  # nobody
# With --baseline PROGRAM: ovlfs once more, as another build (e.g. the one before a
# change), in the same run, beside this one.
BASELINE = [
    Config("ovlfs-baseline", "ovlfs baseline", "ovlfs", False),
    Config("ovlfs-baseline-volatile", "ovlfs baseline volatile", "ovlfs", True),
]
NAMES = [c.name for c in ALL + ROOTLESS + BASELINE]


def chown_tree(path, uid):
    """Gives path and everything under it to uid (its group too)."""
    os.chown(path, uid, uid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, uid, follow_symlinks=False)


def enable_rootless(tmp):
    """In this (private) mount namespace only: a /dev/fuse the user may open (this
    kind of machine makes it 0600) and a fuse.conf with user_allow_other, so that
    fusermount3 lets the user's daemon serve root's workloads."""
    dev = f"{tmp}/fuse-dev"
    if not os.path.exists(dev):
        os.mknod(dev, 0o666 | 0o020000, os.makedev(10, 229))
    os.chmod(dev, 0o666)
    conf = f"{tmp}/fuse.conf"
    with open(conf, "w") as f:
        f.write("user_allow_other\n")
    for src, dst in ((dev, "/dev/fuse"), (conf, "/etc/fuse.conf")):
        r = subprocess.run(["mount", "--bind", src, dst], capture_output=True, text=True)
        if r.returncode != 0:
            raise MountError(f"mount --bind {src} {dst}: {r.stderr.strip()}")
    for d in (tmp, os.path.dirname(tmp)):  # the run's dir and its scratch fs
        os.chmod(d, 0o755)  # the user reaches the layers


class MountError(Exception):
    pass


def mounted_under(root):
    """Mount points at or below root in this namespace, in mount order."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return points


def is_mountpoint(path):
    return path in mounted_under(path)


class Mounter:
    """Makes and removes the overlay mounts; knows the FUSE daemons it started."""

    def __init__(self, root, ovlfs_path):
        self.root = root                      # every mount lives under this dir
        self.ovlfs = ovlfs_path
        self.daemons = {}                     # mountpoint -> [pid] of its FUSE daemon

    def mount(self, cfg, lowers, upper, work, mnt, track=True):
        """Mounts cfg's overlay of lowers (top first) at mnt; raises MountError.
        With track=False the caller finds the FUSE daemons later with track()."""
        opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        if cfg.volatile:
            opts += ",volatile"
        if cfg.kind == "kernel":
            cmd = ["mount", "-t", "overlay", "overlay", "-o", opts, mnt]
        elif cfg.kind == "fuse-overlayfs":
            # As a user it asks no allow_other by itself (ovlfs does, where fuse.conf
            # lets users): the workloads run as root.
            cmd = ["fuse-overlayfs", "-o", opts + (",allow_other" if cfg.rootless else ""), mnt]
        elif cfg.kind == "ovlfs":
            cmd = [cfg.binary or self.ovlfs, "-o", opts, mnt]
        else:
            raise ValueError(cfg.kind)
        os.makedirs(mnt, exist_ok=True)
        if cfg.rootless:
            for d in (upper, work, mnt):
                chown_tree(d, ROOTLESS_UID)
            cmd = ["setpriv", f"--reuid={ROOTLESS_UID}", f"--regid={ROOTLESS_UID}",
                   "--clear-groups", "--"] + cmd
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            self._forget(mnt)
            raise MountError(f"{cmd[0]} did not return within 120 s")
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise MountError(f"{' '.join(cmd[:1])} exit {r.returncode}: "
                             f"{msg[-1] if msg else 'no message'}")
        # The programs return once the mount is ready; allow a moment for one that
        # returns just before the kernel lists the mount.
        deadline = time.monotonic() + 10
        while not is_mountpoint(mnt):
            if time.monotonic() > deadline:
                self._forget(mnt)
                raise MountError(f"{cmd[0]} returned 0 but {mnt} is not mounted")
            time.sleep(0.01)
        if cfg.is_fuse:
            self.daemons[mnt] = daemon_pids([mnt])[mnt] if track else []

    def track(self, mnts):
        """Finds the FUSE daemons of many mounts in one pass over /proc."""
        found = daemon_pids(mnts)
        for mnt in mnts:
            if mnt in self.daemons:
                self.daemons[mnt] = found[mnt]

    def umount(self, mnt):
        """Unmounts mnt and waits for its FUSE daemon (if any) to exit."""
        if not umount(mnt) and is_mountpoint(mnt):
            umount(mnt, "-l")
        self._forget(mnt)

    def _forget(self, mnt):
        pids = self.daemons.pop(mnt, None)
        wait_exit(daemon_pids([mnt])[mnt] if pids is None else pids, 10)

    def cleanup(self):
        """Takes down every mount under root (deepest first) and every daemon left."""
        for point in reversed(mounted_under(self.root)):
            if not umount(point):
                umount(point, "-l")
        for mnt in list(self.daemons):
            self._forget(mnt)


def umount(point, *flags):
    """umount(8); True when it succeeded. A hung FUSE daemon cannot block it for long:
    the caller then detaches lazily and ends the daemon."""
    try:
        return subprocess.run(["umount", *flags, point], capture_output=True,
                              timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def daemon_pids(mnts):
    """{mountpoint: PIDs of the processes started with it as an argument}, that is,
    of its FUSE daemon."""
    wanted = {m.encode(): m for m in mnts}
    found = {m: [] for m in mnts}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        for a in args:
            if a in wanted:
                found[wanted[a]].append(int(entry))
    return found


def wait_exit(pids, seconds):
    """Waits for pids to exit; what is still running after `seconds` is killed."""
    deadline = time.monotonic() + seconds
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if sig is not None and alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not any(alive(p) for p in pids):
            return
        deadline = time.monotonic() + 2


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def ovlfs_help(path):
    """`ovlfs --help` output (stdout and stderr), or "" when it cannot run."""
    try:
        r = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout + r.stderr


def has_sync_command(help_text):
    """Whether `ovlfs --help` lists a `sync` command (`ovlfs sync MNT`)."""
    return bool(re.search(r"^\s*(ovlfs\s+)?sync\b", help_text, re.M) or
                re.search(r"\bsync\s+\[?<?(MNT|MOUNT|DIR|PATH)", help_text, re.I))
