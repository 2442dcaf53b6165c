#!/usr/bin/env python3
"""mount.wb.table.{eio,enospc}: SPEC 2's table, every cell, with one REAL writeback
error, volatile and non-volatile ovlfs mounts sharing one upper filesystem.

The upper is ext4 on a loop device (wblib: image on faultyfs for EIO, image on a full
tmpfs for ENOSPC). Several ovlfs mounts, each with its own upper and work directory
on that ext4, share it:

  A   volatile          the volatile column (fsync, fdatasync, syncfs, ovlfs sync)
  B   non-volatile      the victim file is in B's upper: B writes it, B's writeback
                        thread finds the error; the non-volatile fsync column
  C   non-volatile      the non-volatile syncfs column (ioctl on directory fds)
  R   non-volatile, errors=remount-ro;  RV  volatile, errors=remount-ro
  V1  volatile, ended cleanly before the error      (remount: refused)
  K   volatile, its daemon killed before the error  (remount: refused)
  D   volatile, mounted after the error while nobody had seen it
  E   non-volatile, mounted after the error

For each call, each kind of fd (opened before the error; after it while no watcher
had reported it; after it was reported) and first and second call, the test records
what ovlfs answered, prints the table as observed, and asserts every cell.

With --rootless, root makes the rig, the directories and the victim and hands them to
a normal user (uid 65534), and the rest runs as that user in a user namespace of its
own (rootless.py): the mounts (user.overlay.* metadata, no passthrough, the user's own
record /dev/shm/ovlfs-wb-u65534-*) and every call; root only strikes and ends the
error when the user part asks.

Usage: wb_table.py --ovlfs PATH --faultyfs PATH --rig eio|enospc [--rootless]
       (root; 77 = skip)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rootless  # noqa: E402
import wblib  # noqa: E402
import wbovl  # noqa: E402

MiB = 1 << 20
DATA = (b"ovlfs writeback-error table " * (MiB // 28 + 1))[:MiB]
INTERVAL_MS = 100


class Table:
    """Rows of (call, fd kind) x columns, each cell "first / second" call; every cell
    is compared with what SPEC 2 says."""

    def __init__(self, checks: wblib.Checks) -> None:
        self.checks = checks
        self.rows: list[tuple[str, str, dict[str, str]]] = []
        self.index: dict[tuple[str, str], dict[str, str]] = {}

    def cell(self, call: str, fd: str, col: str, observed: str, expected: str) -> None:
        key = (call, fd)
        if key not in self.index:
            self.index[key] = {}
            self.rows.append((call, fd, self.index[key]))
        ok = observed == expected
        self.index[key][col] = observed if ok else f"{observed} (want {expected})"
        self.checks.expect(f"{call} | {fd} | {col}", observed, expected)

    # The order the table is printed in (rows not listed keep their order, last).
    CALLS = ["mount while U has an unseen error", "  ...its fsync, then syncfs",
             "  ...U's error still unseen after", "fsync", "fdatasync", "syncfs (ioctl)",
             "ovlfs sync MNT", "plain syncfs(2) on M", "close(2)"]
    FDS = ["opened before the error", "opened after, while unseen", "opened after it was seen"]

    def print(self, title: str) -> None:
        def key(row):
            call, fd = row[0], row[1]
            return (self.CALLS.index(call) if call in self.CALLS else len(self.CALLS),
                    self.FDS.index(fd) if fd in self.FDS else len(self.FDS))
        self.rows.sort(key=key)
        cols = ["volatile M", "non-volatile M"]
        w0 = max(len(r[0]) for r in self.rows)
        w1 = max(len(r[1]) for r in self.rows)
        w2 = max([len(c) for c in cols] + [len(v) for r in self.rows for v in r[2].values()])
        print(f"\n{title}\n")
        head = f"{'call':<{w0}}  {'fd':<{w1}}  " + "  ".join(f"{c:<{w2}}" for c in cols)
        print(head)
        print("-" * len(head))
        for call, fd, cells in self.rows:
            print(f"{call:<{w0}}  {fd:<{w1}}  " +
                  "  ".join(f"{cells.get(c, ''):<{w2}}" for c in cols))
        print(flush=True)


def twice(fn, *args) -> str:
    return f"{fn(*args)} / {fn(*args)}"


def fsync_of(fd: int) -> str:
    return wbovl.errno_of(os.fsync, fd)


def fdatasync_of(fd: int) -> str:
    return wbovl.errno_of(os.fdatasync, fd)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--faultyfs", required=True)
    ap.add_argument("--rig", choices=["eio", "enospc"], default="eio")
    ap.add_argument("--rootless", action="store_true",
                    help="the mounts and every call as a normal user (uid 65534) in a user "
                         "namespace of its own (rootless.py); root only makes the rig and "
                         "strikes")
    ap.add_argument("--rig-dir", help="(the user part of --rootless: where root made the rig)")
    args = ap.parse_args()
    checks = wblib.Checks()
    if rootless.in_user_part():
        print(rootless.describe(), flush=True)
        with wblib.Cleanup() as cleanup:
            with checks.scenario(f"SPEC 2 table, {args.rig} rig, as a normal user"):
                tmp = args.rig_dir
                table(cleanup, checks, args, tmp, os.path.join(tmp, "ext4"),
                      lambda: rootless.call("strike"), lambda: rootless.call("end"))
        return checks.summary()
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    with wblib.Cleanup() as cleanup:
        if args.rootless:
            home = rootless.setup(cleanup)
            with checks.scenario(f"SPEC 2 table, {args.rig} rig: root's set-up"):
                tmp, upper, strike, end = prepare(cleanup, args)
                # The user's: the directories on the ext4, the lower, and where it
                # makes its mount points. Root keeps the rig's own (tmpfs, faultyfs).
                rootless.give(upper.mnt)
                rootless.give(os.path.join(tmp, "lower"))
                rootless.give(tmp, recursive=False)
                os.chmod(tmp, 0o755)
                return rootless.rerun(cleanup, home, __file__,
                                      sys.argv[1:] + ["--rig-dir", tmp],
                                      handlers={"strike": strike, "end": end})
            return checks.summary()
        with checks.scenario(f"SPEC 2 table, {args.rig} rig"):
            tmp, upper, strike, end = prepare(cleanup, args)
            table(cleanup, checks, args, tmp, upper.mnt, strike, end)
    return checks.summary()


def prepare(cleanup: wblib.Cleanup, args):
    """Root's part: the rig, the lower, every mount's upper and work directory on the
    rig's ext4, the victim (preallocated in B's upper), and a workdir as the kernel's
    volatile overlayfs leaves it. Returns (tmp, the rig, strike, end): strike() makes
    writes of the victim's blocks fail from now on, end() stops it."""
    tmp = cleanup.tmpdir("ovlfs-wbtable.")
    if args.rig == "eio":
        upper = wblib.eio_upper(cleanup, tmp, faultyfs=os.path.realpath(args.faultyfs))
    else:
        upper = wblib.enospc_upper(cleanup, tmp)
    U = upper.mnt
    lower = os.path.join(tmp, "lower")
    os.makedirs(lower)
    with open(os.path.join(lower, "lowerfile"), "w") as f:
        f.write("lower\n")
    names = ["A", "B", "C", "R", "RV", "V1", "K", "D", "E", "W", "KM"]
    for n in names:
        os.makedirs(os.path.join(U, f"up-{n}"))
        os.makedirs(os.path.join(U, f"wk-{n}"))
    for n in ["A", "C", "R", "RV", "D", "E"]:
        with open(os.path.join(U, f"up-{n}", "file"), "w") as f:
            f.write("written before the error\n")
    victim = upper.preallocate("up-B/victim", MiB)
    # The kernel's own volatile marker, as its overlayfs leaves it (no ovlfs record).
    os.makedirs(os.path.join(U, "wk-KM", "work", "incompat", "volatile", "dirty"))
    if args.rig == "eio":
        return tmp, upper, lambda: upper.arm(victim) and None, upper.disarm
    return tmp, upper, lambda: upper.fill() and None, upper.free


