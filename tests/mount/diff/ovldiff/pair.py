"""Two sides built from one layer set: the kernel's overlayfs and the
implementation under test, each on its own identical copy of the layers.

Side "k" is always mounted by the kernel and side "i" by the implementation.
swap() unmounts both and remounts each copy (its lowers, upper and work) with
the other implementation: afterwards "k" is the kernel on the copy the
implementation wrote, "i" the implementation on the copy the kernel wrote.
"""
import os
import shutil

from . import layers, mounts, ops, snapshot

OP_TIMEOUT = 60
# Invariant violations seen on the kernel side (not failures; printed with -v).
KERNEL_QUIRKS = set()
SNAPSHOT_TIMEOUT = 120


class Side:
    def __init__(self, label, mounter, dirs):
        self.label = label
        self.mounter = mounter
        self.dirs = dirs
        self.mount = None

    def do_mount(self, mode):
        self.mount = self.mounter.mount(self.dirs, mode, self.label)

    def do_umount(self):
        if self.mount:
            self.mount.umount()
            self.mount = None

    @property
    def mnt(self):
        return self.dirs.mnt


class Pair:
    def __init__(self, tmpdir, layerset, impl, mode, impl_label=None, ignore=()):
        self.tmpdir = tmpdir
        self.ignore = set(ignore)
        self.mode = mode
        self.impl = impl
        self.impl_label = impl_label or (impl.name if impl.name != "kernel" else "kernel#2")
        self.k = Side("kernel", mounts.KernelMounter(),
                      layers.materialize(layerset, os.path.join(tmpdir, "k")))
        self.i = Side(self.impl_label, impl,
                      layers.materialize(layerset, os.path.join(tmpdir, "i")))
        self.swapped = False
        self.uppers_before_swap = None
        if mounts.ROOTLESS:  # see snapshot.KERNEL_UPPERS
            snapshot.KERNEL_UPPERS.clear()
            snapshot.KERNEL_UPPERS.update({
                "kernel": self.k.dirs.upper, "kernel before the swap": self.k.dirs.upper,
                f"kernel-on-{self.impl_label}-upper": self.i.dirs.upper})

    def mount(self):
        self.k.do_mount(self.mode)
        self.i.do_mount(self.mode)

    def umount(self):
        self.i.do_umount()
        self.k.do_umount()

    def apply(self, op, worker=None):
        """Applies op to both mounts (as root, or through worker); returns both results."""
        results = []
        for side in (self.k, self.i):
            wd = mounts.WATCHDOG
            if wd:
                wd.arm(f"{side.label}: {ops.describe(op)}", OP_TIMEOUT)
            try:
                if worker:
                    results.append(worker.apply(side.mnt, op))
                else:
                    results.append(ops.apply(side.mnt, op))
            finally:
                if wd:
                    wd.disarm()
        if mounts.ROOTLESS and self._kernel_rename_estale(op, results):
            results[0] = results[1]
        return tuple(results)

    def _kernel_rename_estale(self, op, results):
        """--rootless: a rename onto another name of the same file (a no-op, as the
        implementation and the kernel as root answer) fails with ESTALE in the kernel's
        overlayfs when the two names have two overlay inodes, which it makes when it has
        no origin file handle to tie a copied-up file to (snapshot.KERNEL_UPPERS).
        Accepted, and counted, when the kernel's own upper holds both names as one
        inode."""
        if op.get("op") != "rename" or op.get("flags", "") not in ("", None) or \
                results[0] != "ESTALE" or results[1] != "ok":
            return False
        upper = snapshot.KERNEL_UPPERS.get(self.k.label)
        try:
            same = upper is not None and os.lstat(os.path.join(upper, op["path"])).st_ino == \
                os.lstat(os.path.join(upper, op["dst"])).st_ino
        except OSError:
            return False
        if same:
            snapshot.LINK_QUIRKS.add(f"rename {op['path']!r} onto {op['dst']!r}, one file: "
                                     f"ESTALE in {self.k.label}")
        return same

    def each(self, fn, timeout=OP_TIMEOUT):
        """Runs fn(mountpoint) on both sides; returns both values."""
        out = []
        for side in (self.k, self.i):
            wd = mounts.WATCHDOG
            if wd:
                wd.arm(f"{side.label}: {getattr(fn, '__name__', 'check')}", timeout)
            try:
                out.append(fn(side.mnt))
            finally:
                if wd:
                    wd.disarm()
        return tuple(out)

    def snapshots(self):
        return self._snap(self.k), self._snap(self.i)

    def _snap(self, side):
        wd = mounts.WATCHDOG
        if wd:
            wd.arm(f"{side.label}: snapshot of the tree", SNAPSHOT_TIMEOUT)
        try:
            return snapshot.take(side.mnt, side.label)
        finally:
            if wd:
                wd.disarm()

    def compare(self, snaps=None):
        """Differences between the two visible trees, with each mount's own
        invariant violations. Returns (lines, (snap_k, snap_i))."""
        sk, si = snaps or self.snapshots()
        lines = self.rdonly_differences() + snapshot.compare(sk, si, ignore=self.ignore)
        if "invariants" not in self.ignore:
            own = snapshot.problems_vs_kernel(sk, si)
            lines += [f"[{si.label} invariant] {p}" for p in own[:20]]
            for p in sk.problems:
                KERNEL_QUIRKS.add(f"{p.kind}: {p.text}")
        return lines, (sk, si)

    def rdonly_differences(self):
        """A mount that came up read-only on one side only (the kernel does
        that when it cannot clean workdir/work, e.g. nested dirs left there)."""
        ro = self.each(lambda m: bool(os.statvfs(m).f_flag & os.ST_RDONLY))
        if ro[0] == ro[1]:
            return []
        side = self.k if ro[0] else self.i
        return [f"{side.label} is mounted read-only, the other side read-write"
                + (" (the kernel's log says why: dmesg | grep overlayfs)"
                   if side is self.k else "")]

    def swap(self):
        self.umount()
        # (kernel's upper, implementation's upper) as written, for hints.
        self.uppers_before_swap = (snapshot.upper_xattrs(self.k.dirs.upper),
                                   snapshot.upper_xattrs(self.i.dirs.upper))
        ki, ik = self.k.dirs, self.i.dirs
        self.k = Side(f"kernel-on-{self.impl_label}-upper", mounts.KernelMounter(), ik)
        self.i = Side(f"{self.impl_label}-on-kernel-upper", self.impl, ki)
        self.swapped = True
        self.mount()

    def close(self, keep=False):
        self.umount()
        left = mounts.mounts_under(self.tmpdir)
        if left:
            raise RuntimeError(f"still mounted, not removing {self.tmpdir}: {left}")
        if not keep:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self.tmpdir in mounts.REGISTRY.tmpdirs:
            mounts.REGISTRY.tmpdirs.remove(self.tmpdir)
