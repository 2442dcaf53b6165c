#!/usr/bin/env python3
"""mount.rootless.users: writeback-error records across users (issue 18), with one REAL
writeback error on one shared ext4 upper (the EIO rig).

Who mounts what on the rig's ext4 U, each with its own upper and work directory:

  R    root, in the test's private mount namespace       (root's record)
  A1   user A (uid 65534) as root of a user namespace    (unshare -Urm: A's record)
  A2   user A as a plain user, through fusermount3       (A's record too)
  B1   user B (uid 64998) as root of a user namespace    (B's record)

What it shows, as SPEC 2 and the README's "Without root" say:
  * each user has one record per upper filesystem, /dev/shm/ovlfs-wb-u<uid>-<dev>-<uuid>,
    a regular file of that user's with mode 0600, shared by all of the user's mounts
    on U whichever way they were made (A1 and A2); root's is ovlfs-wb-<dev>-<uuid>;
  * no user can open another user's record or root's (EACCES), for reading or writing;
  * a name of A's record that B made first (a file of any mode, or a symlink) is never
    used: A's mounts, both ways, refuse with one line naming the record, nothing is
    mounted, and B's file is left as it was; where A can open B's file (mode 0666),
    the line says whose it is ("belongs to uid 64998"), as the README's example;
  * root replaces a squatter: root's mount removes the file B made under root's name
    and makes its own;
  * an error that root's mount found (root's record) is not in A's or B's records: their
    mounts' status, fsync and volatile syncfs do not report it; a non-volatile syncfs of
    A's syncs U, and the kernel reports U's error to that syncfs(2), as to any caller;
  * an error that A's mount found is in A's record at once, so that A's other mount
    (the other way) reports it; root's record and B's do not change.

Usage: wb_users.py --ovlfs PATH --faultyfs PATH   (root; 77 = skip)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rootless  # noqa: E402
import wblib  # noqa: E402
import wbovl  # noqa: E402

MiB = 1 << 20
DATA = (b"ovlfs writeback-error records across users " * (MiB // 43 + 1))[:MiB]
A, B = rootless.USER, rootless.OTHER_USER
INTERVAL_MS = 100


# ---------------------------------------------------------------------------------------
# The users' side: an Agent (rootless.py) that runs these for the root part.

class UserSide:
    def __init__(self, ovlfs: str, plain: bool):
        self.ovlfs, self.plain = ovlfs, plain
        self.mounts: dict[str, wbovl.Mount] = {}
        self.fds: dict[str, int] = {}

    def whoami(self) -> str:
        if self.plain:
            return f"uid {os.getuid()}, no user namespace"
        return rootless.describe()

    def mount(self, mnt: str, lower: str, upper: str, work: str, volatile: bool) -> list:
        """Mounts; [exit status, ovlfs's message] (0, "" once mounted)."""
        m = wbovl.Mount(self.ovlfs, mnt, wbovl.options(lower, upper, work, volatile=volatile,
                                                       interval_ms=INTERVAL_MS))
        m.log = os.path.join(os.environ["HOME"], os.path.basename(mnt) + ".ovlfs.log")
        rc, msg = m.start()
        if rc == 0:
            self.mounts[mnt] = m
        return [rc, msg]

    def mounted(self, mnt: str) -> bool:
        return wblib.is_mountpoint(mnt)

    def unmount(self, mnt: str) -> None:
        m = self.mounts.pop(mnt)
        cmd = ["fusermount3", "-u", mnt] if self.plain else ["umount", mnt]
        for _ in range(100):
            if wblib.run(cmd, check=False).returncode == 0 or not m.mounted():
                break
            time.sleep(0.05)
        m.wait_exit()

    def status(self, mnt: str) -> dict:
        return self.mounts[mnt].status()

    def open_errno(self, path: str, how: str) -> str:
        """Opens path (O_RDONLY or O_RDWR, never following a symlink) and closes it:
        "0" or the errno's name."""
        flags = {"r": os.O_RDONLY, "rw": os.O_RDWR}[how] | os.O_NOFOLLOW | os.O_NONBLOCK

        def once() -> None:
            os.close(os.open(path, flags))
        return wbovl.errno_of(once)

    def read_errno(self, path: str) -> str:
        def once() -> None:
            with open(path, "rb") as f:
                f.read()
        return wbovl.errno_of(once)

    def squat(self, path: str, mode: int) -> list:
        """Makes path first (a file of this user's, `mode`, holding a marker) and keeps
        it open; [inode, mode] as made."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, mode)
        os.write(fd, b"squatter's own data\n")
        self.fds[path] = fd
        st = os.fstat(fd)
        return [st.st_ino, st.st_mode & 0o7777]

    def squat_symlink(self, path: str, target: str) -> None:
        with open(target, "wb") as f:
            f.write(b"squatter's own data\n")
        os.symlink(target, path)

    def squatted_file(self, path: str) -> list:
        """The kept file: [its inode, links, size, data] (links 0: someone removed it)."""
        fd = self.fds[path]
        st = os.fstat(fd)
        return [st.st_ino, st.st_nlink, st.st_size, os.pread(fd, 4096, 0).decode("latin-1")]

    def unsquat(self, path: str) -> None:
        """Closes the kept file; removes the name if it is still this user's."""
        fd = self.fds.pop(path, None)
        if fd is not None:
            os.close(fd)
        try:
            if os.lstat(path).st_uid == os.getuid():
                os.unlink(path)
        except FileNotFoundError:
            pass

    def write(self, path: str) -> int:
        fd = os.open(path, os.O_WRONLY)
        try:
            return os.pwrite(fd, DATA, 0)
        finally:
            os.close(fd)

    def keep_open(self, path: str) -> None:
        self.fds[path] = os.open(path, os.O_RDWR)

    def close_kept(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def fsync_kept(self, path: str) -> str:
        return wbovl.errno_of(os.fsync, self.fds[path])

    def syncfs(self, mnt: str) -> str:
        return wbovl.syncfs_ioctl(mnt)

    def record_errors(self, mnt: str) -> list:
        st = self.status(mnt)
        return [st["upper"]["errors"], st["upper"]["latest_errno"], st["mount"]["errors"]]


def agent_main(args) -> int:
    side = UserSide(os.path.realpath(args.ovlfs), args.plain)
    handlers = {n: getattr(side, n) for n in dir(side) if not n.startswith("_")
                and callable(getattr(side, n))}
    return rootless.serve(handlers)


# ---------------------------------------------------------------------------------------
# Root's side


def one_line(msg: str) -> bool:
    return bool(msg) and "\n" not in msg.strip()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--faultyfs")
    ap.add_argument("--agent", action="store_true", help="(a user's side)")
    ap.add_argument("--plain", action="store_true", help="(a user's side, no user namespace)")
    args = ap.parse_args()
    if args.agent:
        return agent_main(args)
    if not args.faultyfs:
        ap.error("--faultyfs is required")
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    checks = wblib.Checks()
    with wblib.Cleanup() as cl:
        with checks.scenario("error records across users"):
            run(cl, checks, args)
    return checks.summary()


def run(cl: wblib.Cleanup, checks: wblib.Checks, args) -> None:
    ovlfs = os.path.realpath(args.ovlfs)
    home_a = rootless.setup(cl, A, A, "ovlfs-users-a.")
    home_b = rootless.setup(cl, B, B, "ovlfs-users-b.")
    tmp = cl.tmpdir("ovlfs-users.")
    os.chmod(tmp, 0o755)
    upper = wblib.eio_upper(cl, tmp, faultyfs=os.path.realpath(args.faultyfs))
    U = upper.mnt
    lower = os.path.join(tmp, "lower")
    os.mkdir(lower)
    with open(os.path.join(lower, "lowerfile"), "w") as f:
        f.write("lower\n")
    owners = {"R": (0, 0), "A1": (A, A), "A2": (A, A), "B1": (B, B)}
    for n, (uid, gid) in owners.items():
        for d in (f"{U}/up-{n}", f"{U}/wk-{n}", f"{tmp}/m-{n}"):
            os.mkdir(d)
            os.chown(d, uid, gid)
        with open(f"{U}/up-{n}/file", "w") as f:
            f.write("written before the error\n")
        os.chown(f"{U}/up-{n}/file", uid, gid)
    victim_r = upper.preallocate("up-R/victim", MiB)
    victim_a = upper.preallocate("up-A1/victim", MiB)
    os.chown(victim_a, A, A)

    def agent(uid: int, home: str, plain: bool, name: str) -> rootless.Agent:
        script = os.path.join(rootless.script_dir(cl, home, uid, uid), "wb_users.py")
        prog = rootless.stage(cl, home, [ovlfs], uid, uid)[0]
        ag = rootless.Agent(cl, [rootless.python(uid, uid), script, "--agent", "--ovlfs", prog]
                            + (["--plain"] if plain else []), uid=uid, gid=uid,
                            userns=not plain, env=dict(os.environ, HOME=home), cwd=home,
                            name=name, mounts_under=f"{tmp}/m-A2" if plain else None)
        print(f"{name}: {ag.call('whoami')}", flush=True)
        return ag

    a_ns = agent(A, home_a, False, "user A in a user namespace")
    a_plain = agent(A, home_a, True, "user A, plain")
    b_ns = agent(B, home_b, False, "user B in a user namespace")
    who = {"A1": a_ns, "A2": a_plain, "B1": b_ns}

    def opts(n: str, volatile: bool = False) -> tuple:
        return (f"{tmp}/m-{n}", lower, f"{U}/up-{n}", f"{U}/wk-{n}", volatile)

    def mount_user(n: str, volatile: bool = False) -> tuple[int, str]:
        rc, msg = who[n].call("mount", *opts(n, volatile))
        return rc, msg

    root_mounts: dict[str, wbovl.Mount] = {}

    def mount_root(volatile: bool = False) -> wbovl.Mount:
        m = wbovl.mount(cl, ovlfs, f"{tmp}/m-R", lower, f"{U}/up-R", f"{U}/wk-R",
                        volatile=volatile, interval_ms=INTERVAL_MS)
        root_mounts["R"] = m
        return m

    # --- the names: each mount's record, learnt from a first mount, which removes its
    # record when it ends (no error yet) ----------------------------------------------
    R = mount_root()
    root_rec = R.status()["upper"]["shm"]
    R.unmount()
    names = {}
    for n in ("A1", "A2", "B1"):
        rc, msg = mount_user(n)
        checks.expect(f"{n} mounts", (rc, msg), (0, ""))
        names[n] = who[n].call("status", f"{tmp}/m-{n}")["upper"]["shm"]
        who[n].call("unmount", f"{tmp}/m-{n}")
    suffix = os.path.basename(root_rec)[len("ovlfs-wb-"):]
    checks.expect("root's record name", os.path.basename(root_rec), f"ovlfs-wb-{suffix}")
    checks.expect("A's record name (in a user namespace)", os.path.basename(names["A1"]),
                  f"ovlfs-wb-u{A}-{suffix}")
    checks.expect("A's record name (plain, through fusermount3): the same", names["A2"],
                  names["A1"])
    checks.expect("B's record name", os.path.basename(names["B1"]), f"ovlfs-wb-u{B}-{suffix}")
    checks.expect("no record left after the last unmount (no error)",
                  sorted(n for n in os.listdir("/dev/shm") if n.startswith("ovlfs-wb-")), [])
    rec_a, rec_b = names["A1"], names["B1"]

    # --- squatters ----------------------------------------------------------------------
    # B takes root's name first (a file anyone may write): root's mount replaces it.
    ino, _ = b_ns.call("squat", root_rec, 0o666)
    R = mount_root()
    st = os.stat(root_rec)
    checks.expect("root's mount replaces B's file under root's name: the record is root's, "
                  "0600, another file", (st.st_uid, oct(st.st_mode & 0o7777), st.st_ino != ino),
                  (0, "0o600", True))
    kept = b_ns.call("squatted_file", root_rec)
    checks.expect("B's file: removed from the name, its data untouched",
                  (kept[1], kept[3]), (0, "squatter's own data\n"))
    b_ns.call("unsquat", root_rec)
    R.unmount()
    checks.true("root's record removed when R ended", not os.path.exists(root_rec))

    # B takes A's name first, three ways: A's mounts refuse, both ways, and leave it.
    for how, mode in (("a file of B's, mode 0666", 0o666), ("a file of B's, mode 0644", 0o644),
                      ("a file of B's, mode 0600", 0o600), ("a symlink of B's", None)):
        if mode is None:
            b_ns.call("squat_symlink", rec_a, f"{home_b}/target")
            before = os.lstat(rec_a)
        else:
            b_ns.call("squat", rec_a, mode)
            before = os.stat(rec_a)
        for n in ("A1", "A2"):
            rc, msg = mount_user(n)
            way = "in a user namespace" if n == "A1" else "plain"
            checks.true(f"B squats A's record ({how}): A's mount ({way}) is refused",
                        rc != 0 and not who[n].call("mounted", f"{tmp}/m-{n}"),
                        f"exit {rc}: {msg!r}")
            if rc == 0:
                who[n].call("unmount", f"{tmp}/m-{n}")
            checks.true(f"B squats A's record ({how}): A's mount ({way}) says so in one "
                        f"line naming the record", one_line(msg) and rec_a in msg, repr(msg))
            if mode is not None and mode & 0o006 == 0o006:
                # A could open it, so it knows whose it is: it must say so (and not
                # try, as root would, to remove it).
                # In A's user namespace B's uid is not mapped: it shows as the
                # overflow id, and the line says so.
                want = (f"belongs to uid {B}" if n == "A2" else
                        "belongs to a user this user namespace does not map")
                checks.true(f"B squats A's record ({how}): A's mount ({way}) says it is "
                            f"another user's ({want!r})", want in msg, repr(msg))
            else:
                print(f"      ({how}: A's mount ({way}) cannot open it: {msg!r})", flush=True)
        after = os.lstat(rec_a)
        checks.expect(f"B squats A's record ({how}): B's is left as it was",
                      (after.st_ino, after.st_uid, after.st_mode, after.st_size),
                      (before.st_ino, before.st_uid, before.st_mode, before.st_size))
        b_ns.call("unsquat", rec_a)

    # --- every user's own record --------------------------------------------------------
    R = mount_root()
    for n, vol in (("A1", False), ("A2", True), ("B1", False)):
        rc, msg = mount_user(n, vol)
        checks.expect(f"{n} mounts once the squatter is gone", (rc, msg), (0, ""))
    for n, uid in (("R", 0), ("A1", A), ("B1", B)):
        rec = {"R": root_rec, "A1": rec_a, "B1": rec_b}[n]
        st = os.stat(rec)
        checks.expect(f"{n}'s record: a regular file of uid {uid}, 0600",
                      (st.st_uid, oct(st.st_mode & 0o7777), (st.st_mode & 0o170000) == 0o100000),
                      (uid, "0o600", True))
    checks.expect("A's two mounts (user namespace, plain) share one record",
                  a_plain.call("status", f"{tmp}/m-A2")["upper"]["shm"], rec_a)
    for reader, ag, recs in (("A (user namespace)", a_ns, {"root's": root_rec, "B's": rec_b}),
                             ("A (plain)", a_plain, {"root's": root_rec, "B's": rec_b}),
                             ("B", b_ns, {"root's": root_rec, "A's": rec_a})):
        for whose, rec in recs.items():
            got = [ag.call("open_errno", rec, "r"), ag.call("open_errno", rec, "rw"),
                   ag.call("read_errno", rec)]
            checks.expect(f"{reader} opens {whose} record: read, read-write, read()", got,
                          ["EACCES"] * 3)

    # --- an error found by root's mount ---------------------------------------------------
    for n in ("A1", "A2", "B1"):
        who[n].call("keep_open", f"{tmp}/m-{n}/file")
    fds = wbovl.Fds(cl)
    fd_r = fds.open(f"{tmp}/m-R/victim", os.O_RDWR)
    upper.arm(victim_r)
    checks.expect("root writes its victim (write(2) succeeds)", os.pwrite(fd_r, DATA, 0), len(DATA))
    wbovl.wait_for("root's mount to find the error",
                   lambda: R.status()["upper"]["errors"] >= 1)
    upper.disarm()
    checks.expect("root's record: 1 error, EIO",
                  [R.status()["upper"]["errors"], R.status()["upper"]["latest_errno"]], [1, "EIO"])
    time.sleep(3 * INTERVAL_MS / 1000)  # every writeback pass of the users' mounts since
    for n in ("A1", "A2", "B1"):
        checks.expect(f"{n}: root's error is not in its user's record (status)",
                      who[n].call("record_errors", f"{tmp}/m-{n}"), [0, "0", 0])
        checks.expect(f"{n}: fsync of its own file after root's error",
                      who[n].call("fsync_kept", f"{tmp}/m-{n}/file"), "0")
    checks.expect("A2 (volatile): its syncfs after root's error (A's record only)",
                  a_plain.call("syncfs", f"{tmp}/m-A2"), "0")
    # A non-volatile syncfs syncs U: the kernel tells syncfs(2) of U's error, as it
    # tells any caller whose fd was opened before it; the mount records what it heard.
    checks.expect("A1 (non-volatile): its syncfs syncs U and hears U's error from the "
                  "kernel", a_ns.call("syncfs", f"{tmp}/m-A1"), "EIO")
    checks.expect("A1: then in A's record (the kernel said so; nothing came from root's)",
                  a_ns.call("record_errors", f"{tmp}/m-A1")[:2], [1, "EIO"])
    checks.expect("root's record unchanged", R.status()["upper"]["errors"], 1)
    checks.expect("B's record unchanged", b_ns.call("record_errors", f"{tmp}/m-B1"), [0, "0", 0])

    # --- an error found by A's mount ------------------------------------------------------
    a_ns.call("keep_open", f"{tmp}/m-A1/victim")
    upper.arm(victim_a)
    checks.expect("A writes its victim through A1", a_ns.call("write", f"{tmp}/m-A1/victim"),
                  len(DATA))
    wbovl.wait_for("A1 to find the error",
                   lambda: a_ns.call("record_errors", f"{tmp}/m-A1")[0] >= 2)
    upper.disarm()
    checks.expect("A's record: the error A1 found (A1's second: its syncfs heard the first)",
                  a_ns.call("record_errors", f"{tmp}/m-A1"), [2, "EIO", 2])
    checks.expect("A2 (A's other mount, the other way) has it at once, and reports it",
                  [a_plain.call("record_errors", f"{tmp}/m-A2")[:2],
                   a_plain.call("fsync_kept", f"{tmp}/m-A2/file")], [[2, "EIO"], "EIO"])
    checks.expect("root's record: still 1", R.status()["upper"]["errors"], 1)
    checks.expect("B's record: still none", b_ns.call("record_errors", f"{tmp}/m-B1"),
                  [0, "0", 0])
    for n in ("A1", "A2", "B1"):
        who[n].call("close_kept")
    fds.close_all()
    R.unmount()
    for n in ("A1", "A2", "B1"):
        who[n].call("unmount", f"{tmp}/m-{n}")


if __name__ == "__main__":
    sys.exit(main())
