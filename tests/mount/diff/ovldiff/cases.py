"""Hand-written cases, one per semantics bullet of issue 3.

Each case builds its layers, runs operations on both mounts and compares
results (exact errno), values computed on each mount, and the visible trees.
The cases state no expectations of their own: the kernel is the reference.
Names of layer entries say where they live: "lo" bottom layer, "mid" middle,
"up" upper.
"""
import os
import struct

from . import dirstream, snapshot
from .casekit import CASES, T, case, run  # noqa: F401  (run is the entry point)
from .layers import C, D, F, H, L, P, S, W, SYNTH_BASE_NS

T0 = SYNTH_BASE_NS


def _stat_all(t, paths, follow=False):
    for p in paths:
        t.op("stat", p, follow=follow)


# --- lookup ------------------------------------------------------------------

@case
def lookup_layers(t: T):
    """lookup across three lowers and an upper: shadowing, types, names"""
    long_name = "L" * 255
    bottom = [F("lo_only", "bottom"), F("shadow", "bottom"), D("d"), F("d/lo", "1"),
              D("d/deep"), D("d/deep/er"), F("d/deep/er/f", "deep"),
              F("file_then_dir", "was a file"), D("dir_then_file"), F("dir_then_file/x"),
              F("sp ace", "s"), F("ünï", "u"), F(long_name, "long"),
              D("three"), F("three/bottom", "b")]
    middle = [F("shadow", "middle"), D("d"), F("d/mid", "2"), D("d/deep"),
              D("file_then_dir", opaque=True), F("file_then_dir/inner", "i"),
              D("three"), F("three/middle", "m")]
    top = [F("mid_only", "top-lower"), D("d"), F("d/top", "3"), D("three"),
           F("three/top", "t"), F("three/bottom", "overrides bottom")]
    upper = [F("shadow", "upper"), F("dir_then_file", "now a file"), D("d"),
             F("d/up", "4"), D("three"), F("three/upper", "u")]
    t.layers([top, middle, bottom], upper)
    paths = ["lo_only", "mid_only", "shadow", "d", "d/lo", "d/mid", "d/top", "d/up",
             "d/deep/er/f", "file_then_dir", "file_then_dir/inner", "dir_then_file",
             "dir_then_file/x", "sp ace", "ünï", long_name, "three/bottom", "nope",
             "d/nope", "nope/nope", "lo_only/x", "d/./lo", "d/deep/../lo", "lo_only/",
             "d/", "L" * 256, "d/" + "L" * 256]
    _stat_all(t, paths)
    for p in paths:
        t.op("read", p)
    for p in ["", "d", "three", "file_then_dir", "d/deep", "d/deep/er"]:
        t.op("listdir", p)
    t.op("access", "lo_only", how=os.R_OK | os.W_OK)
    t.tree()


# --- whiteouts -----------------------------------------------------------------

@case
def whiteouts(t: T):
    """whiteouts in upper and middle layers; creating over them; unlink making them"""
    bottom = [F("f1", "b1", xattrs={"user.x": b"old"}), F("f2", "b2"), F("f3", "b3"),
              D("dir1"), F("dir1/a", "a"), D("dir2"), F("dir2/a"), F("back", "bottom"),
              D("m"), F("m/x"), F("m/y"), F("m/z")]
    middle = [W("f2"), W("dir2"), W("back"), D("m"), W("m/x")]
    top = [F("back", "resurrected in the top lower")]
    upper = [W("f1"), W("dir1"), D("m"), W("m/y")]
    t.layers([top, middle, bottom], upper)
    _stat_all(t, ["f1", "f2", "f3", "dir1", "dir1/a", "dir2", "back", "m/x", "m/y", "m/z"])
    t.op("listdir", "")
    t.op("listdir", "m")
    t.op("read", "back")
    t.step = "create over whiteouts"
    t.op("create", "f1", data=b"new", mode=0o600)
    t.op("listxattr", "f1")
    t.op("mkdir", "dir1")
    t.op("listdir", "dir1")
    t.op("symlink", "dir2", target="f3")
    t.op("link", "f3", dst="m/x")
    t.op("mknod", "m/y", kind="fifo")
    t.tree()
    t.step = "unlink makes whiteouts"
    t.op("unlink", "f3")
    t.op("unlink", "m/z")
    t.op("rmdir", "dir1")
    t.op("stat", "f3")
    t.op("listdir", "m")
    t.op("create", "f3", excl=True)
    t.step = "whiteout-like nodes through the mount"
    t.op("mknod", "wo", kind="chr", major=0, minor=0)
    t.op("mknod", "wo2", kind="chr", major=0, minor=0, mode=0)
    t.op("stat", "wo")
    t.op("listdir", "")
    t.tree()


# --- opaque dirs ----------------------------------------------------------------

