"""Planted differences: proof that the comparison fails when it should.

Each check builds a fresh pair from a random tree, runs a short random
sequence (which must compare clean when the implementation is the kernel),
then tampers with one side the way a faulty implementation would and asserts
that the harness reports it. Run with --impl kernel.
"""
import os
import time

from . import mounts, randops, randtree, snapshot
from .pair import Pair

SEED = 4242


def _first_file(pair, min_size=1):
    for p, k in randops.listing(pair.i.mnt):
        if k == "f" and os.lstat(os.path.join(pair.i.mnt, p)).st_size >= min_size:
            return p
    return None


def _tamper_content(pair):
    p = _first_file(pair)
    with open(os.path.join(pair.i.mnt, p), "ab") as f:
        f.write(b"!")
    return "content"


def _tamper_mode(pair):
    p = _first_file(pair, 0)
    os.chmod(os.path.join(pair.i.mnt, p), 0o601)
    return "mode"


def _tamper_owner(pair):
    p = _first_file(pair, 0)
    os.chown(os.path.join(pair.i.mnt, p), 4321, 4321)
    return "uid"


def _tamper_xattr(pair):
    p = _first_file(pair, 0)
    os.setxattr(os.path.join(pair.i.mnt, p), "user.tampered", b"1")
    return "xattrs"


def _tamper_extra(pair):
    open(os.path.join(pair.i.mnt, "planted-extra"), "w").close()
    return "only in"


def _tamper_missing(pair):
    os.unlink(os.path.join(pair.i.mnt, _first_file(pair, 0)))
    return "only in"


def _tamper_symlink(pair):
    for m, target in ((pair.k.mnt, "a"), (pair.i.mnt, "b")):
        os.symlink(target, os.path.join(m, "planted-link"))
    return "target"


def _tamper_mtime(pair):
    p = _first_file(pair, 0)
    os.utime(os.path.join(pair.i.mnt, p), ns=(1, 1_000_000_000 * 10**9 + 1))
    return "mtime"


def _tamper_hardlinks(pair):
    """Same names, types and contents on both sides; only the inode sharing differs."""
    for m in (pair.k.mnt, pair.i.mnt):
        with open(os.path.join(m, "planted1"), "w") as f:
            f.write("same")
    with open(os.path.join(pair.k.mnt, "planted2"), "w") as f:
        f.write("same")
    os.link(os.path.join(pair.i.mnt, "planted1"), os.path.join(pair.i.mnt, "planted2"))
    return "hard links:"


def _tamper_errno(pair):
    os.mkdir(os.path.join(pair.i.mnt, "planted-dir"))
    rk, ri = pair.apply({"op": "mkdir", "path": "planted-dir"})
    return "errno" if not randops.same_result(rk, ri) else "NOT DETECTED"


class _Stat:
    """A stat result with some fields replaced."""

    def __init__(self, st, **override):
        self._st = st
        self.__dict__.update(override)

    def __getattr__(self, name):
        return getattr(self._st, name)


def _tamper_dino(pair):
    """A wrong st_ino from stat (readdir unchanged) breaks the d_ino invariant."""
    victim = os.path.join(pair.i.mnt, _first_file(pair, 0))

    def lstat(path):
        st = os.lstat(path)
        if path == victim:
            return _Stat(st, st_ino=st.st_ino + 1)
        return st
    s = snapshot.take(pair.i.mnt, pair.i.label, lstat=lstat)
    return "d_ino" if any("d_ino" in p for p in s.problems) else "NOT DETECTED"


def _tamper_stdev(pair):
    victim = os.path.join(pair.i.mnt, _first_file(pair, 0))

    def lstat(path):
        st = os.lstat(path)
        if path == victim:
            return _Stat(st, st_dev=st.st_dev + 1)
        return st
    s = snapshot.take(pair.i.mnt, pair.i.label, lstat=lstat)
    return "st_dev" if any("st_dev" in p for p in s.problems) else "NOT DETECTED"


def _tamper_swap(pair):
    """Damage the implementation's upper on disk: the swap must notice."""
    pair.umount()
    upper = pair.i.dirs.upper
    with open(os.path.join(upper, "planted-on-disk"), "w") as f:
        f.write("x")
    pair.swap()
    return "only in"


TAMPERS = [_tamper_content, _tamper_mode, _tamper_owner, _tamper_xattr, _tamper_extra,
           _tamper_missing, _tamper_symlink, _tamper_mtime, _tamper_hardlinks,
           _tamper_errno, _tamper_dino, _tamper_stdev, _tamper_swap]


def run(args, impl, worker, new_tmpdir):
    failures = 0
    t0 = time.monotonic()
    for n, tamper in enumerate(TAMPERS):
        name = tamper.__name__[len("_tamper_"):]
        tmp = new_tmpdir(args, f"selftest-{name}")
        pair = Pair(tmp, randtree.random_layerset(SEED + n, 3), impl, "redirect_on")
        log = []
        try:
            pair.mount()
            base = randops.run_seed(pair, SEED + n, 30, 0, worker, log)
            if base:
                print(f"self-test {name}: the untampered run already differs:")
                for line in base[:20]:
                    print(f"  {line}")
                failures += 1
                continue
            expect = tamper(pair)
            if expect in ("errno", "d_ino", "st_dev"):
                found = [expect]
            elif expect == "NOT DETECTED":
                found = []
            else:
                lines, _ = pair.compare()
                found = [x for x in lines if expect in x]
            if found:
                print(f"self-test {name}: caught ({found[0][:110]})")
            else:
                print(f"self-test {name}: NOT CAUGHT (expected a '{expect}' difference)")
                failures += 1
        except (mounts.Terminated, KeyboardInterrupt):
            raise
        except Exception as e:
            print(f"self-test {name}: harness error {type(e).__name__}: {e}")
            failures += 1
        finally:
            pair.close()
    print(f"self-test: {len(TAMPERS)} planted differences, {len(TAMPERS) - failures} caught, "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return failures
