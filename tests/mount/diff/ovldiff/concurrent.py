"""Concurrent mode (--concurrent W): several workers on one tree at once, then
the trees and the layers compared.

For each seed, the random layer set is written twice, as in the sequential
mode. On the implementation's copy, W forked workers apply seeded random
operations (the sequential mode's generator, each worker with its own seed,
paths drawn from the tree as it was at the start, so that the workers collide
on the same names) all at the same moment, under the watchdog. The
interleaving cannot be reproduced, so no single result is compared; but none
may be an error the kernel's overlayfs never gives (EIO, ENOTCONN, ESTALE on a
held descriptor, ...).
Then:
  - the implementation's daemon exits after its umount;
  - the implementation's view keeps the per-mount invariants (readdir and lstat
    agree, no name twice, one st_dev, distinct directory inodes);
  - the kernel's overlayfs, mounted on the implementation's lowers, upper and
    workdir once it is unmounted, shows the same tree (every field the
    sequential mode compares, and which names share an inode), and keeps the
    invariants there too (those the kernel keeps on its own upper);
  - the lower layers are exactly what they were (compared with the untouched
    copy's).
The kernel's overlayfs as the implementation (--impl kernel) does not pass this
every time: under concurrency its own view can differ from what it wrote (once in
~300 seeds: a name it shows as a file that a fresh mount shows as a socket), and
its readdir can give d_ino != st_ino.
"""
import json
import os
import signal
import time
import traceback

from . import mounts, ops, randops, randtree, snapshot
from .pair import Pair, Side

# Results that say the mount itself failed, whatever the interleaving. ESTALE only
# from an operation on a held descriptor: the kernel's overlayfs itself answers a
# rename or unlink that races with another on the same names with ESTALE.
BROKEN = {"EIO", "ENOTCONN", "ECONNABORTED", "EFAULT", "ENOMEM", "EDEADLK"}
BROKEN_ON_FD = BROKEN | {"ESTALE"}
PHASE_TIMEOUT = 120


def _work(mnt, tree, seed, nops, start_fd, out_fd):
    """One worker (a forked child): waits for the start, applies nops operations,
    writes {"ops": n, "results": {op: {result: count}}, "broken": [...]}."""
    gen = randops.Generator(seed, unprivileged_share=0.0)
    counts, broken = {}, []
    os.read(start_fd, 1)
    for i in range(nops):
        o, _ = gen.next(tree)
        r = ops.apply(mnt, o)
        key = r.split(":", 1)[0]
        c = counts.setdefault(o["op"], {})
        c[key] = c.get(key, 0) + 1
        if key in (BROKEN_ON_FD if o["op"].startswith("fd") else BROKEN) or \
                key.startswith("OSError"):
            broken.append(f"#{i} {ops.describe(o)} -> {r}")
    ops.apply(mnt, {"op": "fdcloseall", "path": ""})
    os.write(out_fd, json.dumps({"ops": nops, "results": counts, "broken": broken}).encode())


def run_workers(mnt, tree, seed, nworkers, nops):
    """Forks the workers, lets them go at once, waits (under the watchdog).
    Returns (their reports, lines describing a failure)."""
    start_r, start_w = os.pipe()
    children = []
    for w in range(nworkers):
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(out_r)
                _work(mnt, tree, seed * 1000 + w, nops, start_r, out_w)
                code = 0
            finally:
                os._exit(code)
        os.close(out_w)
        mounts.KEEP_CHILDREN.add(pid)
        children.append((pid, out_r))
    os.write(start_w, b"g" * nworkers)
    os.close(start_w)
    os.close(start_r)
    wd = mounts.WATCHDOG
    if wd:
        wd.arm(f"{nworkers} concurrent workers x {nops} ops", PHASE_TIMEOUT)
    reports, lines = [], []
    try:
        for w, (pid, fd) in enumerate(children):
            with os.fdopen(fd, "rb") as f:
                report = f.read()
            _, status = os.waitpid(pid, 0)
            mounts.KEEP_CHILDREN.discard(pid)
            if status != 0 or not report:
                lines.append(f"worker {w} failed (wait status {status})")
                continue
            reports.append(json.loads(report))
    finally:
        if wd:
            wd.disarm()
    for w, rep in enumerate(reports):
        lines += [f"worker {w}: {b}" for b in rep["broken"][:10]]
    return reports, lines