@case
def opaque_dirs(t: T):
    """opaque dirs in upper and middle hide everything below them"""
    bottom = [D("o1"), F("o1/hidden"), D("o2"), F("o2/hidden"), F("o2/also"),
              D("o3"), F("o3/shown"), D("o4"), F("o4/lo")]
    middle = [D("o2", opaque=True), F("o2/mid"), D("o4", xattrs={})]
    upper = [D("o1", opaque=True), F("o1/up"), D("o2"), F("o2/up"),
             D("o3", xattrs={"trusted.overlay.opaque": b"n"}), F("o3/up"),
             D("o4", opaque=True)]
    t.layers([middle, bottom], upper)
    for d in ["o1", "o2", "o3", "o4"]:
        t.op("listdir", d)
        t.op("listxattr", d, follow=False)
        t.op("getxattr", d, name="trusted.overlay.opaque")
    _stat_all(t, ["o1/hidden", "o2/hidden", "o2/mid", "o3/shown", "o4/lo"])
    t.step = "changes in opaque dirs"
    t.op("create", "o1/hidden", data=b"new")
    t.op("unlink", "o1/up")
    t.op("rmdir", "o4")
    t.op("mkdir", "o4")
    t.op("listdir", "o4")
    t.op("rename", "o2/mid", dst="o1/mid")
    t.op("setxattr", "o3", name="trusted.overlay.opaque", value=b"y")
    t.op("listdir", "o3")
    t.op("listxattr", "o3")
    t.tree()


# --- merged readdir ---------------------------------------------------------------

@case
def merged_readdir(t: T):
    """merged readdir: every layer's names once, whiteouts hidden, d_ino == st_ino"""
    def many(prefix, n, every=1):
        return [F(f"big/{prefix}{i:04d}-" + "x" * 60, str(i)) for i in range(0, n, every)]
    bottom = [D("m"), F("m/a"), F("m/b"), F("m/c"), D("m/sub"), F("m/sub/x"), P("m/fifo"),
              L("m/link", "a"), D("big")] + many("n", 900)
    middle = [D("m"), F("m/b", "mid"), W("m/c"), F("m/d"), D("m/sub"), F("m/sub/y"),
              D("big")] + many("n", 900, 3) + [W(f"big/n{i:04d}-" + "x" * 60)
                                                for i in range(1, 900, 7) if i % 3]
    upper = [D("m"), F("m/e"), W("m/a"), F("m/d", "up"), D("m/sub"), W("m/sub/x"),
             D("big")] + many("u", 700) + [W(f"big/n{i:04d}-" + "x" * 60)
                                            for i in range(2, 900, 5)]
    t.layers([middle, bottom], upper)
    for d in ["", "m", "m/sub", "big"]:
        t.op("listdir", d)
    t.same("scandir of m (name, is_dir, is_symlink)", lambda mnt: sorted(
        (e.name, e.is_dir(follow_symlinks=False), e.is_symlink())
        for e in os.scandir(os.path.join(mnt, "m"))))
    t.check("readdir m/big", lambda mnt: _dino_problems(os.path.join(mnt, "big")))
    t.step = "after changes"
    t.op("unlink", "m/b")
    t.op("create", "m/a")
    t.op("rename", "m/e", dst="m/c")
    t.op("listdir", "m")
    t.tree()


def _dino_problems(path):
    out = []
    names = []
    with os.scandir(path) as it:
        for e in it:
            names.append(e.name)
            st = os.lstat(e.path)
            if st.st_ino != e.inode():
                out.append(f"{e.name}: d_ino {e.inode()} != st_ino {st.st_ino}")
    if len(names) != len(set(names)):
        out.append("duplicate names")
    return out[:10]


# --- readdir offsets ----------------------------------------------------------------

@case
def readdir_offsets(t: T):
    """telldir/seekdir and partial iteration stay correct while the dir changes"""
    def names(prefix, n):
        return [f"{prefix}{i:04d}" + "y" * 90 for i in range(n)]
    lo_names, up_names = names("lo", 300), names("up", 200)
    bottom = [D("small"), F("small/a"), F("small/b"), F("small/c"), F("small/d"), D("mixed"),
              D("big")] + [F(f"mixed/l{i}") for i in range(12)] + \
             [F(f"big/{n}") for n in lo_names] + [D("sc")] + [F(f"sc/l{i:03d}") for i in range(300)]
    upper = [D("small"), F("small/e"), W("small/b"), D("mixed"), D("big"), D("pure"), D("sc")] + \
            [F(f"mixed/u{i}") for i in range(12)] + [W(f"mixed/l{i}") for i in range(0, 12, 4)] + \
            [F(f"big/{n}") for n in up_names] + [F(f"pure/p{i}") for i in range(30)] + \
            [F(f"sc/u{i:03d}") for i in range(300)]
    t.layers([bottom], upper)
    for d in ["small", "mixed", "big", "pure"]:
        t.same(f"seekdir back in {d} (names)", lambda mnt, d=d: dirstream.seek_back(
            os.path.join(mnt, d))[0])
        t.check(f"seekdir back in {d}", lambda mnt, d=d: dirstream.seek_back(
            os.path.join(mnt, d))[1])
    t.step = "dir changes between telldir and seekdir"
    plans = {
        "small": (2, ["a", "e"], ["new1", "new2"]),
        "mixed": (7, ["l1", "u3", "u7", "l10"], ["n1", "n2", "n3"]),
        "pure": (10, [f"p{i}" for i in range(0, 30, 3)], [f"q{i}" for i in range(5)]),
        "big": (150, lo_names[::7] + up_names[::5], [f"new{i}" for i in range(60)]),
    }
    for d, (first, rm, cr) in plans.items():
        res = t.pair.each(lambda mnt, d=d, first=first, rm=rm, cr=cr: dirstream.changing(
            os.path.join(mnt, d), first, rm, cr))
        for side, (_, problems) in zip((t.pair.k, t.pair.i), res):
            for p in problems:
                t.diff(f"{d} [{side.label}]: {p}")
        if res[0][0] != res[1][0]:
            t.diff(f"{d}: names after the changes differ")
    res = t.pair.each(lambda mnt: dirstream.scandir_while_changing(
        os.path.join(mnt, "sc"), 100,
        [f"l{i:03d}" for i in range(0, 300, 4)] + [f"u{i:03d}" for i in range(1, 300, 4)],
        [f"c{i:03d}" for i in range(50)]))
    for side, (_, problems) in zip((t.pair.k, t.pair.i), res):
        for p in problems:
            t.diff(f"sc [{side.label}]: {p}")
    t.tree()


