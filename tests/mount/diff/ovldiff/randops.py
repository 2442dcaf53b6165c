"""Seeded random operation sequences over a random multi-layer tree.

Everything random comes from Random(f"ops-{seed}") and Random(f"tree-{seed}"),
and paths are drawn from the kernel side's visible tree, so a seed replays the
same sequence as long as the kernel behaves the same. Ops target existing
entries, new names in existing dirs (from a small pool, so they collide with
whiteouts and existing names), and impossible paths. About one op in seven
runs as an unprivileged uid through the worker.
"""
import os
import random

from . import layers, snapshot
from .ops import short

NEW_NAMES = ["n", "m", "f", "a", "d", "g", "x y"]
SYMLINK_TARGETS = ["f", "g", "a", "a/f", "b", "missing", "s", "n", "x y", "a/b/f"]
XATTR_NAMES = ["user.a", "user.b", "user.c", "user.d"]
RARE_XATTR_NAMES = ["trusted.t", "trusted.overlay.opaque", "user.overlay.x"]
CHMOD_MODES = [0o644, 0o600, 0o755, 0o777, 0o000, 0o4755, 0o2755, 0o1777, 0o444, 0o711]
IDS = [0, 65534, 1000]
DATA_SIZES = [0, 1, 10, 100, 4096, 5000, 20000]
OFFSETS = [0, 1, 100, 4095, 10000, 70000]
TRUNC_SIZES = [0, 1, 3, 100, 4096, 5000, 70000]

WEIGHTS = {
    "create": 10, "write": 8, "append": 5, "truncate": 5, "opentrunc": 2, "openrw": 2,
    "read": 4, "mkdir": 8, "rmdir": 6, "unlink": 8, "rename": 14, "link": 5,
    "symlink": 4, "chmod": 4, "chown": 3, "setxattr": 6, "removexattr": 3,
    "getxattr": 2, "listxattr": 1, "utimes": 3, "mknod": 2, "stat": 3, "listdir": 3,
    "readlink": 1, "hold": 4, "fdwrite": 3, "fdread": 2, "fdstat": 2, "fdtruncate": 1,
    "fdchmod": 1, "fdlistdir": 1, "fdclose": 2,
}
SLOTS = 4


def listing(mnt):
    """[(relpath, kind)] of a mount, sorted; kind is d, f, l or o (other)."""
    out = []

    def walk(d, rel):
        try:
            items = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for de in items:
            r = f"{rel}/{de.name}" if rel else de.name
            if de.is_symlink():
                out.append((r, "l"))
            elif de.is_dir(follow_symlinks=False):
                out.append((r, "d"))
                walk(de.path, r)
            elif de.is_file(follow_symlinks=False):
                out.append((r, "f"))
            else:
                out.append((r, "o"))
    walk(mnt, "")
    return out


