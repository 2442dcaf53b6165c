#!/usr/bin/env python3
"""Power cut during copy-up. ext4 with its journal (committed every second) on a loop
device on faultyfs holds the lower, the upper and the workdir of a non-volatile ovlfs
mount; a client appends one byte to each lower file, so that each is copied up. At a
random point of the run faultyfs cuts the power (every later write of the device is lost) and
the daemon is killed. After ext4 replays its journal from what reached the device,
every file in the upper holds its lower's whole content, with or without the appended
byte (or with a zero byte in its place: the append is not fsync'ed, and ext4 may
commit its new size before its data): no copy-up is ever visible with its data
missing, whatever the moment of the cut. (ovlfs writes a copy's data back and waits for it before the rename; see
copy_up.cc.) Where the upper has no journal (ext4 without one), a copy-up is
fsync'ed instead: checked through the daemon's count of the calls it made."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import foreground_daemon, overlay_dirs, read, start  # noqa: E402

NFILES, FILE_SIZE = 1500, 24 << 10

WORKER = r"""
import os, sys, time
lower, mnt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for i in range(n):
    try:
        fd = os.open(f"{mnt}/f{i}", os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"x")
        os.close(fd)
    except OSError:
        break  # the daemon is gone
    print(i, flush=True)
    time.sleep(0.001)  # a few journal commits (commit=1) happen during the run
"""


def content(seed: int, i: int) -> bytes:
    return random.Random(seed * 100003 + i).randbytes(FILE_SIZE)


def one_round(c, cl: wblib.Cleanup, args, rig: dict, r: int, cut_at: int) -> int:
    """One cut; returns how many copies the upper held after it."""
    ext4 = rig["mnt"]
    lower, upper, work, mnt = (f"{ext4}/l", f"{ext4}/u{r}", f"{ext4}/w{r}", rig["ovl"])
    os.mkdir(upper)
    os.mkdir(work)
    daemon = foreground_daemon(cl, args.ovlfs, mnt, lower, upper, work)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, lower, mnt, str(NFILES)],
                              stdout=subprocess.PIPE, text=True)
    worker.stdout.readline()  # "ready"
    t0 = time.monotonic()
    appended = 0
    while appended < cut_at and worker.stdout.readline():
        appended += 1
    secs = time.monotonic() - t0
    rig["faulty"].command("cut")  # nothing written from now on reaches the device
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    appended += len(worker.stdout.read().split())
    worker.wait(timeout=60)
    wblib.umount(mnt)
    # The device as it was at the cut: ext4 goes away (its last writes are lost), the
    # power comes back, and a new mount replays the journal.
    wblib.umount(ext4)
    rig["loop"].detach()
    rig["faulty"].clear()
    rig["loop"] = wblib.attach_loop(cl, rig["image"])
    wblib.mount(cl, rig["loop"].path, ext4, "ext4", "errors=continue,commit=1")

    copied = sorted(n for n in os.listdir(upper) if n.startswith("f"))
    bad = []
    for n in copied:
        want = content(args.seed, int(n[1:]))
        got = read(f"{upper}/{n}")
        # The append itself is not fsync'ed: ext4 may commit its new size before
        # the block it wrote (allocated unwritten, converted at I/O completion), so
        # after the cut it may read as a zero. The copy must be whole either way.
        if got not in (want, want + b"x", want + b"\0"):
            diff = next((i for i, (a, b) in enumerate(zip(got, want + b"x")) if a != b),
                        min(len(got), len(want) + 1))
            bad.append(f"{n}: {len(got)} bytes, not the lower's {len(want)} (+1): first "
                       f"difference at byte {diff} ({got[diff:diff + 8]!r})")
    c.expect(not bad, f"round {r}: every copy in the upper is whole after the cut "
             f"({len(bad)} of {len(copied)} not: {bad[:5]})")
    c.expect(len(copied) <= appended + 1,
             f"round {r}: no more copies ({len(copied)}) than appends started "
             f"({appended + 1})")
    print(f"round {r}: cut {secs:.2f}s in, after {appended} appends; "
          f"{len(copied)} copies in the upper after the replay, {len(bad)} broken", flush=True)
    return len(copied)


def sync_calls(c, cl: wblib.Cleanup, args, t: str, journal: bool) -> None:
    """One copy-up on an ext4 with or without a journal; which sync it used."""
    name = "journal" if journal else "nojournal"
    img, top = f"{t}/{name}.img", f"{t}/{name}"
    os.mkdir(top)
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    loop = wblib.attach_loop(cl, img)
    wblib.run(wblib.MKFS_EXT4 + ([] if journal else ["-O", "^has_journal"]) + [loop.path])
    wblib.mount(cl, loop.path, top, "ext4")
    overlay_dirs(top)
    with open(f"{top}/l/f", "wb") as f:
        f.write(content(args.seed, 0))
    mnt = f"{top}/m"
    wblib.run([args.ovlfs, "-o", f"lowerdir={top}/l,upperdir={top}/u,workdir={top}/w", mnt])
    cl.push(f"umount {mnt}", lambda: wblib.umount(mnt))
    fd = os.open(f"{mnt}/f", os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    calls = json.loads(wblib.run([args.ovlfs, "status", mnt, "--json"]).stdout)["host_calls"]
    wblib.umount(mnt)
    c.expect(read(f"{top}/u/f") == content(args.seed, 0), f"{name}: the copy is whole")
    if journal:
        c.expect(calls["fsync"] == 0 and calls["sync_file_range"] >= 1,
                 f"ext4 with a journal: the copy-up written back without an fsync ({calls})")
    else:
        c.expect(calls["fsync"] == 1, f"ext4 without a journal: the copy-up fsync'ed ({calls})")


def main() -> int:
    args, c = start([("--faultyfs", {"required": True}),
                     ("--rounds", {"type": int, "default": 3}),
                     ("--seed", {"type": int, "default": int(time.time())})])
    print(f"seed {args.seed} (replay with --seed {args.seed})", flush=True)
    rnd = random.Random(args.seed)
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-powercut.")
        for journal in (True, False):
            sync_calls(c, cl, args, t, journal)
        up = wblib.eio_upper(cl, t, faultyfs=args.faultyfs, image_size=256 << 20,
                             mount_options="errors=continue,commit=1")
        rig = {"mnt": up.mnt, "faulty": up.faulty, "loop": up.loop, "image": up.image,
               "ovl": f"{t}/m"}
        os.mkdir(rig["ovl"])
        os.mkdir(f"{up.mnt}/l")
        for i in range(NFILES):
            with open(f"{up.mnt}/l/f{i}", "wb") as f:
                f.write(content(args.seed, i))
        up.settle()  # the lower is on the device before any cut
        total = 0
        for r in range(args.rounds):
            total += one_round(c, cl, args, rig, r, rnd.randrange(NFILES // 2, NFILES * 9 // 10))
        c.expect(total > 0, f"some copies were committed before a cut ({total}), "
                 "so the check above looked at something")
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