# --- copy-up ---------------------------------------------------------------------

COPY_UP_TRIGGERS = [
    ("write", dict(data=b"W", offset=2)),
    ("append", dict(data=b"A")),
    ("truncate", dict(size=3)),
    ("opentrunc", {}),
    ("openrw", {}),
    ("chmod", dict(mode=0o600)),
    ("chown", dict(uid=1000, gid=65534)),
    ("utimes", dict(ns=[T0 + 777, T0 + 888])),
    ("utimes_now", {}),
    ("setxattr", dict(name="user.new", value=b"v")),
    ("removexattr", dict(name="user.keep")),
    ("link", {}),
    ("rename", {}),
    ("read", {}),
    ("stat", {}),
    ("getxattr", dict(name="user.keep")),
]


@case
def copy_up(t: T):
    """copy-up on write, truncate, chmod, chown, utimes, setxattr, link: data,
    attributes, xattrs and st_ino kept; parents copied up with their attributes"""
    data = bytes(range(256)) * 40
    bottom, middle = [], []
    for op, _ in COPY_UP_TRIGGERS:
        bottom += [D(f"p_{op}", mode=0o750, uid=1000, gid=1000, xattrs={"user.dir": b"d"},
                     mtime_ns=T0 + 5),
                   D(f"p_{op}/q", mode=0o705, mtime_ns=T0 + 6),
                   F(f"p_{op}/q/f", data, mode=0o640, uid=1000, gid=1000,
                     xattrs={"user.keep": b"k", "trusted.t": b"t"}, mtime_ns=T0 + 7)]
    bottom += [F("big", b"\0" * (3 << 20) + b"tail"), P("fifo"), L("sym", "big"),
               D("dir", mode=0o711, xattrs={"user.d": b"1"}), F("dir/child", "c"),
               F("sparse", b"")]
    # Set-id bits and a file capability of objects owned by another user: the owner
    # goes on before them (a chown clears both).
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep
    bottom += [F("capfile", "c", mode=0o755, uid=1000, gid=1000,
                 xattrs={"security.capability": cap}),
               F("caproot", "c", mode=0o755, xattrs={"security.capability": cap}),
               F("suid1000", "s", mode=0o6755, uid=1000, gid=1000),
               D("sgdir", mode=0o2755, uid=1000, gid=1000)]
    middle += [F("midfile", "in the middle layer", mode=0o604)]
    t.layers([middle, bottom], [])
    _ = _sparse(t)
    for op, kw in COPY_UP_TRIGGERS:
        t.step = f"copy-up by {op}"
        path = f"p_{op}/q/f"
        before = t.pair.each(lambda mnt: os.lstat(os.path.join(mnt, path)).st_ino)
        if op == "link":
            t.op("link", path, dst=f"p_{op}/linked")
        elif op == "rename":
            t.op("rename", path, dst=f"p_{op}/q/g")
            path = f"p_{op}/q/g"
        elif op == "utimes_now":
            t.op("utimes", path, ns=None)
        else:
            t.op(op, path, **kw)
        after = t.pair.each(lambda mnt: os.lstat(os.path.join(mnt, path)).st_ino)
        kept = (before[0] == after[0], before[1] == after[1])
        if kept[0] != kept[1] and not snapshot.kernel_ino_change_ok(
                not kept[0], not kept[1], False, f"copy-up by {op}: {path}"):
            t.diff(f"st_ino {'kept' if kept[0] else 'changed'} in kernel, "
                   f"{'kept' if kept[1] else 'changed'} in {t.pair.i.label}")
        t.op("stat", path)
        t.op("read", path)
        t.op("listxattr", path)
        t.op("stat", f"p_{op}")
        t.op("listxattr", f"p_{op}")
    t.step = "copy-up of big, special, symlink, dir"
    t.op("append", "big", data=b"+")
    t.op("read", "big")
    t.op("chmod", "fifo", mode=0o600)
    t.op("chown", "sym", uid=1000, gid=1000, follow=False)
    t.op("utimes", "sym", ns=[T0 + 1, T0 + 2], follow=False)
    t.op("setxattr", "dir", name="user.e", value=b"2")
    t.op("listdir", "dir")
    t.op("chmod", "midfile", mode=0o644)
    t.op("read", "midfile")
    for f in ("capfile", "caproot", "suid1000"):
        t.op("openrw", f)
        t.op("stat", f)
        t.op("listxattr", f)
    t.op("setxattr", "sgdir", name="user.e", value=b"3")
    t.op("stat", "sgdir")
    t.tree()


def _sparse(t):
    """A sparse lower file (hole in the middle) survives copy-up byte for byte."""
    for side in (t.pair.k, t.pair.i):
        for root in side.dirs.lowers:
            p = os.path.join(root, "sparse")
            if os.path.exists(p):
                with open(p, "r+b") as f:
                    f.seek(1 << 20)
                    f.write(b"after the hole")
                    os.utime(p, ns=(T0, T0))
    t.op("write", "sparse", data=b"head", offset=0)
    t.op("read", "sparse")


