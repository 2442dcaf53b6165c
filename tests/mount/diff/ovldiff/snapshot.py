"""The visible tree of a mount, invariants within one mount, and comparison.

A Snapshot maps each relative path ("" is the root) to an Entry of what a
client sees: type, mode, owner, size, content hash, symlink target, rdev,
xattrs, nlink and mtime. Raw inode numbers are never compared across mounts;
instead, paths are grouped by st_ino and the groups (which names share an
inode) are compared. mtimes below layers.SYNTH_LIMIT_NS were kept from a
layer or set by utimes and are compared exactly; later ones only as "recent".

Invariants checked inside one mount (reported as "problems"): st_ino from
lstat equals d_ino from readdir, one st_dev for the whole mount, readdir
never returns a name twice, d_type matches lstat, distinct dirs have distinct
inode numbers. The overlay's own xattrs are not an invariant here: since
Linux 6.7 a client may set trusted.overlay.X (stored escaped, as
trusted.overlay.overlay.X) and then sees it; a leaked private xattr shows up
as an xattr difference against the kernel instead.
"""
import os
import stat
from dataclasses import dataclass, field
from typing import NamedTuple

from .layers import SYNTH_LIMIT_NS
from .ops import digest, kind_of



class Problem(NamedTuple):
    """An invariant violated inside one mount: where, what kind, and the message."""
    path: str
    kind: str
    text: str

    def __str__(self):
        return self.text


@dataclass
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int = None
    content: str = None
    target: str = None
    rdev: tuple = None
    xattrs: dict = field(default_factory=dict)
    mtime: object = None
    ino: int = 0

    def fields(self):
        return {"kind": self.kind, "mode": f"{self.mode:o}", "uid": self.uid,
                "gid": self.gid, "nlink": self.nlink, "size": self.size,
                "content": self.content, "target": self.target, "rdev": self.rdev,
                "xattrs": self.xattrs, "mtime": self.mtime}


@dataclass
class Snapshot:
    label: str
    entries: dict
    problems: list

    def groups(self):
        """Paths that share an inode, as a set of sorted tuples of size >= 2."""
        by_ino = {}
        for path, e in self.entries.items():
            by_ino.setdefault(e.ino, []).append(path)
        return {tuple(sorted(v)) for v in by_ino.values() if len(v) > 1}


def _mtime_class(ns):
    return ns if ns < SYNTH_LIMIT_NS else "recent"


def _xattrs(path, problems, rel):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return {"<listxattr>": os.strerror(e.errno)}
    for name in sorted(names):
        try:
            v = os.getxattr(path, name, follow_symlinks=False)
            out[name] = v.hex() if len(v) <= 24 else f"sha:{digest(v)}:{len(v)}"
        except OSError as e:
            out[name] = f"<{os.strerror(e.errno)}>"
    return out


def _entry(path, rel, st, problems):
    k = kind_of(st.st_mode)
    e = Entry(kind=k, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
              nlink=st.st_nlink, mtime=_mtime_class(st.st_mtime_ns), ino=st.st_ino)
    if k == "f":
        e.size = st.st_size
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                chunks = []
                while True:
                    b = os.read(fd, 1 << 16)
                    if not b:
                        break
                    chunks.append(b)
                data = b"".join(chunks)
            finally:
                os.close(fd)
            e.content = digest(data)
            if len(data) != st.st_size:
                problems.append(Problem(rel, "size", f"{rel}: read {len(data)} bytes but st_size {st.st_size}"))
        except OSError as ex:
            e.content = f"<{os.strerror(ex.errno)}>"
    elif k == "l":
        e.size = st.st_size
        e.target = os.readlink(path)
    elif k in "cb":
        e.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    e.xattrs = _xattrs(path, problems, rel)
    return e


