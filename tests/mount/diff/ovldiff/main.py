"""Command line: argument parsing, the run loop over cases and seeds, summary."""
import argparse
import os
import random
import sys
import tempfile
import time
import traceback

from . import cases, concurrent, mounts, randops, randtree, selftest, snapshot
from . import pair as pair_mod
from .pair import Pair
from .worker import Worker

MODES = ("redirect_on", "redirect_off")
# As a normal user the kernel's overlayfs needs userxattr, which allows no redirects
# (redirect_dir=nofollow only: user.overlay.redirect is anyone's to set, see
# mounts.py): the implementation runs with redirect_dir=off and =nofollow against it.
ROOTLESS_MODES = ("redirect_off", "nofollow")


def parse(argv):
    ap = argparse.ArgumentParser(prog="run.py", description=__doc__)
    ap.add_argument("--impl", default="kernel",
                    help="program under test, or 'kernel', or 'fuse-overlayfs'")
    ap.add_argument("--impl-opts", default="allow_other",
                    help="extra -o options for the program under test "
                         "(default: allow_other, needed for the unprivileged checks)")
    ap.add_argument("--mode", default="both", choices=MODES + ("nofollow", "both"),
                    help="redirect_dir of both sides; both: redirect_on and redirect_off "
                         "(--rootless: redirect_off and nofollow)")
    ap.add_argument("--rootless", action="store_true",
                    help="run as a normal user in a user namespace: the kernel's overlayfs "
                         "with userxattr, the implementation as the user's (namespace.py)")
    ap.add_argument("--cases", nargs="*", default=None, metavar="NAME",
                    help="run the hand-written cases (all, or the named ones)")
    ap.add_argument("--list-cases", action="store_true")
    ap.add_argument("--random", "--count", type=int, default=0, metavar="COUNT",
                    help="run COUNT random sequences, seeds S, S+1, ...")
    ap.add_argument("--ops", type=int, default=60, help="operations per sequence")
    ap.add_argument("--concurrent", type=int, default=0, metavar="WORKERS",
                    help="with --random: WORKERS processes apply --ops ops each at once "
                         "on the implementation's mount; then its tree, the kernel's view "
                         "of the same layers and the lowers are compared (ovldiff/concurrent.py)")
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    ap.add_argument("--layers", type=int, default=3, help="lower layers in random trees")
    ap.add_argument("--check-every", type=int, default=20,
                    help="compare the trees every N ops (and at the end)")
    ap.add_argument("--swap", action="store_true",
                    help="then mount each upper with the other implementation and compare")
    ap.add_argument("--swap-ops", type=int, default=None,
                    help="ops to run after the swap (default: ops/3)")
    ap.add_argument("--no-unprivileged", action="store_true",
                    help="run every op as root (no uid 65534 worker)")
    ap.add_argument("--self-test", action="store_true",
                    help="plant differences and check that each is caught")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs of failures")
    ap.add_argument("--tmpdir", default=None, help="where temp dirs go (default: $TMPDIR)")
    ap.add_argument("--tmpfs", action="store_true",
                    help="put all layers on a private tmpfs (immune to a busy disk: the "
                         "kernel syncs the upper filesystem at every umount)")
    ap.add_argument("--max-failures", type=int, default=5,
                    help="stop the random run after this many failing seeds")
    ap.add_argument("--ignore", default="", metavar="FIELD,...",
                    help="exploration only: do not compare these (" +
                         ", ".join(snapshot.FIELDS) + ", invariants, errno)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.ignore = {x for x in args.ignore.split(",") if x}
    if args.cases is None and not args.random and not args.self_test and not args.list_cases:
        args.cases = []
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**6)
    if args.swap_ops is None:
        args.swap_ops = args.ops // 3
    if args.rootless and args.mode == "redirect_on":
        ap.error("--rootless: the kernel's overlayfs with userxattr has no redirect_dir=on")
    if args.mode == "nofollow" and not args.rootless:
        ap.error("--mode nofollow is for --rootless")
    return args


def modes(args):
    if args.mode == "both":
        return ROOTLESS_MODES if args.rootless else MODES
    return (args.mode,)


def new_tmpdir(args, tag):
    d = tempfile.mkdtemp(prefix=f"ovlfs-diff-{tag}-", dir=args.tmpdir)
    mounts.REGISTRY.tmpdirs.append(d)
    os.chmod(d, 0o755)  # the unprivileged worker must reach the mount points
    return d


def replay_command(args, seed, mode):
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "run.py"), "--impl", args.impl]
    if args.impl_opts != "allow_other":
        cmd += ["--impl-opts", repr(args.impl_opts)]
    if args.rootless:
        cmd += ["--rootless"]
    cmd += ["--mode", mode, "--random", "1", "--seed", str(seed), "--ops", str(args.ops),
            "--layers", str(args.layers), "--check-every", str(args.check_every)]
    if args.swap:
        cmd += ["--swap", "--swap-ops", str(args.swap_ops)]
    if args.no_unprivileged:
        cmd += ["--no-unprivileged"]
    if args.ignore:
        cmd += ["--ignore", ",".join(sorted(args.ignore))]
    return " ".join(cmd) + " -v"