@case
def open_files(t: T):
    """fds opened before a copy-up see the new data; unlinked open files"""
    t.layers([[F("f", "lower data"), F("g", "gggg"), F("h", "hhhh")]], [])

    def scenario(mnt):
        out = []
        r = os.open(os.path.join(mnt, "f"), os.O_RDONLY)
        w = os.open(os.path.join(mnt, "f"), os.O_WRONLY)
        os.write(w, b"UPPER")
        out.append(os.pread(r, 100, 0))
        os.close(w)
        os.fchmod(r, 0o600)
        out.append(oct(os.fstat(r).st_mode))
        os.close(r)
        fd = os.open(os.path.join(mnt, "g"), os.O_RDONLY)
        os.unlink(os.path.join(mnt, "g"))
        st = os.fstat(fd)
        out.append((os.read(fd, 10), st.st_nlink))
        os.close(fd)
        fd = os.open(os.path.join(mnt, "h"), os.O_RDWR)
        os.ftruncate(fd, 2)
        os.rename(os.path.join(mnt, "h"), os.path.join(mnt, "h2"))
        os.write(fd, b"Z")
        out.append((os.fstat(fd).st_size, os.pread(fd, 10, 0)))
        os.close(fd)
        return out
    t.same("open fds across copy-up, unlink, rename", scenario)
    t.tree()


# --- rename --------------------------------------------------------------------

@case
def rename_files(t: T):
    """rename of files: in and across dirs, over targets, flags, errors"""
    bottom = [F("a", "a"), F("b", "b"), F("c", "c"), D("d1"), F("d1/x", "x"), D("d2"),
              F("d2/y", "y"), F("gone", "g"), H("hl", "a"), D("emptydir"), F("e1"), F("e2")]
    upper = [F("u1", "u1"), F("u2", "u2"), W("gone")]
    t.layers([bottom], upper)
    t.op("rename", "a", dst="a2")
    t.op("rename", "b", dst="d1/b")
    t.op("rename", "d1/x", dst="d2/y")
    t.op("rename", "u1", dst="c")
    t.op("rename", "c", dst="gone")
    t.op("rename", "u2", dst="u2")
    t.op("rename", "hl", dst="a2")
    t.op("rename", "e1", dst="e2", flags="noreplace")
    t.op("rename", "e1", dst="e2", flags="exchange")
    t.op("rename", "e1", dst="new", flags="exchange")
    t.op("rename", "e1", dst="emptydir")
    t.op("rename", "emptydir", dst="e1")
    t.op("rename", "e1", dst="nodir/x")
    t.op("rename", "missing", dst="x")
    t.op("rename", "e1", dst="e1/x")
    t.op("rename", "e2", dst="d2", flags="exchange")
    t.op("create", "a", data=b"new a")
    t.op("stat", "a2")
    t.op("read", "a")
    t.tree()


@case
def rename_dirs(t: T):
    """rename of dirs: redirects with redirect_dir=on, EXDEV with it off"""
    bottom = [D("low"), F("low/f", "lf"), D("low/sub"), F("low/sub/g", "g"),
              D("merged"), F("merged/lo"), D("tgt_empty"), D("tgt_full"), F("tgt_full/x"),
              D("tgt_wo"), F("tgt_wo/x"), D("ex1"), F("ex1/a"), D("ex2"), F("ex2/b"),
              D("nest"), D("nest/inner"), F("nest/inner/f"), D("chain"), F("chain/f")]
    upper = [D("merged"), F("merged/up"), D("pure"), F("pure/p"), D("tgt_wo"), W("tgt_wo/x"),
             D("opq", opaque=True), F("opq/o")]
    t.layers([bottom], upper)
    t.op("rename", "pure", dst="pure2")
    t.op("rename", "opq", dst="opq2")
    t.op("rename", "low", dst="low2")
    t.op("rename", "merged", dst="merged2")
    t.op("rename", "ex1", dst="ex2", flags="exchange")
    t.op("rename", "nest/inner", dst="inner_out")
    t.op("rename", "nest", dst="pure2/nest")
    t.op("rename", "chain", dst="chain1")
    t.op("rename", "chain1", dst="chain2")
    t.op("rename", "chain2", dst="pure2/chain3")
    t.op("rename", "low2/sub", dst="low2/sub/x")
    t.tree("after renames")
    t.step = "over targets"
    t.op("rename", "pure2", dst="tgt_full")
    t.op("rename", "pure2", dst="tgt_empty")
    t.op("rename", "tgt_empty", dst="tgt_wo")
    t.op("rename", "ex2", dst="tgt_wo")
    t.tree("after renames over targets")
    t.step = "the old names"
    for p in ["low", "merged", "chain", "chain1", "ex1", "nest"]:
        t.op("stat", p)
        t.op("mkdir", p)
        t.op("listdir", p)
    t.op("listdir", "low2")
    t.op("create", "low2/newfile")
    t.op("rename", "low2/f", dst="low/f")
    t.op("rename", "low", dst="low2/back")
    t.op("listdir", "low2/back")
    t.tree("after re-creating the old names")
    t.step = "after remount"
    t.remount()
    for p in ["low2", "merged2", "pure2/chain3", "inner_out", "pure2/nest", "low2/back"]:
        t.op("listdir", p)