def take(mnt, label, lstat=os.lstat):
    """lstat is replaceable so that the self-test can plant a wrong st_ino."""
    problems = []
    entries = {}
    root_st = lstat(mnt)
    entries[""] = _entry(mnt, "", root_st, problems)
    dev = root_st.st_dev

    def walk(dirpath, rel):
        try:
            with os.scandir(dirpath) as it:
                items = list(it)
        except OSError as ex:
            problems.append(Problem(rel, "readdir", f"{rel or '/'}: readdir failed: {os.strerror(ex.errno)}"))
            return
        seen = set()
        for de in sorted(items, key=lambda d: d.name):
            name = de.name
            r = f"{rel}/{name}" if rel else name
            if name in seen:
                problems.append(Problem(r, "twice", f"{r}: readdir returned the name twice"))
                continue
            seen.add(name)
            try:
                st = lstat(de.path)
            except OSError as ex:
                problems.append(Problem(r, "lstat", f"{r}: listed by readdir but lstat fails: "
                                        f"{os.strerror(ex.errno)}"))
                continue
            if de.inode() != st.st_ino:
                problems.append(Problem(r, "d_ino",
                                        f"{r}: readdir d_ino {de.inode()} != stat st_ino {st.st_ino}"))
            if st.st_dev != dev:
                problems.append(Problem(r, "st_dev", f"{r}: st_dev {st.st_dev:#x} != mount root's {dev:#x}"))
            if de.is_dir(follow_symlinks=False) != stat.S_ISDIR(st.st_mode) or \
                    de.is_symlink() != stat.S_ISLNK(st.st_mode):
                problems.append(Problem(r, "d_type", f"{r}: readdir d_type disagrees with lstat"))
            entries[r] = _entry(de.path, r, st, problems)
            if stat.S_ISDIR(st.st_mode):
                walk(de.path, r)

    walk(mnt, "")
    dir_inos = {}
    for r, e in entries.items():
        if e.kind == "d":
            if e.ino in dir_inos:
                problems.append(Problem(r, "dir_ino", f"{r}: same st_ino as directory {dir_inos[e.ino]!r}"))
            dir_inos[e.ino] = r
    return Snapshot(label, entries, problems)


FIELDS = ("kind", "mode", "uid", "gid", "nlink", "size", "content", "target", "rdev",
          "xattrs", "mtime", "links")

# --rootless only: {label of a kernel side: the upper dir it is mounted on} (pair.py).
# In a user namespace the kernel's overlayfs records no origin file handles: they need
# CAP_DAC_READ_SEARCH of the initial namespace (ovl_can_decode_fh()), so a copy-up gets
# an empty origin xattr, and the st_ino of a copied-up non-directory is the lower's
# while its dentry is cached and the upper's after that. Two names of one upper file
# (link() of a copied-up file) can then show two st_ino. A hard-link group that a
# kernel side lacks is accepted, and counted as a kernel quirk, only when the upper
# that side is mounted on holds those names as one inode.
KERNEL_UPPERS = {}
LINK_QUIRKS = set()
# --rootless: for the same reason a copy-up changes the st_ino of a non-directory in
# the kernel's overlayfs (from the lower's to the upper's, at once or when its dentry
# is dropped): st_ino is kept across copy-up only with an origin it can decode
# (Linux commit 72b608f08528, "ovl: constant st_ino/st_dev across copy up"). An
# st_ino of a non-directory that the kernel changed and the implementation kept is
# accepted, and counted as a kernel quirk; the other way round is a difference.
ROOTLESS = False
INO_QUIRKS = set()


def kernel_ino_change_ok(kernel_changed, impl_changed, is_dir, what):
    if ROOTLESS and kernel_changed and not impl_changed and not is_dir:
        INO_QUIRKS.add(what)
        return True
    return False


def _kernel_split(group, label):
    upper = KERNEL_UPPERS.get(label)
    if upper is None:
        return False
    try:
        inos = {os.lstat(os.path.join(upper, p)).st_ino for p in group}
    except OSError:
        return False
    if len(inos) != 1:
        return False
    LINK_QUIRKS.add(f"{list(group)}: one inode in {label}'s upper, two st_ino in {label}")
    return True


