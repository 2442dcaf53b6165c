"""The context a hand-written case runs in (T) and the case runner.

A case is a function f(t) registered with @case. It builds layers with
t.layers(...), then drives both mounts with t.op(...) (as root) or
t.user(...) (as uid 65534), t.same(...) for a value computed by a function on
each mount, t.check(...) for an invariant within each mount, and t.tree()
to compare the visible trees. Every mismatch is recorded with the case's
name; the case carries on, so one run shows every difference. After the case
the runner compares the trees once more and, with --swap, swaps the uppers
and compares again.
"""
import os
import shutil
import time
import traceback

from . import layers, mounts, ops, snapshot
from .pair import Pair

CASES = []


def case(fn):
    CASES.append((fn.__name__, fn))
    return fn


class T:
    def __init__(self, name, mode, impl, worker, tmpdir, ignore=(), verbose=False):
        self.name = name
        self.mode = mode
        self.impl = impl
        self.worker = worker
        self.tmpdir = tmpdir
        self.ignore = set(ignore)
        self.verbose = verbose
        self.pair = None
        self.diffs = []
        self.notes = []
        self.step = ""
        self.tree_seen = set()

    # --- setup -------------------------------------------------------------
    def layers(self, lowers, upper=(), mount=True):
        self.pair = Pair(self.tmpdir, layers.LayerSet(lowers=[list(x) for x in lowers],
                                                      upper=list(upper)),
                         self.impl, self.mode, ignore=self.ignore)
        if mount:
            self.pair.mount()

    def kernel_prepare(self, layer, oplist):
        """Before mounting: on each side, lets the kernel itself write lower
        layer `layer` (0 = topmost lower) by mounting it as the upper over the
        layers below it with redirect_dir=on and applying oplist, so that
        layer holds exactly what the kernel makes (redirects, whiteouts,
        opaque dirs, origin and impure xattrs)."""
        for side in (self.pair.k, self.pair.i):
            d = side.dirs
            work = os.path.join(d.base, f"prepwork{layer}")
            os.mkdir(work)
            sub = layers.Dirs(d.base, d.lowers[layer + 1:], d.lowers[layer], work, d.mnt)
            m = mounts.KernelMounter().mount(sub, "redirect_on", "kernel (preparing a layer)")
            try:
                for o in oplist:
                    r = ops.apply(d.mnt, o)
                    if not r.startswith("ok") and side is self.pair.k:
                        self.notes.append(f"prepare: {o} -> {r}")
            finally:
                m.umount()
            _rmtree(work)

    def mount(self):
        self.pair.mount()

    def remount(self):
        self.pair.umount()
        self.pair.mount()

    # --- actions -----------------------------------------------------------
    def op(self, opname, path="", /, **kw):
        return self._apply(_mkop(opname, path, **kw), None)

    def user(self, opname, path="", /, **kw):
        return self._apply(_mkop(opname, path, **kw), self.worker)

    def _apply(self, o, worker):
        rk, ri = self.pair.apply(o, worker)
        who = f"uid {worker.uid}: " if worker else ""
        if self.verbose:
            self.notes.append(f"{who}{ops.describe(o)} -> {ops.short(rk)}"
                              + ("" if rk == ri else f" | {ops.short(ri)}"))
        if rk != ri and not ("errno" in self.ignore and not rk.startswith("ok")
                             and not ri.startswith("ok")):
            self.diff(f"{who}{ops.describe(o)}: {self.pair.k.label} -> {ops.short(rk)}, "
                      f"{self.pair.i.label} -> {ops.short(ri)}")
        return rk

    def same(self, label, fn):
        """fn(mountpoint) -> value, on both sides; the values must be equal."""
        try:
            vk, vi = self.pair.each(fn)
        except Exception as e:
            self.diff(f"{label}: raised {type(e).__name__}: {e}")
            return None
        if self.verbose:
            self.notes.append(f"{label} -> {ops.short(repr(vk), 300)}")
        if vk != vi:
            self.diff(f"{label}: {self.pair.k.label}: {ops.short(repr(vk), 2000)}\n"
                      f"      {self.pair.i.label}: {ops.short(repr(vi), 2000)}")
        return vk

    def check(self, label, fn):
        """fn(mountpoint) -> list of problems, on each side separately."""
        for side in (self.pair.k, self.pair.i):
            for p in fn(side.mnt):
                self.diff(f"{label} [{side.label}]: {p}")

    def tree(self, label=None):
        """Compares the trees; a difference already reported by an earlier
        tree() of this case is not repeated."""
        lines, snaps = self.pair.compare()
        repeated = 0
        for line in lines:
            if line in self.tree_seen:
                repeated += 1
                continue
            self.tree_seen.add(line)
            self.diff(f"tree{' ' + label if label else ''}: {line}")
        if repeated:
            self.diff(f"tree{' ' + label if label else ''}: ({repeated} difference(s) as before)")
        return snaps

    def diff(self, line):
        self.diffs.append(f"{self.step + ': ' if self.step else ''}{line}")

    def kpath(self, rel=""):
        return os.path.join(self.pair.k.mnt, rel)