# --- rmdir / mkdir ------------------------------------------------------------------

@case
def rmdir_mkdir(t: T):
    """rmdir of lower, merged, whiteout-only and opaque dirs; mkdir over whiteouts"""
    bottom = [D("empty_lo"), D("full_lo"), F("full_lo/f"), D("wo_only"), F("wo_only/a"),
              F("wo_only/b"), D("by_ops"), F("by_ops/a"), D("by_ops/sub"), F("afile"),
              D("deep"), D("deep/er")]
    upper = [D("wo_only"), W("wo_only/a"), W("wo_only/b"), D("opq", opaque=True),
             D("up_empty")]
    t.layers([bottom], upper)
    for d in ["empty_lo", "full_lo", "wo_only", "opq", "up_empty", "afile", "nosuch", "deep"]:
        t.op("rmdir", d)
    t.op("unlink", "by_ops/a")
    t.op("rmdir", "by_ops")
    t.op("rmdir", "by_ops/sub")
    t.op("rmdir", "by_ops")
    t.op("rmdir", "deep/er/.")
    t.op("rmdir", "deep/er")
    t.op("rmdir", "deep")
    t.tree("after rmdirs")
    t.step = "mkdir over the whiteouts"
    for d in ["empty_lo", "wo_only", "by_ops", "deep", "afile"]:
        t.op("mkdir", d, mode=0o750)
        t.op("listdir", d)
        t.op("stat", d)
    t.op("mkdir", "deep/er")
    t.op("rmdir", "full_lo/f")
    t.op("unlink", "full_lo")
    t.tree()


# --- hard links ----------------------------------------------------------------------

@case
def hard_links(t: T):
    """nlink and shared inodes: lower links, upper links, link() copy-up, unlink"""
    bottom = [F("a", "aaa"), H("a2", "a"), D("d"), H("d/a3", "a"), F("b", "bbb"), H("b2", "b"),
              F("c", "ccc"), F("s", "sss"), L("sym", "c"), D("dir"), F("one", "1")]
    upper = [F("u", "uuu"), H("u2", "u")]
    t.layers([bottom], upper)
    _stat_all(t, ["a", "a2", "d/a3", "b", "u", "u2"])
    t.step = "write through one name of a lower link group"
    t.op("write", "a", data=b"X")
    _stat_all(t, ["a", "a2", "d/a3"])
    t.op("read", "a2")
    t.step = "link() of lower files"
    t.op("link", "b", dst="b3")
    t.op("link", "one", dst="one2")
    t.op("link", "sym", dst="sym2")
    t.op("link", "dir", dst="dir2")
    t.op("link", "c", dst="a")
    t.op("link", "nosuch", dst="x")
    _stat_all(t, ["b", "b2", "b3", "one", "one2", "sym2"])
    t.step = "unlink"
    t.op("unlink", "b2")
    t.op("unlink", "u2")
    t.op("unlink", "one")
    _stat_all(t, ["b", "b3", "u", "one2"])
    t.op("link", "u", dst="d/u3")
    t.op("rename", "d/u3", dst="u")
    t.tree()
    t.step = "after remount"
    t.remount()
    _stat_all(t, ["a", "a2", "b", "b3", "u", "one2"])


# --- symlinks -----------------------------------------------------------------------

@case
def symlinks(t: T):
    """symlinks: readlink, following, dangling, loops, creation, lchown, lutimes"""
    bottom = [F("f", "target"), D("d"), F("d/g", "in d"), L("to_f", "f"), L("to_d", "d"),
              L("dangling", "missing"), L("loop", "loop"), L("chain", "to_f"),
              L("abs", "/nonexistent-ovlfs-diff-target"), L("long", "x" * 4000)]
    t.layers([bottom], [L("up_link", "d/g")])
    for p in ["to_f", "to_d", "dangling", "loop", "chain", "abs", "long", "up_link"]:
        t.op("readlink", p)
        t.op("stat", p, follow=False)
    for p in ["to_f", "to_d", "dangling", "loop", "chain", "up_link", "to_d/g"]:
        t.op("stat", p, follow=True)
    t.op("read", "chain")
    t.op("read", "to_d/g")
    t.op("listdir", "to_d")
    t.op("symlink", "new", target="d/g")
    t.op("symlink", "new", target="again")
    t.op("symlink", "max", target="y" * 4095)
    t.op("symlink", "toolong", target="y" * 4096)
    t.op("chown", "to_f", uid=1000, gid=1000, follow=False)
    t.op("utimes", "dangling", ns=[T0 + 3, T0 + 4], follow=False)
    t.op("rename", "chain", dst="d/chain")
    t.op("read", "d/chain")
    t.op("unlink", "loop")
    t.op("write", "to_f", data=b"via link")
    t.tree()


# --- device nodes, fifos, sockets ---------------------------------------------------------

