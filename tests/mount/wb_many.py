#!/usr/bin/env python3
"""mount.wb.many: N ovlfs mounts (volatile and non-volatile mixed, default 100) share
one upper filesystem; ONE real writeback error (EIO rig) in one mount's file; then a
syncfs through a new fd in each mount, twice (SPEC 2):

  round 1: every mount reports it (volatile: EIO; non-volatile: the error's errno,
           once, to the mount's first caller);
  round 2: volatile mounts report EIO again (every call); non-volatile ones pass.

Also asserts that U's shared record counts exactly one error (no mount's report, nor
any mount's syncfs of U, made it look like a second one), and prints how many mounts
reported in each round, the time from the write to the last report, and the daemons'
memory (RSS and PSS). scripts/wb1000 runs the same with 1000 mounts.

Usage: wb_many.py --ovlfs PATH --faultyfs PATH [--mounts N] [--volatile-every K]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import wbovl  # noqa: E402

MiB = 1 << 20


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """Sum of RSS and of PSS (KiB) over pids (smaps_rollup)."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k == "Rss":
                        rss += int(v.split()[0])
                    elif k == "Pss":
                        pss += int(v.split()[0])
        except OSError:
            pass
    return rss, pss


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--faultyfs", required=True)
    ap.add_argument("--mounts", type=int, default=100)
    ap.add_argument("--volatile-every", type=int, default=2,
                    help="every K-th mount is volatile (1: all, 0: none)")
    ap.add_argument("--interval-ms", type=int, default=1000,
                    help="writeback_interval of the mounts but the victim's (100)")
    args = ap.parse_args()
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    checks = wblib.Checks()
    with wblib.Cleanup() as cleanup:
        with checks.scenario(f"{args.mounts} mounts on one upper, one writeback error"):
            run(cleanup, checks, args)
    return checks.summary()


def run(cleanup: wblib.Cleanup, checks: wblib.Checks, args) -> None:
    ovlfs = os.path.realpath(args.ovlfs)
    n = args.mounts
    tmp = cleanup.tmpdir("ovlfs-wbmany.")
    upper = wblib.eio_upper(cleanup, tmp, faultyfs=os.path.realpath(args.faultyfs))
    U = upper.mnt
    lower = os.path.join(tmp, "lower")
    os.makedirs(lower)
    with open(os.path.join(lower, "lowerfile"), "w") as f:
        f.write("lower\n")
    for i in range(n):
        os.makedirs(os.path.join(U, f"up{i}"))
        os.makedirs(os.path.join(U, f"wk{i}"))
    victim = upper.preallocate("up0/victim", MiB)

    def is_volatile(i: int) -> bool:
        k = args.volatile_every
        return k > 0 and i % k == 0

    t0 = time.monotonic()
    mounts = []
    for i in range(n):
        mounts.append(wbovl.mount(
            cleanup, ovlfs, os.path.join(tmp, "m", str(i)), lower, os.path.join(U, f"up{i}"),
            os.path.join(U, f"wk{i}"), volatile=is_volatile(i),
            interval_ms=100 if i == 0 else args.interval_ms, shm=(i == 0)))
    t_mount = time.monotonic() - t0
    nvol = sum(is_volatile(i) for i in range(n))
    print(f"mounted {n} ovlfs ({nvol} volatile, {n - nvol} non-volatile) in {t_mount:.1f}s",
          flush=True)
    rss, pss = memory_kib([m.pid for m in mounts])
    print(f"daemons' memory: RSS {rss / 1024:.1f} MiB in all ({rss / n:.0f} KiB each), "
          f"PSS {pss / 1024:.1f} MiB ({pss / n:.0f} KiB each)", flush=True)

    # The error: mount 0 writes its victim; its writeback thread finds the failure.
    fds = wbovl.Fds(cleanup)
    fd = fds.open(os.path.join(mounts[0].mnt, "victim"), os.O_RDWR)
    upper.arm(victim)
    t_err = time.monotonic()
    checks.expect("write(2) of the victim succeeds", os.pwrite(fd, b"v" * MiB, 0), MiB)
    wbovl.wait_for("the error to be recorded",
                   lambda: mounts[n - 1].status()["upper"]["errors"] >= 1)
    t_found = time.monotonic() - t_err
    upper.disarm()

    rounds = []
    for r in (1, 2):
        got = []
        for m in mounts:
            got.append(wbovl.syncfs_ioctl(m.mnt))  # a new fd each time
        t_last = time.monotonic() - t_err
        rounds.append((got, t_last))
    for r, (got, t_last) in enumerate(rounds, 1):
        vol = [g for i, g in enumerate(got) if is_volatile(i)]
        non = [g for i, g in enumerate(got) if not is_volatile(i)]
        print(f"round {r}: {sum(g != '0' for g in got)} of {n} mounts reported "
              f"(volatile {sum(g != '0' for g in vol)}/{len(vol)}: {sorted(set(vol))}, "
              f"non-volatile {sum(g != '0' for g in non)}/{len(non)}: {sorted(set(non))}); "
              f"last report {t_last:.2f}s after the write", flush=True)
    print(f"error recorded {t_found:.2f}s after the write", flush=True)
    (r1, _), (r2, _) = rounds
    checks.expect("round 1: mounts that did not report EIO",
                  [i for i in range(n) if r1[i] != "EIO"], [])
    checks.expect("round 2: volatile mounts that did not report EIO again",
                  [i for i in range(n) if is_volatile(i) and r2[i] != "EIO"], [])
    checks.expect("round 2: non-volatile mounts that reported it again",
                  [i for i in range(n) if not is_volatile(i) and r2[i] != "0"], [])
    st = mounts[n // 2].status()
    checks.expect("U's record counts exactly one error", st["upper"]["errors"], 1)
    checks.expect("every mount's status shows it", all(
        m.status()["mount"]["latest_errno"] == "EIO" for m in mounts[:: max(1, n // 10)]), True)
    fds.close_all()
    t0 = time.monotonic()
    for m in mounts:
        m.unmount()
    print(f"unmounted {n} in {time.monotonic() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