def run_random(args, impl, worker):
    failures = []
    ms = modes(args)
    print(f"random: {args.random} sequences x {args.ops} ops, first seed {args.seed}, "
          f"modes {'/'.join(ms)}, impl {args.impl}{', with swap' if args.swap else ''}",
          flush=True)
    t0 = time.monotonic()
    for n in range(args.random):
        seed = args.seed + n
        mode = ms[seed % len(ms)]
        tmp = new_tmpdir(args, f"s{seed}")
        log = []
        pair = None
        diffs = ["interrupted"]
        try:
            pair = Pair(tmp, randtree.random_layerset(seed, args.layers), impl, mode,
                        ignore=args.ignore)
            pair.mount()
            diffs = randops.run_seed(pair, seed, args.ops, args.check_every, worker, log,
                                     swap=args.swap, swap_ops=args.swap_ops)
        except mounts.MountError as e:
            diffs = [f"mount failed: {e}"]
        except (mounts.Terminated, KeyboardInterrupt):
            raise
        except Exception:
            diffs = ["harness error:"] + traceback.format_exc().splitlines()
        finally:
            if pair:
                pair.close(keep=args.keep and bool(diffs))
        hung = mounts.hung_lines(pair_mod.OP_TIMEOUT, ", so later errors are a consequence")
        if hung:
            diffs = hung + diffs[:3]
        if diffs:
            failures.append(seed)
            print(f"\nFAIL seed {seed} ({mode}, {len(log)} ops applied):")
            for line in diffs:
                print(f"  {line}")
            print("  last operations:")
            for line in log[-15:]:
                print(f"    {line}")
            print(f"  replay: {replay_command(args, seed, mode)}", flush=True)
            if args.keep:
                print(f"  kept: {tmp}")
            if len(failures) >= args.max_failures:
                print(f"stopping after {len(failures)} failing seeds")
                break
        elif args.verbose:
            print(f"seed {seed} ({mode}): ok, {len(log)} ops", flush=True)
            for line in log:
                print(f"    {line}")
        if (n + 1) % 20 == 0 and n + 1 < args.random:
            print(f"  ... {n + 1} sequences, {len(failures)} with differences, "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    dt = time.monotonic() - t0
    print(f"random: {n + 1} sequences, {len(failures)} with differences"
          f"{' (seeds ' + ', '.join(map(str, failures)) + ')' if failures else ''}, "
          f"{dt:.1f} s", flush=True)
    return len(failures)


def main(argv):
    args = parse(argv)
    os.umask(0o022)
    if args.rootless:
        mounts.set_rootless()
        print(f"rootless: {mounts.rootless_description()}", flush=True)
    if args.list_cases:
        for name, fn in cases.CASES:
            print(f"{name:24} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    mounts.ensure_fusectl()
    mounts.start_watchdog()
    if args.tmpfs:
        args.tmpdir = mounts.private_tmpfs(args.tmpdir)
    try:
        impl = mounts.make_impl(args.impl, args.impl_opts)
    except mounts.MountError as e:
        print(f"error: {e}")
        return 2
    worker = None if args.no_unprivileged else Worker(65534, 65534)
    failures = 0
    t0 = time.monotonic()
    try:
        if args.self_test:
            failures += selftest.run(args, impl, worker, new_tmpdir)
        if args.cases is not None:
            failures += cases.run(args, impl, worker, new_tmpdir, modes(args))
        if args.random and args.concurrent:
            failures += concurrent.run(args, impl, new_tmpdir, modes(args))
        elif args.random:
            failures += run_random(args, impl, worker)
    except mounts.Terminated:
        print("terminated: unmounting", flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: unmounting", flush=True)
        return 2
    finally:
        mounts.REGISTRY.cleanup()
        mounts.REGISTRY.remove_tmpdirs(keep=args.keep)
        if worker:
            worker.close()
    from .pair import KERNEL_QUIRKS
    if KERNEL_QUIRKS:
        print(f"note: the kernel side itself broke a per-mount invariant {len(KERNEL_QUIRKS)} "
              "time(s) (not counted; the implementation may do the same there)")
        if args.verbose:
            for q in sorted(KERNEL_QUIRKS)[:50]:
                print(f"  kernel quirk: {q}")
    if snapshot.INO_QUIRKS:
        print(f"note: {len(snapshot.INO_QUIRKS)} non-directory st_ino(s) that the kernel's "
              "overlayfs changed at copy-up and the implementation kept (no origin file "
              "handles in a user namespace; not counted)")
        if args.verbose:
            for q in sorted(snapshot.INO_QUIRKS)[:50]:
                print(f"  kernel quirk: {q}")
    if snapshot.LINK_QUIRKS:
        print(f"note: {len(snapshot.LINK_QUIRKS)} time(s) the kernel's overlayfs took two "
              "names of one file for two (two st_ino, or ESTALE renaming one onto the "
              "other): no origin file handles in a user namespace; not counted")
        if args.verbose:
            for q in sorted(snapshot.LINK_QUIRKS)[:50]:
                print(f"  kernel quirk: {q}")
    print(f"mount.diff: {'FAILED' if failures else 'ok'}, {failures} failing "
          f"case(s)/seed(s), {time.monotonic() - t0:.1f} s", flush=True)
    return 1 if failures else 0