@case
def special_files(t: T):
    """device nodes, fifos and sockets: stat, open, copy-up, create"""
    bottom = [C("null", 1, 3), C("zero", 1, 5, mode=0o644), P("fifo"), S("sock"),
              D("d")]
    t.layers([bottom], [P("upfifo", mode=0o600)])
    for p in ["null", "zero", "fifo", "sock", "upfifo"]:
        t.op("stat", p)
    t.op("read", "null")
    t.op("read", "zero", limit=16)
    t.op("write", "null", data=b"discard")
    t.op("truncate", "null", size=0)
    t.op("read", "fifo")
    t.op("write", "fifo", data=b"x")
    t.op("read", "sock")
    t.op("connect", "sock")
    t.same("data through a lower fifo", _fifo_roundtrip)
    t.step = "copy-up of special files"
    t.op("chmod", "null", mode=0o600)
    t.op("chown", "fifo", uid=1000, gid=1000)
    t.op("utimes", "sock", ns=[T0 + 9, T0 + 10], follow=False)
    t.op("rename", "zero", dst="d/zero")
    t.op("link", "fifo", dst="d/fifo2")
    t.op("setxattr", "fifo", name="user.x", value=b"1")
    t.step = "creating special files"
    t.op("mknod", "d/null2", kind="chr", major=1, minor=3, mode=0o666)
    t.op("mknod", "d/blk", kind="blk", major=7, minor=250, mode=0o600)
    t.op("mknod", "d/fifo3", kind="fifo", mode=0o640)
    t.op("mknod", "d/sock2", kind="sock")
    t.op("mkfifo", "d/fifo4", mode=0o600)
    t.op("bindsock", "d/bound")
    t.op("mknod", "d/reg", kind="reg")
    t.op("read", "d/null2")
    t.op("connect", "d/bound")
    t.op("unlink", "sock")
    t.tree()


def _fifo_roundtrip(mnt):
    p = os.path.join(mnt, "fifo")
    r = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(w, b"through the fifo")
        return os.read(r, 100)
    finally:
        os.close(w)
        os.close(r)


# --- xattrs ---------------------------------------------------------------------------

@case
def xattrs(t: T):
    """user.* and trusted.* xattrs; the overlay's own hidden; escaped overlay xattrs"""
    bottom = [F("f", xattrs={"user.a": b"1", "user.b": b"x" * 300, "trusted.t": b"t"}),
              D("d", xattrs={"user.d": b"dir"}), F("d/c"), L("l", "f"), P("p"),
              D("opq_lo"), F("opq_lo/x"), F("plain")]
    upper = [D("opq_lo", opaque=True), F("u", xattrs={"user.u": b"up"})]
    t.layers([bottom], upper)
    for p in ["f", "d", "u", "opq_lo", ""]:
        t.op("listxattr", p)
    for name in ["user.a", "user.b", "trusted.t", "user.none", "trusted.overlay.opaque",
                 "trusted.overlay.origin", "trusted.overlay.impure"]:
        t.op("getxattr", "f", name=name)
        t.op("getxattr", "opq_lo", name=name)
        t.op("getxattr", "", name=name)
    t.step = "set and remove"
    t.op("setxattr", "f", name="user.a", value=b"2", flags="create")
    t.op("setxattr", "f", name="user.new", value=b"2", flags="replace")
    t.op("setxattr", "f", name="user.a", value=b"3", flags="replace")
    t.op("setxattr", "f", name="user.big", value=b"B" * 3000)
    t.op("setxattr", "f", name="user.huge", value=b"H" * 70000)
    t.op("setxattr", "f", name="user.", value=b"empty name")
    t.op("removexattr", "f", name="user.b")
    t.op("removexattr", "f", name="user.none")
    t.op("setxattr", "d", name="user.e", value=b"")
    t.op("setxattr", "l", name="user.x", value=b"1", follow=False)
    t.op("setxattr", "l", name="user.x", value=b"1", follow=True)
    t.op("setxattr", "p", name="user.x", value=b"1")
    t.op("setxattr", "plain", name="trusted.overlay.opaque", value=b"y")
    t.op("setxattr", "plain", name="trusted.overlay.redirect", value=b"/etc")
    t.op("setxattr", "plain", name="trusted.overlay.overlay.x", value=b"nested")
    t.op("setxattr", "plain", name="user.overlay.opaque", value=b"y")
    t.op("setxattr", "plain", name="security.x", value=b"s")
    t.op("setxattr", "plain", name="bogus.x", value=b"s")
    t.op("listxattr", "plain")
    t.op("getxattr", "plain", name="trusted.overlay.opaque")
    t.op("removexattr", "plain", name="trusted.overlay.opaque")
    t.op("setxattr", "opq_lo", name="trusted.overlay.opaque", value=b"n")
    t.op("listdir", "opq_lo")
    t.op("listxattr", "opq_lo")
    t.step = "as uid 65534"
    t.user("listxattr", "f")
    t.user("getxattr", "f", name="trusted.t")
    t.user("getxattr", "f", name="user.a")
    t.user("setxattr", "f", name="user.z", value=b"1")
    t.tree()


# --- statfs ---------------------------------------------------------------------------