def lower_differences(pair):
    """The implementation's lower layers against the untouched copy's."""
    out = []
    for n, (a, b) in enumerate(zip(pair.k.dirs.lowers, pair.i.dirs.lowers)):
        out += [f"lower {n}: {x}" for x in snapshot.compare(
            snapshot.take(a, "untouched copy"), snapshot.take(b, "after the workers"))]
    return out


def run_seed(args, impl, tmp, layerset, seed, mode):
    """Returns (difference lines, a summary of what the workers did)."""
    pair = Pair(tmp, layerset, impl, mode, ignore=args.ignore)
    try:
        pair.i.do_mount(mode)
        tree = randops.listing(pair.i.mnt)
        reports, lines = run_workers(pair.i.mnt, tree, seed, args.concurrent, args.ops)
        done = sum(r["ops"] for r in reports)
        ok = sum(n for r in reports for c in r["results"].values()
                 for k, n in c.items() if k == "ok")
        summary = f"{done} ops ({ok} ok) by {args.concurrent} workers"
        if lines:
            return lines, summary
        si = pair._snap(pair.i)
        del mounts.LINGERED[:]
        pair.i.do_umount()
        if mounts.LINGERED:
            lines.append(f"{pair.impl_label} (pid {mounts.LINGERED}) did not exit within 10 s "
                         "of its umount (backtraces above; killed)")
        kside = Side(f"kernel-on-{pair.impl_label}-layers", mounts.KernelMounter(), pair.i.dirs)
        kside.do_mount(mode)
        try:
            sk = pair._snap(kside)
        finally:
            kside.do_umount()
        lines += snapshot.compare(sk, si, ignore=pair.ignore)
        if "invariants" not in pair.ignore:
            # The kernel's own corner (d_ino of a link in a dir without impure) is
            # accepted on the implementation's side where the kernel shows it too.
            lines += [f"[{si.label} invariant] {p}"
                      for p in snapshot.problems_vs_kernel(sk, si)[:20]]
            # d_ino != st_ino also where the kernel made the link itself (its link()
            # leaves the new parent without impure): left to the sequential mode,
            # which has the kernel's own upper to tell the two apart.
            lines += [f"[{sk.label} invariant] {p}" for p in sk.problems
                      if p.kind != "d_ino"][:20]
        lines += lower_differences(pair)
        return lines, summary
    finally:
        pair.close(keep=False)


def run(args, impl, new_tmpdir, ms):
    """--random N --concurrent W: N seeds, each with W workers x --ops ops, in the
    modes ms by turns."""
    print(f"concurrent: {args.random} seeds x {args.concurrent} workers x {args.ops} ops, "
          f"first seed {args.seed}, modes {'/'.join(ms)}, impl {args.impl}", flush=True)
    failures = []
    t0 = time.monotonic()
    for n in range(args.random):
        seed = args.seed + n
        mode = ms[seed % len(ms)]
        tmp = new_tmpdir(args, f"c{seed}")
        try:
            lines, summary = run_seed(args, impl, tmp, randtree.random_layerset(seed, args.layers),
                                      seed, mode)
        except mounts.MountError as e:
            lines, summary = [f"mount failed: {e}"], ""
        except (mounts.Terminated, KeyboardInterrupt):
            raise
        except Exception:
            lines, summary = ["harness error:"] + traceback.format_exc().splitlines(), ""
        hung = mounts.hung_lines(PHASE_TIMEOUT)
        if hung:
            lines = hung + lines[:3]
        if lines:
            failures.append(seed)
            print(f"\nFAIL concurrent seed {seed} ({mode}, {summary}):")
            for line in lines:
                print(f"  {line}")
            print(f"  again (another interleaving): {_again(args, seed, mode)}", flush=True)
            if len(failures) >= args.max_failures:
                print(f"stopping after {len(failures)} failing seeds")
                break
        elif args.verbose:
            print(f"seed {seed} ({mode}): ok, {summary}", flush=True)
    print(f"concurrent: {n + 1} seeds, {len(failures)} with differences"
          f"{' (seeds ' + ', '.join(map(str, failures)) + ')' if failures else ''}, "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return len(failures)


def _again(args, seed, mode):
    run_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.py")
    extra = f" --impl-opts {args.impl_opts!r}" if args.impl_opts != "allow_other" else ""
    return (f"{run_py} --impl {args.impl}{extra} --mode {mode} --random 1 --seed {seed} "
            f"--concurrent {args.concurrent} --ops {args.ops} --layers {args.layers} -v")

