#!/usr/bin/env python3
"""The ovlfs demo (scripts/demo runs it after building): four containers' overlays on
one real upper filesystem, one real writeback error, and what each mount reports.

  - the upper: ext4 on a loop device whose image lives on faultyfs (a tiny FUSE
    filesystem of the tests that fails writes to chosen blocks with EIO);
  - four ovlfs mounts over one "image" layer, each with its own upper and work
    directory on that ext4: two volatile (app1, app2), two not (db, web);
  - a small workload in each; then db writes its data file, whose blocks fail: the
    write(2) succeeds, the writeback fails, and db's writeback thread finds it;
  - then every mount is asked: fsync (an fd opened before), syncfs (the ioctl),
    `ovlfs sync`, `ovlfs status`.

Everything runs in a private mount namespace and is undone at the end (or on error,
SIGINT, SIGTERM): mounts, loop device, daemons, files.

Usage: wb_demo.py --ovlfs PATH --faultyfs PATH
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
MOUNTS = [("app1", True), ("app2", True), ("db", False), ("web", False)]


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--faultyfs", required=True)
    args = ap.parse_args()
    if os.geteuid() != 0:
        say("The demo mounts filesystems: run it as root (sudo scripts/demo).")
        return 1
    wblib.need_root_or_skip(skip_code=1)
    wblib.enter_private_namespace()
    with wblib.Cleanup() as cleanup:
        demo(cleanup, os.path.realpath(args.ovlfs), os.path.realpath(args.faultyfs))
        say("\ncleaning up: unmounting everything, detaching the loop device ...")
    say("done.")
    return 0


def demo(cleanup: wblib.Cleanup, ovlfs: str, faultyfs: str) -> None:
    tmp = cleanup.tmpdir("ovlfs-demo.")
    say("== ovlfs: a writeback error reaches every overlay on the upper filesystem ==\n")
    upper = wblib.eio_upper(cleanup, tmp, faultyfs=faultyfs)
    U = upper.mnt
    image = os.path.join(tmp, "image")
    os.makedirs(os.path.join(image, "etc"))
    with open(os.path.join(image, "etc", "motd"), "w") as f:
        f.write("hello from the image layer\n")
    for name, _ in MOUNTS:
        os.makedirs(os.path.join(U, name, "upper"))
        os.makedirs(os.path.join(U, name, "work"))
    victim = upper.preallocate("db/upper/data.db", MiB)
    say(f"upper filesystem: ext4 on {upper.loop.path} (image on faultyfs), mounted at {U}")

    mounts: dict[str, wbovl.Mount] = {}
    for name, volatile in MOUNTS:
        mounts[name] = wbovl.mount(cleanup, ovlfs, os.path.join(tmp, name), image,
                                   os.path.join(U, name, "upper"), os.path.join(U, name, "work"),
                                   volatile=volatile, interval_ms=200, shm=(name == "app1"))
        say(f"  mounted {name:<5} {'volatile' if volatile else 'non-volatile':<13} "
            f"at {mounts[name].mnt}  (ovlfs pid {mounts[name].pid})")

    say("\nworkload: each container writes a few files and fsyncs them")
    fds = wbovl.Fds(cleanup)
    before: dict[str, int] = {}
    for name, m in mounts.items():
        for i in range(5):
            p = os.path.join(m.mnt, f"log{i}.txt")
            with open(p, "w") as f:
                f.write(f"{name} line {i}\n" * 100)
                f.flush()
                os.fsync(f.fileno())
        with open(os.path.join(m.mnt, "etc", "motd"), "a") as f:  # a copy-up
            f.write(f"{name} was here\n")
        before[name] = fds.open(os.path.join(m.mnt, "log0.txt"), os.O_RDWR)
    dbf = fds.open(os.path.join(mounts["db"].mnt, "data.db"), os.O_RDWR)
    for name, m in mounts.items():
        wbovl.wait_for("writeback", lambda m=m: m.status()["dirty_files"] == 0)
    say("  all fsyncs returned 0; all data written back")

    say("\nthe error: db writes data.db, whose disk blocks now fail with EIO")
    upper.arm(victim)
    t0 = time.monotonic()
    n = os.pwrite(dbf, b"precious records\n" * (MiB // 17), 0)
    say(f"  write(2) of {n} bytes: success (the page cache took it)")
    wbovl.wait_for("the error", lambda: mounts["app1"].status()["upper"]["errors"] >= 1)
    found = time.monotonic() - t0
    upper.disarm()
    say(f"  {found:.2f}s later db's writeback thread finds it: sync_file_range -> EIO")
    say("  it is recorded in the upper filesystem's shared error word "
        f"({mounts['app1'].status()['upper']['shm']}): every ovlfs process on it knows\n")

    say("what each mount reports now (calls made left to right; each cell: first call /"
        " second call):\n")
    head = f"  {'mount':<6} {'mode':<13} {'fsync, fd from before':<22} {'syncfs ioctl':<13} " \
           f"{'ovlfs sync':<11} {'status: since mount':<20} {'its fsync+syncfs on the upper'}"
    say(head)
    say("  " + "-" * (len(head) - 2))
    for name, volatile in MOUNTS:
        m = mounts[name]
        fd = dbf if name == "db" else before[name]
        fs = f"{wbovl.errno_of(os.fsync, fd)} / {wbovl.errno_of(os.fsync, fd)}"
        sf = f"{wbovl.syncfs_ioctl(m.mnt)} / {wbovl.syncfs_ioctl(m.mnt)}"
        cli = " / ".join((out or "?") if rc else "0" for rc, out in (m.sync_cli(), m.sync_cli()))
        st = m.status()
        stat = f"{st['mount']['errors']} error, {st['mount']['latest_errno']}"
        c = st["host_calls"]
        say(f"  {name:<6} {'volatile' if volatile else 'non-volatile':<13} {fs:<22} {sf:<13} "
            f"{cli:<11} {stat:<20} {c['fsync'] + c['fdatasync'] + c['syncfs']}")
    say("""
  volatile mounts: every fsync and every syncfs fails, for ever (their data may
    be lost; they never sync the upper);
  non-volatile: fsync of the failed file reports it once per open file (db); a
    syncfs reports it once per open file and once to the first caller in each
    mount; other files' fsync (web) have nothing to report.
  A plain syncfs(2) on a FUSE mount never reaches ovlfs (the kernel answers 0);
  the ioctl and `ovlfs sync` give it its meaning.""")

    say(f"\n$ ovlfs status {mounts['app1'].mnt}")
    p = wblib.run([ovlfs, "status", mounts["app1"].mnt])
    say("  " + p.stdout.strip().replace("\n", "\n  "))

    say("\nunmount app1, then try to reuse its workdir (a volatile mount that saw an error):")
    fds.close_all()
    mounts["app1"].unmount()
    opts = wbovl.options(image, os.path.join(U, "app1", "upper"), os.path.join(U, "app1", "work"),
                         volatile=True)
    m, rc, msg = wbovl.try_mount(cleanup, ovlfs, os.path.join(tmp, "app1"), opts, shm=False)
    if m:
        m.unmount()
    say(f"  exit status {rc}: {msg}")
    for name in ("app2", "db", "web"):
        mounts[name].unmount()
    say("  (app2 ended cleanly, but the upper has had an error since it mounted, so its\n"
        "   workdir would be refused too; the kernel's overlayfs refuses every such workdir)")


if __name__ == "__main__":
    sys.exit(main())