@case
def statfs(t: T):
    """statfs: the upper filesystem's numbers"""
    t.layers([[F("f", "x")]], [])

    def sv(mnt):
        s = os.statvfs(mnt)
        return {"bsize": s.f_bsize, "frsize": s.f_frsize, "blocks": s.f_blocks,
                "files": s.f_files, "namemax": s.f_namemax,
                "rdonly": bool(s.f_flag & os.ST_RDONLY),
                "bfree": s.f_bfree, "bavail": s.f_bavail, "ffree": s.f_ffree}
    vk, vi = t.pair.each(sv)
    for k in vk:
        if k in ("bfree", "bavail", "ffree"):
            if abs(vk[k] - vi[k]) > max(1024, vk[k] // 100):
                t.diff(f"statvfs {k}: kernel {vk[k]}, {t.pair.i.label} {vi[k]}")
        elif vk[k] != vi[k]:
            t.diff(f"statvfs {k}: kernel {vk[k]}, {t.pair.i.label} {vi[k]}")
    t.same("statvfs of a file", lambda mnt: os.statvfs(os.path.join(mnt, "f")).f_blocks)


# --- attributes ------------------------------------------------------------------------

def _chown_noop_ctime(mnt):
    """chown(path, -1, -1) of each path: whether its ctime moved (and nothing else)."""
    import time
    out = {}
    for rel in ("lo_file", "up_file", "lo_dir", "up_dir"):
        p = os.path.join(mnt, rel)
        before = os.lstat(p)
        time.sleep(0.01)
        os.chown(p, -1, -1)
        after = os.lstat(p)
        out[rel] = {"ctime_moved": after.st_ctime_ns > before.st_ctime_ns,
                    "mtime_kept": after.st_mtime_ns == before.st_mtime_ns,
                    "owner": (after.st_uid, after.st_gid), "mode": oct(after.st_mode)}
    return out


@case
def chown_noop(t: T):
    """chown with both ids -1 changes ctime only, in the lower and in the upper"""
    t.layers([[F("lo_file", "x", uid=7, gid=8), D("lo_dir", uid=7, gid=8)]],
             [F("up_file", "y", uid=7, gid=8), D("up_dir", uid=7, gid=8)])
    t.same("ctime after chown(-1, -1)", _chown_noop_ctime)
    t.tree()


# --- inode numbers ---------------------------------------------------------------------

@case
def inode_numbers(t: T):
    """st_ino unique across layers, the same in readdir and stat, kept by copy-up and remount"""
    bottom = [F("f"), D("d"), F("d/f"), F("same_name"), D("m"), F("m/x"), F("hl"), H("hl2", "hl")]
    middle = [F("g"), D("d"), F("d/g"), F("same_name"), D("m"), F("m/y")]
    upper = [F("h"), D("m"), F("m/z")]
    t.layers([middle, bottom], upper)
    paths = ["f", "g", "h", "d", "d/f", "d/g", "same_name", "m", "m/x", "m/y", "m/z", "hl", "hl2"]
    t.check("unique st_ino", lambda mnt: _unique_inos(mnt, paths))
    first = t.pair.each(lambda mnt: _inos(mnt, paths))
    for p in ["f", "g", "d/f", "m/x", "hl", "d", "m"]:
        t.op("chmod", p, mode=0o700)
    second = t.pair.each(lambda mnt: _inos(mnt, paths))
    _compare_kept(t, "after chmod (copy-up)", first, second)
    t.remount()
    third = t.pair.each(lambda mnt: _inos(mnt, paths))
    _compare_kept(t, "after remount", second, third)
    t.check("readdir d_ino", lambda mnt: _dino_problems(mnt) + _dino_problems(
        os.path.join(mnt, "m")) + _dino_problems(os.path.join(mnt, "d")))
    t.check("one st_dev", lambda mnt: [
        f"{p}: st_dev differs" for p in paths
        if os.lstat(os.path.join(mnt, p)).st_dev != os.lstat(mnt).st_dev])


def _inos(mnt, paths):
    return {p: os.lstat(os.path.join(mnt, p)).st_ino for p in paths}


def _unique_inos(mnt, paths):
    seen = {}
    out = []
    for p, ino in _inos(mnt, paths).items():
        if ino in seen and p != "hl2":
            out.append(f"{p} and {seen[ino]} share st_ino {ino}")
        seen.setdefault(ino, p)
    return out


def _compare_kept(t, label, a, b):
    for p in a[0]:
        kk, ki = a[0][p] == b[0][p], a[1][p] == b[1][p]
        is_dir = os.path.isdir(os.path.join(t.pair.k.mnt, p))
        if kk != ki and not snapshot.kernel_ino_change_ok(not kk, not ki, is_dir,
                                                          f"{label}: {p}"):
            t.diff(f"{label}: st_ino of {p} {'kept' if kk else 'changed'} in kernel, "
                   f"{'kept' if ki else 'changed'} in {t.pair.i.label}")


# --- permissions as a non-root caller -------------------------------------------------------

@case
def permissions(t: T):
    """permission checks for uid 65534: modes, owners, sticky dirs, copy-up as that user"""
    N = 65534
    bottom = [D("pub"), F("pub/r644", "r"), F("pub/r600", "r", mode=0o600),
              F("pub/n644", "n", uid=N, gid=N), F("pub/n600", "n", mode=0o600, uid=N, gid=N),
              F("pub/g660", "g", mode=0o660, gid=N), F("pub/x755", "#!/bin/sh\n", mode=0o755),
              D("tmp", mode=0o1777), F("tmp/rootf", mode=0o666), F("tmp/nobodyf", uid=N, gid=N),
              D("w777", mode=0o777), F("w777/f"), D("w777/sub"),
              D("priv", mode=0o700), F("priv/f"), D("nob", uid=N, gid=N), F("nob/f"),
              D("noexec", mode=0o666), F("noexec/f"), D("nodir_w", mode=0o555), F("nodir_w/f"),
              F("pub/setuid", mode=0o4755, uid=N, gid=N), D("sgid", mode=0o2777, gid=1000),
              F("pub/suid_t", "s", mode=0o4777), F("pub/sgid_t", "s", mode=0o2777),
              F("pub/sgidnx_in", "s", mode=0o2766, gid=N), F("pub/sgidnx_out", "s", mode=0o2766),
              F("pub/suid_root", "s", mode=0o4777)]
    upper = [D("up", uid=N, gid=N), F("up/f", uid=N, gid=N), D("pub"),
             F("pub/suid_up", "s", mode=0o4777)]
    t.layers([bottom], upper)
    u = t.user
    u("read", "pub/r644")
    u("read", "pub/r600")
    u("read", "pub/n600")
    u("read", "pub/g660")
    u("write", "pub/r644", data=b"x")
    u("write", "pub/n644", data=b"x")
    u("write", "pub/g660", data=b"x")
    u("truncate", "pub/r644", size=0)
    u("truncate", "pub/n600", size=1)
    u("openrw", "pub/r644")
    u("chmod", "pub/r644", mode=0o666)
    u("chmod", "pub/n644", mode=0o4777)
    u("chown", "pub/n644", uid=0, gid=0)
    u("chown", "pub/n644", uid=-1, gid=N)
    u("chown", "pub/n644", uid=-1, gid=0)
    u("utimes", "pub/n644", ns=None)
    u("utimes", "pub/r644", ns=None)
    u("utimes", "pub/r644", ns=[T0, T0])
    u("utimes", "tmp/rootf", ns=None)
    u("setxattr", "pub/n644", name="user.mine", value=b"1")
    u("setxattr", "pub/r644", name="user.theirs", value=b"1")
    u("setxattr", "pub/n644", name="trusted.x", value=b"1")
    u("create", "pub/new")
    u("create", "w777/new", data=b"mine")
    u("mkdir", "w777/newdir")
    u("unlink", "w777/f")
    u("rmdir", "w777/sub")
    u("unlink", "tmp/rootf")
    u("unlink", "tmp/nobodyf")
    u("rename", "tmp/rootf", dst="tmp/moved")
    u("create", "tmp/mine")
    u("rename", "tmp/mine", dst="tmp/rootf")
    u("listdir", "priv")
    u("stat", "priv/f")
    u("listdir", "noexec")
    u("stat", "noexec/f")
    u("create", "nodir_w/x")
    u("unlink", "nodir_w/f")
    u("write", "nodir_w/f", data=b"y")
    u("link", "pub/r644", dst="w777/hl")
    u("link", "pub/n644", dst="w777/hl2")
    u("symlink", "w777/sl", target="../pub/r600")
    u("read", "w777/sl")
    u("create", "nob/mine")
    u("chmod", "nob", mode=0o700)
    u("unlink", "nob/f")
    u("create", "up/g")
    u("mkdir", "sgid/sub")
    u("create", "sgid/file")
    u("access", "pub/r600", how=os.R_OK)
    u("access", "pub/n644", how=os.W_OK)
    u("access", "pub/x755", how=os.X_OK)
    u("write", "pub/setuid", data=b"x")
    u("stat", "pub/setuid")
    # An open that truncates clears set-id bits as truncate(2) does.
    for f in ("suid_t", "sgid_t", "sgidnx_in", "sgidnx_out", "suid_up"):
        u("opentrunc", f"pub/{f}")
        u("stat", f"pub/{f}")
    t.op("opentrunc", "pub/suid_root")
    t.step = "after root changes"
    t.op("chmod", "pub/n644", mode=0o000)
    u("read", "pub/n644")
    t.op("chown", "pub/r600", uid=N, gid=N)
    u("read", "pub/r600")
    t.op("chmod", "priv", mode=0o755)
    u("listdir", "priv")
    t.tree()


# --- redirects written by the kernel in a lower layer ------------------------------------------

@case
def kernel_made_layers(t: T):
    """a middle layer written by the kernel itself (redirects, whiteouts, opaque, origin)"""
    bottom = [D("a"), F("a/f", "af"), D("a/b"), F("a/b/g", "g"), D("c"), F("c/h", "h"),
              D("e"), F("e/x", "x"), F("file", "f"), D("z"), D("z/y"), F("z/y/w", "w")]
    t.layers([[], bottom], [], mount=False)
    t.kernel_prepare(0, [
        {"op": "rename", "path": "a", "dst": "a2"},
        {"op": "rename", "path": "a2/b", "dst": "b2"},
        {"op": "rename", "path": "c", "dst": "e/c2"},
        {"op": "unlink", "path": "file"},
        {"op": "mkdir", "path": "file", "mode": 0o755},
        {"op": "create", "path": "file/new"},
        {"op": "unlink", "path": "z/y/w"},
        {"op": "rmdir", "path": "z/y"},
        {"op": "chmod", "path": "e/x", "mode": 0o600},
        {"op": "rename", "path": "z", "dst": "a2/z"},
        {"op": "mkdir", "path": "a", "mode": 0o755},
        {"op": "create", "path": "a/again"},
    ])
    t.mount()
    for p in ["", "a", "a2", "b2", "e", "e/c2", "file", "a2/z"]:
        t.op("listdir", p)
    for p in ["a2/f", "b2/g", "e/c2/h", "e/x", "a/f", "a2/b", "c", "a2/z/y"]:
        t.op("stat", p)
        t.op("read", p)
    t.op("rename", "a2", dst="a3")
    t.op("rename", "b2", dst="a3/b3")
    t.op("listdir", "a3/b3")
    t.op("create", "e/c2/new")
    t.tree()