def table(cleanup: wblib.Cleanup, checks: wblib.Checks, args, tmp: str, U: str,
          strike, end) -> None:
    """The mounts and every call of the table (as root, or as the user)."""
    ovlfs = os.path.realpath(args.ovlfs)
    err = "EIO" if args.rig == "eio" else "ENOSPC"
    lower = os.path.join(tmp, "lower")

    def mnt(n: str) -> str:
        return os.path.join(tmp, f"m-{n}")

    def mount(n: str, volatile: bool, errors: str | None = None) -> wbovl.Mount:
        return wbovl.mount(cleanup, ovlfs, mnt(n), lower, os.path.join(U, f"up-{n}"),
                           os.path.join(U, f"wk-{n}"), volatile=volatile,
                           interval_ms=INTERVAL_MS, errors=errors)

    def remount(n: str, volatile: bool) -> tuple[int, str]:
        opts = wbovl.options(lower, os.path.join(U, f"up-{n}"), os.path.join(U, f"wk-{n}"),
                             volatile=volatile, interval_ms=INTERVAL_MS)
        m, rc, msg = wbovl.try_mount(cleanup, ovlfs, mnt(n), opts)
        if m:
            m.unmount()
        return rc, msg

    # --- before the error ---------------------------------------------------------
    A = mount("A", True)
    B = mount("B", False)
    C = mount("C", False)
    R = mount("R", False, "remount-ro")
    RV = mount("RV", True, "remount-ro")
    V1 = mount("V1", True)
    K = mount("K", True)
    V1.unmount()                       # ends cleanly: record "clean"
    K.kill()                           # never ends: record stays "dirty"
    wblib.umount(mnt("K"))
    fds = wbovl.Fds(cleanup)  # closed at cleanup, before the unmounts
    keep_open = fds.open

    fA = keep_open(os.path.join(mnt("A"), "file"), os.O_RDWR)
    fA2 = keep_open(os.path.join(mnt("A"), "file"), os.O_RDWR)
    dA = keep_open(mnt("A"), os.O_RDONLY | os.O_DIRECTORY)
    fB1 = keep_open(os.path.join(mnt("B"), "victim"), os.O_RDWR)
    fB2 = keep_open(os.path.join(mnt("B"), "victim"), os.O_RDWR)
    dC = keep_open(mnt("C"), os.O_RDONLY | os.O_DIRECTORY)
    fR = keep_open(os.path.join(mnt("R"), "file"), os.O_RDWR)
    fRV = keep_open(os.path.join(mnt("RV"), "file"), os.O_RDWR)
    checks.expect("remount-ro mount: write before the error", os.pwrite(fR, b"ok\n", 0), 3)
    checks.expect("remount-ro volatile mount: write before the error",
                  os.pwrite(fRV, b"ok\n", 0), 3)
    for m in (A, B, C, R, RV):  # nothing dirty but the victim when the error strikes
        wbovl.wait_for("writeback of earlier writes", lambda m=m: m.status()["dirty_files"] == 0)
    checks.expect("no upper error yet (A's status)", A.status()["upper"]["errors"], 0)
    if rootless.in_user_part():
        # What a user's mount is: its metadata in user.overlay.*, no passthrough, and
        # the user's own error record (0600, the user's), shared by all its mounts.
        sa = A.status()
        uid = rootless.host_ids()[0]
        rec = sa["upper"]["shm"]
        st = os.stat(rec)
        checks.expect("a user's mount: metadata xattrs", sa["metadata_xattrs"], "user.overlay")
        checks.expect("a user's mount: passthrough", sa["passthrough"], False)
        checks.expect("a user's mount: its record is the user's own",
                      (os.path.basename(rec).startswith(f"ovlfs-wb-u{uid}-"), st.st_uid,
                       oct(st.st_mode & 0o777)), (True, os.getuid(), "0o600"))
        checks.expect("a user's mounts share one record",
                      {m.status()["upper"]["shm"] for m in (A, B, C, R, RV)}, {rec})

    # --- the error: B writes the victim, B's writeback thread finds the failure ----
    t0 = time.monotonic()
    strike()
    checks.expect("write(2) of the victim through B succeeds", os.pwrite(fB1, DATA, 0), len(DATA))
    st = wbovl.wait_for("the upper error to be found",
                        lambda: (s := A.status())["upper"]["errors"] >= 1 and s)
    found = time.monotonic() - t0
    end()
    print(f"upper error found {found:.2f}s after the write (writeback_interval "
          f"{INTERVAL_MS} ms): {st['upper']['latest_errno']}", flush=True)
    checks.expect("the upper error is the rig's", st["upper"]["latest_errno"], err)
    checks.expect("nobody has reported it yet (U's word not SEEN)", wbovl.seen(st), False)

    table = Table(checks)
    V, N = "volatile M", "non-volatile M"

    # Mounting while U has an error nobody has seen: both kinds mount; they report only
    # later errors, and the error stays unseen for U's other watchers.
    D = mount("D", True)
    E = mount("E", False)
    table.cell("mount while U has an unseen error", "-", V, "mounts", "mounts")
    table.cell("mount while U has an unseen error", "-", N, "mounts", "mounts")
    table.cell("  ...its fsync, then syncfs", "new fd", V,
               fsync_of(keep_open(os.path.join(mnt("D"), "file"), os.O_RDWR)) + " / " +
               wbovl.syncfs_ioctl(mnt("D")), "0 / 0")
    table.cell("  ...its fsync, then syncfs", "new fd", N,
               fsync_of(keep_open(os.path.join(mnt("E"), "file"), os.O_RDWR)) + " / " +
               wbovl.syncfs_ioctl(mnt("E")), "0 / 0")
    table.cell("  ...U's error still unseen after", "-", V, str(not wbovl.seen(D.status())), "True")
    table.cell("  ...U's error still unseen after", "-", N, str(not wbovl.seen(E.status())), "True")

    # fds opened after the error, while nobody has seen it.
    fA_u = keep_open(os.path.join(mnt("A"), "file"), os.O_RDWR)
    fA_u2 = keep_open(os.path.join(mnt("A"), "file"), os.O_RDWR)
    dA_u = keep_open(mnt("A"), os.O_RDONLY | os.O_DIRECTORY)
    fB_u = keep_open(os.path.join(mnt("B"), "victim"), os.O_RDONLY)
    fB_u2 = keep_open(os.path.join(mnt("B"), "victim"), os.O_RDONLY)
    dC_u = keep_open(mnt("C"), os.O_RDONLY | os.O_DIRECTORY)

    BEFORE, UNSEEN, SEEN = "opened before the error", "opened after, while unseen", \
        "opened after it was seen"

    # fsync / fdatasync, fds opened before and after-while-unseen.
    table.cell("fsync", BEFORE, V, twice(fsync_of, fA), f"{err} / {err}")
    table.cell("fsync", BEFORE, N, twice(fsync_of, fB1), f"{err} / 0")
    table.cell("fsync", UNSEEN, V, twice(fsync_of, fA_u), f"{err} / {err}")
    table.cell("fsync", UNSEEN, N, twice(fsync_of, fB_u), f"{err} / 0")
    table.cell("fdatasync", BEFORE, V, twice(fdatasync_of, fA2), f"{err} / {err}")
    table.cell("fdatasync", BEFORE, N, twice(fdatasync_of, fB2), f"{err} / 0")
    table.cell("fdatasync", UNSEEN, V, twice(fdatasync_of, fA_u2), f"{err} / {err}")
    table.cell("fdatasync", UNSEEN, N, twice(fdatasync_of, fB_u2), f"{err} / 0")

    # syncfs through the ioctl: C's directory fd opened before (the mount's first
    # caller), then the one opened while unseen. Reporting marks U's word SEEN.
    table.cell("syncfs (ioctl)", BEFORE, V, twice(wbovl.syncfs_ioctl_fd, dA), "EIO / EIO")
    table.cell("syncfs (ioctl)", BEFORE, N, twice(wbovl.syncfs_ioctl_fd, dC), f"{err} / 0")
    table.cell("syncfs (ioctl)", UNSEEN, V, twice(wbovl.syncfs_ioctl_fd, dA_u), "EIO / EIO")
    table.cell("syncfs (ioctl)", UNSEEN, N, twice(wbovl.syncfs_ioctl_fd, dC_u), f"{err} / 0")
    checks.expect("U's error is SEEN once a non-volatile syncfs reported it",
                  wbovl.seen(A.status()), True)

    # fds opened after the error was seen.
    fA_s = keep_open(os.path.join(mnt("A"), "file"), os.O_RDWR)
    dA_s = keep_open(mnt("A"), os.O_RDONLY | os.O_DIRECTORY)
    fB_s = keep_open(os.path.join(mnt("B"), "victim"), os.O_RDONLY)
    dC_s = keep_open(mnt("C"), os.O_RDONLY | os.O_DIRECTORY)
    table.cell("fsync", SEEN, V, twice(fsync_of, fA_s), f"{err} / {err}")
    table.cell("fsync", SEEN, N, twice(fsync_of, fB_s), "0 / 0")
    table.cell("fdatasync", SEEN, V, twice(fdatasync_of, fA_s), f"{err} / {err}")
    table.cell("fdatasync", SEEN, N, twice(fdatasync_of, fB_s), "0 / 0")
    table.cell("syncfs (ioctl)", SEEN, V, twice(wbovl.syncfs_ioctl_fd, dA_s), "EIO / EIO")
    table.cell("syncfs (ioctl)", SEEN, N, twice(wbovl.syncfs_ioctl_fd, dC_s), "0 / 0")

    # fsync of a directory fd, and of a file that is not the victim.
    table.cell("fsync", "directory fd", V, twice(fsync_of, dA), f"{err} / {err}")
    table.cell("fsync", "directory fd", N, twice(fsync_of, dC), "0 / 0")
    fA_l = keep_open(os.path.join(mnt("A"), "lowerfile"), os.O_RDONLY)
    fC_l = keep_open(os.path.join(mnt("C"), "lowerfile"), os.O_RDONLY)
    fC = keep_open(os.path.join(mnt("C"), "file"), os.O_RDWR)
    table.cell("fsync", "a lower file", V, twice(fsync_of, fA_l), f"{err} / {err}")
    table.cell("fsync", "a lower file", N, twice(fsync_of, fC_l), "0 / 0")
    table.cell("fsync", "another upper file", N, twice(fsync_of, fC), "0 / 0")

    # `ovlfs sync MNT`: a new fd each call; B has not synced yet (its first caller).
    def cli(m: wbovl.Mount) -> str:
        rc, out = m.sync_cli()
        return f"{out}" if rc != 0 else "0"
    table.cell("ovlfs sync MNT", "new fd each call", V, twice(cli, A), "EIO / EIO")
    table.cell("ovlfs sync MNT", "new fd each call", N, twice(cli, B), f"{err} / 0")
    table.cell("ovlfs sync MNT", "mounted after the error", V, twice(cli, D), "0 / 0")
    table.cell("ovlfs sync MNT", "mounted after the error", N, twice(cli, E), "0 / 0")
    rc, _ = A.sync_cli()
    checks.expect("ovlfs sync exits non-zero on error", rc != 0, True)
    table.cell("plain syncfs(2) on M", "(kernel answers)", V,
               wbovl.errno_of(wblib.syncfs, dA), "0")
    table.cell("plain syncfs(2) on M", "(kernel answers)", N,
               wbovl.errno_of(wblib.syncfs, dC), "0")

    # errors=remount-ro: every later write in M fails with EROFS.
    for col, m, fd in ((V, "RV", fRV), (N, "R", fR)):
        got = [wbovl.errno_of(os.pwrite, fd, b"x", 0),
               wbovl.errno_of(lambda: os.close(os.open(os.path.join(mnt(m), "new"),
                                                        os.O_CREAT | os.O_WRONLY, 0o644))),
               wbovl.errno_of(os.mkdir, os.path.join(mnt(m), "newdir")),
               wbovl.errno_of(os.chmod, os.path.join(mnt(m), "file"), 0o600),
               wbovl.errno_of(os.unlink, os.path.join(mnt(m), "file"))]
        table.cell("errors=remount-ro: write/create/mkdir/chmod/unlink", "after the error", col,
                   "/".join(got), "/".join(["EROFS"] * 5))

    # status.
    sa, sb, sd = A.status(), B.status(), D.status()
    table.cell("status: volatile, mount errors, latest", "-", V,
               f"{sa['volatile']}, {sa['mount']['errors']}, {sa['mount']['latest_errno']}",
               f"True, 1, {err}")
    table.cell("status: volatile, mount errors, latest", "-", N,
               f"{sb['volatile']}, {sb['mount']['errors']}, {sb['mount']['latest_errno']}",
               f"False, 1, {err}")
    table.cell("status: mounted after the error", "-", V,
               f"{sd['mount']['errors']}, {sd['mount']['latest_errno']}, "
               f"upper {sd['upper']['errors']} {sd['upper']['latest_errno']}",
               f"0, 0, upper 1 {err}")
    udev = os.stat(U).st_dev
    for col, st in ((V, sa), (N, sb)):
        table.cell("status: upper device", "-", col, st["upper"]["device"],
                   f"{os.major(udev)}:{os.minor(udev)}")
    table.cell("status: when, dirty files", "-", V,
               f"{bool(sa['upper']['latest_time'])}, {sa['dirty_files']}", "True, 0")
    table.cell("status: upper fsync+fdatasync+syncfs calls", "-", V,
               str(sum(sa["host_calls"][k] for k in ("fsync", "fdatasync", "syncfs"))), "0")
    nb = sb["host_calls"]
    table.cell("status: upper fsync+fdatasync+syncfs calls", "-", N,
               str(nb["fsync"] + nb["fdatasync"] + nb["syncfs"] > 0), "True")

    # close(2): always 0.
    closed = fds.close_all()
    table.cell("close(2)", "every fd above", V, "0" if set(closed) == {"0"} else str(closed), "0")
    table.cell("close(2)", "every fd above", N, "0" if set(closed) == {"0"} else str(closed), "0")

    # --- remounting a workdir that a volatile mount used --------------------------
    A.unmount()
    D.unmount()
    W = mount("W", True)   # ends cleanly after the error; its record then claims another boot
    W.unmount()
    rec = os.path.join(U, "wk-W", "work", "incompat", "volatile", "ovlfs")
    with open(rec) as f:
        text = f.read()
    with open(rec, "w") as f:
        f.write(re.sub(r"(?m)^boot_id .*$", "boot_id 00000000-0000-0000-0000-000000000000", text))

    def refused(n: str, volatile: bool, why: str) -> str:
        rc, msg = remount(n, volatile)
        if rc == 0:
            return "allowed"
        ok = "(EINVAL)" in msg and why in msg and "\n" not in msg
        return f"refused: {why}" if ok else f"refused: {msg!r}"

    REUSE = "mount again with a volatile M's workdir"
    for col, vol in ((V, True), (N, False)):
        table.cell(REUSE, "it ended with an upper error", col,
                   refused("A", vol, "ended with an upper writeback error"),
                   "refused: ended with an upper writeback error")
        table.cell(REUSE, "ended cleanly, U had an error since", col,
                   refused("V1", vol, "has had a writeback error since"),
                   "refused: has had a writeback error since")
        table.cell(REUSE, "its ovlfs was killed", col,
                   refused("K", vol, "did not end cleanly"), "refused: did not end cleanly")
        table.cell(REUSE, "ended cleanly in another boot", col,
                   refused("W", vol, "earlier boot"), "refused: earlier boot")
        table.cell(REUSE, "made by the kernel's overlayfs", col,
                   refused("KM", vol, "no ovlfs record"), "refused: no ovlfs record")
    table.cell(REUSE, "ended cleanly, no error since", V, refused("D", True, ""), "allowed")
    table.cell(REUSE, "ended cleanly, no error since", N, refused("D", False, ""), "allowed")
    checks.expect("a non-volatile remount drops the volatile marker",
                  os.path.exists(os.path.join(U, "wk-D", "work", "incompat")), False)

    table.print(f"SPEC 2 as observed: ovlfs, one real {err} writeback error ({args.rig} rig), "
                f"volatile and non-volatile mounts on one ext4 upper; each cell: "
                f"first call / second call")
    for m in (B, C, R, RV, E):
        m.unmount()
    shutil.rmtree(lower)


if __name__ == "__main__":
    sys.exit(main())