def _mkop(opname, path="", /, **kw):
    o = {"op": opname, "path": path}
    for k, v in kw.items():
        o[k] = v.hex() if isinstance(v, (bytes, bytearray)) else v
    return o


def _rmtree(path):
    if mounts.mounts_under(path):
        raise RuntimeError(f"still mounted under {path}")
    shutil.rmtree(path, ignore_errors=True)
    if path in mounts.REGISTRY.tmpdirs:
        mounts.REGISTRY.tmpdirs.remove(path)


def run(args, impl, worker, new_tmpdir, modes):
    names = args.cases or [n for n, _ in CASES]
    known = dict(CASES)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; --list-cases lists them")
        return len(unknown)
    failures = 0
    t0 = time.monotonic()
    count = 0
    for mode in modes:
        for name in names:
            count += 1
            failures += _run_one(args, impl, worker, new_tmpdir, mode, name, known[name])
    print(f"cases: {count} run ({', '.join(modes)}), {failures} with differences, "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return failures


def _run_one(args, impl, worker, new_tmpdir, mode, name, fn):
    tmp = new_tmpdir(args, f"case-{name}")
    t = T(name, mode, impl, worker, tmp, ignore=args.ignore, verbose=args.verbose)
    try:
        try:
            fn(t)
            if t.pair:
                t.step = "at the end"
                before = t.tree()
                if args.swap:
                    t.step = "after swap"
                    t.pair.swap()
                    lines, (sk, si) = t.pair.compare()
                    if "invariants" not in t.ignore:
                        lines += snapshot.swap_problems(before[0], sk,
                                                        t.pair.uppers_before_swap)
                    for line in lines:
                        t.diff(line)
                    before[0].label = "kernel before the swap"
                    for s in (sk, si):
                        for line in snapshot.compare(before[0], s, ignore=t.ignore):
                            t.diff(f"vs before swap: {line}")
        except mounts.MountError as e:
            t.diff(f"mount failed: {e}")
        except (mounts.Terminated, KeyboardInterrupt):
            raise
        except Exception:
            t.diff("harness error:\n" + traceback.format_exc())
        finally:
            if t.pair:
                t.pair.close(keep=args.keep and bool(t.diffs))
            else:
                _rmtree(tmp)
    finally:
        wd = mounts.WATCHDOG
        if wd and wd.expired:
            t.diffs = [f"hung: {x}" for x in wd.expired] + t.diffs
            wd.expired.clear()
    impl_name = impl.name
    if t.diffs:
        print(f"\nFAIL case {name} ({mode}): {len(t.diffs)} difference(s), kernel vs {impl_name}")
        for line in t.diffs[:80]:
            print(f"  {line}")
        if len(t.diffs) > 80:
            print(f"  ... and {len(t.diffs) - 80} more")
        run_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.py")
        opts = "" if args.impl_opts == "allow_other" else f" --impl-opts {args.impl_opts}"
        print(f"  replay: {run_py} --impl {args.impl}{opts} --mode {mode} --cases {name}"
              f"{' --swap' if args.swap else ''}{' --rootless' if args.rootless else ''} -v",
              flush=True)
        if args.keep:
            print(f"  kept: {tmp}")
    else:
        print(f"ok   case {name} ({mode})", flush=True)
    if args.verbose and t.notes:
        for n in t.notes:
            print(f"    {n}")
    return 1 if t.diffs else 0