class Generator:
    """Draws ops; may look at the reference (kernel) mount, never changes it."""

    def __init__(self, seed, unprivileged_share=0.15, pair=None):
        self.pair = pair
        self.rng = random.Random(f"ops-{seed}")
        self.share = unprivileged_share
        self.kinds = list(WEIGHTS)
        self.weights = [WEIGHTS[k] for k in self.kinds]

    def _peek(self, fn):
        """fn(mountpoint) on both mounts, so that both kernels' caches see the
        same accesses; returns the kernel side's value (None on OSError)."""
        def safe(m):
            try:
                return fn(m)
            except OSError:
                return None
        return self.pair.each(safe)[0]

    def _data(self):
        n = self.rng.choice(DATA_SIZES)
        b = bytes([self.rng.randrange(256)]) * n if n > 64 else self.rng.randbytes(n)
        return b.hex()

    def _existing(self, tree, kinds=None, root_ok=False):
        cands = [p for p, k in tree if kinds is None or k in kinds]
        if root_ok and self.rng.random() < 0.03:
            return ""
        if not cands:
            return self._new(tree)
        return self.rng.choice(cands)

    def _new(self, tree):
        dirs = [""] + [p for p, k in tree if k == "d"]
        d = self.rng.choice(dirs)
        name = self.rng.choice(NEW_NAMES)
        return f"{d}/{name}" if d else name

    def _bad(self, tree):
        r = self.rng.random()
        files = [p for p, k in tree if k == "f"]
        if r < 0.4 or not files:
            return "nosuch/x"
        if r < 0.8:
            return self.rng.choice(files) + "/x"
        return "n" * 256

    def _path(self, tree, kinds=None, p_new=0.2, p_bad=0.05):
        r = self.rng.random()
        if r < p_bad:
            return self._bad(tree)
        if r < p_bad + p_new:
            return self._new(tree)
        return self._existing(tree, kinds)

    def next(self, tree):
        """Returns (op, unprivileged)."""
        rng = self.rng
        kind = rng.choices(self.kinds, self.weights)[0]
        unpriv = rng.random() < self.share
        P = self._path
        if kind == "create":
            o = {"op": "create", "path": P(tree, "f", p_new=0.6), "mode": rng.choice([0o644, 0o600, 0o755]),
                 "excl": rng.random() < 0.3, "trunc": rng.random() < 0.3, "data": self._data()}
        elif kind == "write":
            o = {"op": "write", "path": P(tree, "fl"), "offset": rng.choice(OFFSETS),
                 "data": self._data() or "00"}
        elif kind == "append":
            o = {"op": "append", "path": P(tree, "fl"), "data": self._data() or "41"}
        elif kind == "truncate":
            o = {"op": "truncate", "path": P(tree, "fl"), "size": rng.choice(TRUNC_SIZES)}
        elif kind in ("opentrunc", "openrw", "read"):
            o = {"op": kind, "path": P(tree, "flo")}
        elif kind == "mkdir":
            o = {"op": "mkdir", "path": P(tree, None, p_new=0.75), "mode": rng.choice([0o755, 0o700, 0o777, 0o1777])}
        elif kind == "rmdir":
            dirs = {p for p, k in tree if k == "d"}
            nonempty = {p.rpartition("/")[0] for p, _ in tree}
            empty = sorted(dirs - nonempty)
            if empty and rng.random() < 0.6:
                o = {"op": "rmdir", "path": rng.choice(empty)}
            else:
                o = {"op": "rmdir", "path": P(tree, "d")}
        elif kind == "unlink":
            o = {"op": "unlink", "path": P(tree, "flo" if rng.random() < 0.9 else "d")}
        elif kind == "rename":
            src = P(tree, None, p_new=0.05)
            r = rng.random()
            if r < 0.45:
                dst = self._new(tree)
            elif r < 0.9:
                dst = self._existing(tree)
            elif r < 0.95 and src:
                dst = src + "/" + rng.choice(NEW_NAMES)
            else:
                dst = self._bad(tree)
            flags = rng.choices(["", "noreplace", "exchange"], [8, 1, 1])[0]
            o = {"op": "rename", "path": src, "dst": dst, "flags": flags}
        elif kind == "link":
            o = {"op": "link", "path": P(tree, "flo", p_new=0.05),
                 "dst": self._new(tree) if rng.random() < 0.8 else self._existing(tree)}
        elif kind == "symlink":
            o = {"op": "symlink", "path": P(tree, None, p_new=0.8),
                 "target": rng.choice(SYMLINK_TARGETS)}
        elif kind == "chmod":
            o = {"op": "chmod", "path": self._existing(tree, root_ok=True),
                 "mode": rng.choice(CHMOD_MODES)}
        elif kind == "chown":
            o = {"op": "chown", "path": self._existing(tree, root_ok=True), "uid": rng.choice(IDS),
                 "gid": rng.choice(IDS), "follow": rng.random() < 0.7}
        elif kind == "setxattr":
            name = rng.choice(XATTR_NAMES) if rng.random() < 0.93 else rng.choice(RARE_XATTR_NAMES)
            o = {"op": "setxattr", "path": self._existing(tree, root_ok=True), "name": name,
                 "value": rng.randbytes(rng.choice([0, 1, 8, 100])).hex(),
                 "flags": rng.choices(["", "create", "replace"], [6, 1, 1])[0],
                 "follow": rng.random() < 0.7}
        elif kind in ("removexattr", "getxattr"):
            path = self._existing(tree, root_ok=True)
            follow = rng.random() < 0.7
            names = XATTR_NAMES
            if self.pair and rng.random() < 0.7:
                names = self._peek(lambda m: sorted(os.listxattr(
                    os.path.join(m, path), follow_symlinks=follow))) or XATTR_NAMES
            o = {"op": kind, "path": path, "name": rng.choice(names), "follow": follow}
        elif kind == "listxattr":
            o = {"op": kind, "path": self._existing(tree, root_ok=True), "follow": rng.random() < 0.7}
        elif kind == "utimes":
            ns = None
            if rng.random() < 0.8:
                t = layers.SYNTH_BASE_NS + rng.randrange(10**15)
                ns = [t + 12345, t]
            o = {"op": "utimes", "path": self._existing(tree, root_ok=True), "ns": ns,
                 "follow": rng.random() < 0.7}
        elif kind == "mknod":
            k = rng.choice(["fifo", "fifo", "sock", "chr", "whiteout"])
            o = {"op": "mknod", "path": P(tree, None, p_new=0.8), "mode": 0o644,
                 "kind": "chr" if k == "whiteout" else k}
            if k == "chr":
                o.update(major=1, minor=3)
        elif kind == "stat":
            o = {"op": "stat", "path": P(tree, None), "follow": rng.random() < 0.5}
        elif kind == "listdir":
            o = {"op": "listdir", "path": P(tree, "dl")}
        elif kind == "hold":
            how = rng.choice(["r", "w", "rw", "rw", "dir", "path"])
            o = {"op": "hold", "slot": rng.randrange(SLOTS), "how": how,
                 "path": P(tree, "d" if how == "dir" else "fl", p_new=0.05)}
        elif kind == "fdwrite":
            o = {"op": kind, "slot": rng.randrange(SLOTS), "offset": rng.choice(OFFSETS),
                 "data": self._data() or "42"}
        elif kind == "fdtruncate":
            o = {"op": kind, "slot": rng.randrange(SLOTS), "size": rng.choice(TRUNC_SIZES)}
        elif kind == "fdchmod":
            o = {"op": kind, "slot": rng.randrange(SLOTS), "mode": rng.choice(CHMOD_MODES)}
        elif kind in ("fdread", "fdstat", "fdlistdir", "fdclose"):
            o = {"op": kind, "slot": rng.randrange(SLOTS)}
        else:  # readlink
            o = {"op": "readlink", "path": P(tree, "l")}
        return o, unpriv