def compare(a, b, limit=60, ignore=()):
    """Differences between two snapshots, as readable lines (empty: equal).
    ignore: names from FIELDS not to compare ("links": hard link groups)."""
    out = []
    for p in sorted(set(a.entries) | set(b.entries)):
        ea, eb = a.entries.get(p), b.entries.get(p)
        shown = p or "/"
        if ea is None:
            out.append(f"{shown}: only in {b.label} ({eb.kind})")
            continue
        if eb is None:
            out.append(f"{shown}: only in {a.label} ({ea.kind})")
            continue
        fa, fb = ea.fields(), eb.fields()
        if fa["kind"] != fb["kind"]:
            out.append(f"{shown}: type {fa['kind']} in {a.label}, {fb['kind']} in {b.label}")
            continue
        for k in fa:
            if k not in ignore and fa[k] != fb[k]:
                out.append(f"{shown}: {k} {fa[k]!r} in {a.label}, {fb[k]!r} in {b.label}")
    ga, gb = a.groups(), b.groups()
    common = set(a.entries) & set(b.entries)

    def restrict(groups):
        return {t for t in (tuple(x for x in g if x in common) for g in groups) if len(t) > 1}
    ra, rb = (set(), set()) if "links" in ignore else (restrict(ga), restrict(gb))
    for g in sorted(ra - rb):
        if not _kernel_split(g, b.label):
            out.append(f"hard links: {list(g)} share one inode in {a.label}, not in {b.label}")
    for g in sorted(rb - ra):
        if not _kernel_split(g, a.label):
            out.append(f"hard links: {list(g)} share one inode in {b.label}, not in {a.label}")
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def problems_vs_kernel(kernel, impl):
    """The implementation's invariant violations that the kernel does not
    share. The kernel itself breaks d_ino == st_ino in a corner (an entry with
    an origin xattr, e.g. made by link() of a copied-up file, in an upper dir
    without trusted.overlay.impure: readdir gives the upper inode, stat the
    origin's); matching the kernel there is accepted too."""
    theirs = {(p.path, p.kind) for p in kernel.problems}
    return [p for p in impl.problems if (p.path, p.kind) not in theirs]


def swap_problems(kernel_before, kernel_after_swap, uppers=None):
    """After the swap: invariant violations of the kernel on the
    implementation's upper that the kernel did not show on its own upper.
    They mean the implementation's upper lacks something the kernel relies
    on (e.g. trusted.overlay.impure on a dir holding copied-up entries, so
    the kernel's readdir reports upper inode numbers). uppers: the overlay
    xattrs of both uppers as they were before the swap (upper_xattrs()), to
    show the ones that differ at the path and its parent."""
    out = []
    for p in problems_vs_kernel(kernel_before, kernel_after_swap)[:20]:
        out.append(f"[{kernel_after_swap.label} invariant, not seen on the kernel's own upper] {p}")
        if uppers:
            for rel in dict.fromkeys([os.path.dirname(p.path), p.path]):
                a, b = uppers[0].get(rel, {}), uppers[1].get(rel, {})
                if a != b:
                    out.append(f"    upper/{rel or '.'}: kernel wrote {a or '{}'}, "
                               f"the implementation {b or '{}'}")
    return out


def upper_xattrs(root):
    """{relative path: overlay_xattrs} for every entry of an upper dir."""
    out = {"": overlay_xattrs(root)}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = overlay_xattrs(p)
    return out


OVL_PREFIX = "trusted.overlay."  # user.overlay. with --rootless (mounts.set_rootless)


def overlay_xattrs(path):
    """trusted.overlay.* (rootless: user.overlay.*) xattrs of a file in an upper dir
    (values of the short ones), for hints; {} when there are none or the file is
    missing."""
    try:
        names = [n for n in os.listxattr(path, follow_symlinks=False)
                 if n.startswith(OVL_PREFIX)]
        out = {}
        for n in names:
            v = os.getxattr(path, n, follow_symlinks=False)
            out[n[len(OVL_PREFIX):]] = (v.decode(errors="replace")
                                                if n.endswith(("opaque", "impure", "redirect"))
                                                else f"<{len(v)} bytes>")
        return out
    except OSError:
        return {}


def ino_changes(before, after, exclude=()):
    """For each path in both snapshots of one mount and not under a path in
    exclude: did its st_ino change."""
    def excluded(p):
        return any(p == x or p.startswith(x + "/") for x in exclude)
    return {p: before.entries[p].ino != after.entries[p].ino
            for p in before.entries if p in after.entries and not excluded(p)}


def compare_ino_changes(ka, kb, ia, ib, label_k, label_i, exclude=()):
    """Compares "st_ino changed between two snapshots" path by path. Paths
    created, removed or renamed in between belong in exclude: the filesystem
    may hand a new file the inode number just freed."""
    ck, ci = ino_changes(ka, kb, exclude), ino_changes(ia, ib, exclude)
    out = []
    for p in sorted(set(ck) & set(ci)):
        if ck[p] != ci[p] and not kernel_ino_change_ok(ck[p], ci[p], kb.entries[p].kind == "d",
                                                      f"{p or '/'}"):
            out.append(f"{p or '/'}: st_ino {'changed' if ck[p] else 'kept'} in {label_k}, "
                       f"{'changed' if ci[p] else 'kept'} in {label_i}")
    return out