def run_seed(pair, seed, nops, check_every, worker, log, swap=False, swap_ops=0):
    """Runs one seed on a mounted pair. Returns a list of difference lines
    (empty when the two sides agree throughout)."""
    gen = Generator(seed, unprivileged_share=0.15 if worker else 0.0, pair=pair)
    diffs = []

    def run_ops(n, phase):
        prev = pair.snapshots()
        tree, _ = pair.each(listing)
        touched = set()
        for i in range(n):
            o, unpriv = gen.next(tree)
            rk, ri = pair.apply(o, worker if unpriv else None)
            who = f"uid {worker.uid}" if unpriv else "root"
            log.append(f"{phase} #{i} [{who}] {_describe(o)} -> {short(rk)}" +
                       ("" if rk == ri else f" | {pair.i.label}: {short(ri)}"))
            if not same_result(rk, ri, pair.ignore):
                lines, _ = pair.compare()
                return [f"{phase} #{i} [{who}] {_describe(o)}: "
                        f"{pair.k.label} -> {short(rk)}, {pair.i.label} -> {short(ri)}"] + \
                       [f"  tree after it: {x}" for x in lines]
            if o["op"] in NAMESPACE_OPS:
                touched.update(x for x in (o.get("path"), o.get("dst")) if x is not None)
            if o["op"] in MUTATING:
                # Listed on both sides: same accesses, and a cheap early check.
                tree, tree_i = pair.each(listing)
                if tree != tree_i:
                    lines, _ = pair.compare()
                    return [f"{phase} #{i} [{who}] {_describe(o)}: the visible names differ "
                            "afterwards"] + [f"  {x}" for x in lines]
            if (check_every and (i + 1) % check_every == 0) or i == n - 1:
                lines, cur = pair.compare()
                if "links" not in pair.ignore:
                    lines += snapshot.compare_ino_changes(prev[0], cur[0], prev[1], cur[1],
                                                          pair.k.label, pair.i.label,
                                                          exclude=touched)
                touched = set()
                if lines:
                    return [f"{phase}: trees differ after op #{i} ({_describe(o)})"] + \
                           [f"  {x}" for x in lines]
                prev = cur
        return []

    lines, start = pair.compare()
    if lines:
        return ["trees differ right after mounting"] + [f"  {x}" for x in lines]
    try:
        diffs = run_ops(nops, "op")
    finally:
        close_held(pair, worker)
    if diffs or not swap:
        return diffs
    before_k, _ = pair.snapshots()
    before_k.label = "kernel before the swap"
    pair.swap()
    lines, (sk, si) = pair.compare()
    if "invariants" not in pair.ignore:
        lines += snapshot.swap_problems(before_k, sk, pair.uppers_before_swap)
    lines += [f"vs before swap: {x}" for x in snapshot.compare(before_k, sk, ignore=pair.ignore)]
    lines += [f"vs before swap: {x}" for x in snapshot.compare(before_k, si, ignore=pair.ignore)]
    if lines:
        return ["after swap (each upper mounted by the other implementation):"] + \
               [f"  {x}" for x in lines]
    if swap_ops:
        try:
            return run_ops(swap_ops, "swapped-op")
        finally:
            close_held(pair, worker)
    return []


def close_held(pair, worker):
    """Closes the descriptors held by fd* ops, or the mounts would be busy."""
    pair.apply({"op": "fdcloseall", "path": ""})
    if worker:
        pair.apply({"op": "fdcloseall", "path": ""}, worker)


def same_result(rk, ri, ignore=()):
    if rk == ri:
        return True
    return "errno" in ignore and not rk.startswith("ok") and not ri.startswith("ok")


NAMESPACE_OPS = {"create", "mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mknod"}
MUTATING = {"fdwrite", "fdtruncate", "fdchmod", "create", "mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mknod",
            "write", "append", "truncate", "opentrunc", "chmod", "chown"}


def _describe(o):
    from .ops import describe
    return describe(o)
