#!/usr/bin/env python3
"""The writeback-error contract inside a podman container (issue 17, item 5; SPEC.md §2,
§4, §5): a container whose upper filesystem hits a REAL writeback error, on ovlfs as
containers-storage's mount_program.

Each scenario has a podman storage of its own whose graphroot is an ext4 on a loop
device whose image lives on a small tmpfs (wblib's ENOSPC rig). Inside the container a
static helper (wbprobe.c, built here with gcc -static) preallocates /victim and holds
file descriptors; the host then fills the tmpfs, the container writes /victim (write(2)
succeeds: the page cache takes it), writeback of the new blocks fails with ENOSPC, the
host waits until ovlfs has found the error (`ovlfs status MERGED --json`), gives the
space back, and the container calls fsync and fdatasync (wbprobe, and busybox's
`sync FILE` / `sync -d FILE`), `ovlfs sync /` (the ovlfs binary and the host's
libraries bind-mounted read-only) and the OVLFS_IOC_SYNCFS ioctl, on fds opened before
the error, after it while nobody had reported it, and after it was reported. Every
answer is compared with SPEC §2:

  volatile      `podman run --rm` (podman mounts it volatile: checked on the mount
                program's command line and in `ovlfs status`): every fsync/fdatasync
                of any fd fails with the error, on every call, for ever; every syncfs
                ioctl fails with EIO.
  non-volatile  `podman run` without --rm (not volatile: checked): each open file
                description reports the error once; the first syncfs caller in the
                mount and each description opened before it was reported get it once.

A plain syncfs(2) (busybox `sync -f /`) is shown, not checked: the kernel answers it
for a FUSE mount itself, 0 (SPEC §2).

`ovlfs status` of the container's mount (from the host, where podman mounted it; the
merged directory from `podman inspect`) must show the error. The host also fsyncs the
upper file through an fd of its own opened before the error: ENOSPC proves that the rig
made a real writeback error (else the test, not ovlfs, is broken).

--reference PROGRAM (default: fuse-overlayfs from PATH; '' for none) runs the volatile
scenario once more with that mount program and prints what the container's calls
returned there (fuse-overlayfs: fsync succeeds, the error is lost). For the README
only: it never fails the test. Since nothing else writes the data back there, the host
writes the upper file back itself (sync_file_range, which reports nothing).

Needs root, podman and gcc with a static libc (else 77). Runs in a private mount
namespace as test_podman.py does (enginelib.isolate_host); every podman command has a
watchdog (enginelib). Everything it makes (containers, mounts, loop devices, daemons)
is undone on any exit.

Usage: test_podman_wb.py --ovlfs build/ovlfs [--reference PROGRAM] [--only S1,S2]
       [--cli OVLFS]  (the ovlfs binary used for `ovlfs status`/`ovlfs sync`; default
       --ovlfs: set it to run the scenarios with another mount program, e.g.
       `--ovlfs /usr/bin/fuse-overlayfs --cli build/ovlfs`, which must FAIL)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import enginelib as E  # noqa: E402
from enginelib import Entry, wblib  # noqa: E402

IMAGE = "localhost/ovlfs-wb:1"
BUSYBOX = "/bin/busybox"
MiB = 1 << 20
TIMEOUT = 60          # seconds, per podman command
RUN_TIMEOUT = 120     # the `podman run` of a scenario
WAIT = 60             # the container's and the host's waits for each other
FIND_TIMEOUT = 20     # for ovlfs to find the upper error (writeback_interval: 2 s)

# ---------------------------------------------------------------------------------------
# The container's program: wbprobe steps, and what SPEC §2 says each returns.
# (label, step, volatile, non-volatile); expected None: shown, not checked.
# ERR: the upper error's errno (the ENOSPC rig).

ERR = "ENOSPC"


def steps() -> tuple[list[tuple[str, str, str | None, str | None]], list[str]]:
    """(checked steps after the error, every wbprobe argument in order)."""
    before = [
        "create V|create|V|/victim", f"fallocate V|fallocate|V|{MiB}",
        "open F2|open|F2|/victim|rw", "open D1|open|D1|/|dir",
        "open L1|open|L1|/etc/passwd|ro",
        "create O1|create|O1|/other", "pwrite O1|pwrite|O1|4096", "flush O1|flush|O1",
        "ready|touch|/ctl/ready", f"go|wait|/ctl/go|{WAIT}",
        f"write V|pwrite|V|{MiB}", "flush V|flush|V",
        "written|touch|/ctl/written", f"found|wait|/ctl/found|{WAIT}",
        # opened after the error, while nobody has reported it
        "open U1|open|U1|/victim|ro", "open U2|open|U2|/victim|ro", "open D2|open|D2|/|dir",
    ]
    X, EIO = ERR, "EIO"
    ex1, ex0 = "exit 1", "exit 0"
    checked = [
        # busybox's `sync FILE` (fsync; -d: fdatasync) opens the file anew: an fd opened
        # while the error is unseen
        ("$ sync /victim (1st)", "sh|sync /victim", ex1, ex1),
        ("$ sync /victim (2nd)", "sh|sync /victim", ex1, ex0),
        ("fsync V #1 (fd opened before the error)", "fsync|V", X, X),
        ("fsync V #2", "fsync|V", X, "0"),
        ("fdatasync F2 #1 (fd opened before the error)", "fdatasync|F2", X, X),
        ("fdatasync F2 #2", "fdatasync|F2", X, "0"),
        ("fsync U1 #1 (opened after, while unseen)", "fsync|U1", X, X),
        ("fsync U1 #2", "fsync|U1", X, "0"),
        ("fdatasync U2 #1 (opened after, while unseen)", "fdatasync|U2", X, X),
        ("fdatasync U2 #2", "fdatasync|U2", X, "0"),
        # the mount's first syncfs caller: `ovlfs sync /` (a new fd each call)
        ("$ ovlfs sync / (1st)", "sh|ovlfs sync /", ex1, ex1),
        ("$ ovlfs sync / (2nd)", "sh|ovlfs sync /", ex1, ex0),
        ("ioctl(D1, OVLFS_IOC_SYNCFS) #1 (dir fd opened before)", "ioctl|D1", EIO, X),
        ("ioctl(D1, OVLFS_IOC_SYNCFS) #2", "ioctl|D1", EIO, "0"),
        ("ioctl(D2, OVLFS_IOC_SYNCFS) #1 (opened after, while unseen)", "ioctl|D2", EIO, X),
        ("ioctl(D2, OVLFS_IOC_SYNCFS) #2", "ioctl|D2", EIO, "0"),
        # opened after the error was reported
        ("open S1 (after it was reported)", "open|S1|/victim|ro", "0", "0"),
        ("fsync S1 #1", "fsync|S1", X, "0"),
        ("fsync S1 #2", "fsync|S1", X, "0"),
        ("open D3 (after it was reported)", "open|D3|/|dir", "0", "0"),
        ("ioctl(D3, OVLFS_IOC_SYNCFS) #1", "ioctl|D3", EIO, "0"),
        ("ioctl(D3, OVLFS_IOC_SYNCFS) #2", "ioctl|D3", EIO, "0"),
        # any other fd of the mount
        ("fsync D1 #1 (the directory /)", "fsync|D1", X, "0"),
        ("fsync D1 #2", "fsync|D1", X, "0"),
        ("fsync L1 #1 (/etc/passwd, a lower file)", "fsync|L1", X, "0"),
        ("fsync L1 #2", "fsync|L1", X, "0"),
        ("fsync O1 #1 (another upper file, written before)", "fsync|O1", X, "0"),
        ("fsync O1 #2", "fsync|O1", X, "0"),
        ("create A1 (a new file, after the error)", "create|A1|/after", "0", "0"),
        ("pwrite A1", "pwrite|A1|4096", "4096", "4096"),
        ("fsync A1 #1", "fsync|A1", X, "0"),
        ("fsync A1 #2", "fsync|A1", X, "0"),
        ("$ sync -d /etc/passwd", "sh|sync -d /etc/passwd", ex1, ex0),
        # the kernel answers a plain syncfs(2) on a FUSE mount itself (SPEC §2)
        ("syncfs(D1) (plain syncfs(2))", "syncfs|D1", None, None),
        ("$ sync -f / (plain syncfs(2))", "sh|sync -f /", None, None),
        ("sleep 2.5 s", "sleep|2500", "0", "0"),
        ("fsync V #3 (2.5 s later)", "fsync|V", X, "0"),
        ("$ sync /victim (3rd, 2.5 s later)", "sh|sync /victim", ex1, ex0),
        ("$ ovlfs status /", "sh|ovlfs status /", None, None),
    ]
    closes = [(f"close {n}", f"close|{n}", "0", "0")
              for n in ("V", "F2", "D1", "L1", "O1", "U1", "U2", "D2", "S1", "D3", "A1")]
    checked += closes
    after = ["checked|touch|/ctl/checked", f"exit|wait|/ctl/exit|{WAIT}"]
    args = before + [f"{label}|{step}" for label, step, _, _ in checked] + after
    return checked, args


# Steps before the error that must succeed (label -> expected).
SETUP_EXPECT = {"create V": "0", "fallocate V": "0", "open F2": "0", "open D1": "0",
                "open L1": "0", "create O1": "0", "pwrite O1": "4096", "flush O1": "0",
                "ready": "0", "go": "0", "write V": str(MiB), "flush V": "0",
                "written": "0", "found": "0", "open U1": "0", "open U2": "0",
                "open D2": "0"}


def parse_probe(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """wbprobe's log: {label: result}, and the output lines of each sh step."""
    results: dict[str, str] = {}
    outputs: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        label, sep, rest = line.partition(": ")
        if sep and rest.startswith("$ "):
            current = label
            outputs[label] = []
            continue
        if sep and (label in SETUP_EXPECT or label in LABELS or label in ("checked", "exit")):
            results[label] = rest
            current = None
            continue
        if current is not None:
            outputs[current].append(line)
    return results, outputs


CHECKED, PROBE_ARGS = steps()
LABELS = {label for label, _, _, _ in CHECKED}

# ---------------------------------------------------------------------------------------
# Host side


def image_layers() -> list[list[Entry]]:
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    applets = wblib.run([BUSYBOX, "--list"]).stdout.split()
    return [[
        Entry("bin", "d"), Entry("bin/busybox", data=busybox, mode=0o755),
        *[Entry(f"bin/{a}", "l", target="busybox") for a in sorted(applets) if a != "busybox"],
        Entry("etc", "d"), Entry("etc/passwd", data="root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/group", data="root:x:0:\n"), Entry("root", "d", mode=0o700),
        Entry("tmp", "d", mode=0o1777),
    ]]


def daemon_of(eng: E.Engine) -> tuple[int, list[str]]:
    """The engine's one mount program process: (pid, argv)."""
    found = E.processes_mentioning(eng.top, exe=os.path.realpath(eng.program))
    if len(found) != 1:
        raise RuntimeError(f"expected one {eng.program} process, found {found}")
    pid = next(iter(found))
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    return pid, argv


def mount_options(argv: list[str]) -> list[str]:
    opts = []
    for i, a in enumerate(argv):
        if a == "-o" and i + 1 < len(argv):
            opts += argv[i + 1].split(",")
        elif a.startswith("-o") and len(a) > 2:
            opts += a[2:].split(",")
    return opts


def status(cli: str, merged: str, json_: bool = True) -> tuple[dict | None, str]:
    p = wblib.run([cli, "status", merged] + (["--json"] if json_ else []), check=False,
                  timeout=20)
    text = (p.stdout + p.stderr).strip()
    if p.returncode != 0 or not json_:
        return None, text
    try:
        return json.loads(p.stdout), text
    except ValueError:
        return None, text


def wait_file(path: str, what: str, podman: threading.Thread, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not podman.is_alive():
            raise RuntimeError(f"the container ended before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def touch(path: str) -> None:
    with open(path, "w"):
        pass


class Scenario:
    """One podman storage on its own ENOSPC rig, one container."""

    def __init__(self, key: str, title: str, program: str, volatile: bool, contract: bool):
        self.key, self.title, self.program = key, title, program
        self.volatile, self.contract = volatile, contract
        self.lines: list[str] = []       # the transcript
        self.problems: list[str] = []    # contract failures (contract runs only)
        self.results: dict[str, str] = {}
        self.rig = "?"                   # the host's fsync of the upper file

    def say(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            self.lines.append(line)
            print(line, flush=True)

    def expect(self, what: str, observed, expected) -> None:
        ok = observed == expected
        if not ok:
            self.problems.append(f"{what}: observed {observed!r}, expected {expected!r}")
        if not ok and self.contract:
            print(f"  FAIL  {what}: observed {observed!r}, expected {expected!r}", flush=True)

    def true(self, what: str, cond: bool, detail: str = "") -> None:
        if not cond:
            self.problems.append(f"{what}{': ' + detail if detail else ''}")
            if self.contract:
                print(f"  FAIL  {what}{': ' + detail if detail else ''}", flush=True)


def run_scenario(cl: wblib.Cleanup, top: str, sc: Scenario, fx: dict, cli: str,
                 cli_is_ovlfs: bool) -> None:
    t0 = time.monotonic()
    sc.say(f"\n=== {sc.title}")
    rigdir = f"{top}/{sc.key}x"
    os.makedirs(rigdir)
    upper = wblib.enospc_upper(cl, rigdir)   # 512M ext4 image on a 64M tmpfs
    engtop = f"{top}/{sc.key}"
    os.makedirs(f"{engtop}/g")
    os.makedirs(f"{upper.mnt}/g")
    wblib.mount(cl, f"{upper.mnt}/g", f"{engtop}/g", options="bind")
    eng = E.Engine(sc.key, engtop, sc.program)
    cl.push(f"tear down {sc.key}", lambda: [print(f"cleanup: {n}") for n in eng.teardown()])
    ctl = f"{top}/{sc.key}c"
    os.makedirs(ctl)
    shutil.copy2(fx["wbprobe"], f"{ctl}/wbprobe")
    udev = os.stat(upper.mnt).st_dev
    sc.say(f"graphroot: ext4 on {upper.loop.path} ({os.major(udev)}:{os.minor(udev)}), "
           f"image on a 64M tmpfs; mount_program = {sc.program}")

    eng.podman("load", "-q", "-i", fx["archive"], timeout=TIMEOUT)
    name = f"wb-{sc.key}"
    run_args = ["run", *(["--rm"] if sc.volatile else []), "--name", name,
                "-v", f"{ctl}:/ctl", "-v", f"{cli}:/bin/ovlfs:ro",
                "-v", "/usr/lib:/usr/lib:ro", "-v", "/usr/lib:/lib:ro",
                "-v", "/usr/lib64:/lib64:ro", IMAGE,
                # stdout to /ctl (not to conmon's ctr.log on the full ext4)
                "sh", "-c", 'exec /ctl/wbprobe "$@" >/ctl/log 2>&1', "wbprobe", *PROBE_ARGS]
    sc.say(f"$ podman run {'--rm ' if sc.volatile else ''}--name {name} -v CTL:/ctl "
           f"-v OVLFS:/bin/ovlfs:ro -v /usr/lib:/usr/lib:ro ... {IMAGE} /ctl/wbprobe ...")
    outcome: dict = {}

    def podman_run() -> None:
        try:
            outcome["p"] = eng.podman(*run_args, timeout=RUN_TIMEOUT, check=False)
        except BaseException as e:  # Hung: reported by the main thread
            outcome["e"] = e
    th = threading.Thread(target=podman_run, name=f"podman run {name}", daemon=True)

    def wait(fname: str, what: str, timeout: float = WAIT) -> None:
        """Waits for the container's control file; on failure, says what it printed."""
        try:
            wait_file(f"{ctl}/{fname}", what, th, timeout)
        except (RuntimeError, TimeoutError) as e:
            th.join(5)
            p = outcome.get("p")
            log = ""
            if os.path.exists(f"{ctl}/log"):
                with open(f"{ctl}/log", errors="replace") as f:
                    log = f.read()[-1500:]
            raise RuntimeError(f"{e}; podman run: "
                               + (f"exit {p.returncode}, stderr {p.stderr.strip()[-1500:]!r}"
                                  if p else "still running")
                               + f"; container's log: {log!r}") from None
    host_fd = -1
    try:
        th.start()
        wait("ready", "the container to prepare /victim")

        # The mount, as podman made it.
        pid, argv = daemon_of(eng)
        opts = mount_options(argv)
        vol = "volatile" in opts or "fsync=0" in opts
        shown = [o for o in opts if o in ("volatile", "fsync=0") or not o.startswith(
            ("lowerdir=", "upperdir=", "workdir="))]
        sc.say(f"mount program (pid {pid}) options: lowerdir, upperdir, workdir"
               + "".join(f", {o}" for o in shown))
        sc.expect("the mount program got `volatile` exactly when the container is --rm",
                  vol, sc.volatile)
        info = json.loads(eng.podman("inspect", name, timeout=TIMEOUT).stdout)[0]
        gd = info["GraphDriver"]["Data"]
        merged, updir = gd["MergedDir"], gd["UpperDir"]
        sc.say(f"podman inspect: MergedDir {eng.placeholders(merged)}")
        sc.expect("the mount program's mountpoint is podman's MergedDir",
                  os.path.realpath(argv[-1]), os.path.realpath(merged))
        st0, _ = status(cli, merged) if cli_is_ovlfs else (None, "")
        if st0 is not None:
            sc.expect("ovlfs status: volatile, before the error", st0["volatile"], sc.volatile)
            sc.expect("ovlfs status: no upper error before the write", st0["upper"]["errors"], 0)
        # The host's own fd on the upper file, opened before the error (the rig's proof).
        host_fd = os.open(f"{updir}/victim", os.O_RDONLY | os.O_CLOEXEC)

        # The error: fill the tmpfs, the container writes /victim.
        filled = upper.fill()
        sc.say(f"host: tmpfs filled ({filled >> 20} MiB more); the container writes /victim")
        touch(f"{ctl}/go")
        wait("written", "the container's write")
        tw = time.monotonic()
        found_by, st = "", None
        if st0 is not None:
            deadline = tw + FIND_TIMEOUT
            while time.monotonic() < deadline:
                st, _ = status(cli, merged)
                if st and st["upper"]["errors"] >= 1:
                    found_by = f"ovlfs, {time.monotonic() - tw:.1f} s after the write"
                    break
                time.sleep(0.1)
        if not found_by:
            sc.true("the mount program found the upper error (ovlfs status)", False,
                    f"not within {FIND_TIMEOUT} s" if st0 is not None else
                    "`ovlfs status` does not work on this mount")
            # Write the data back from the host (sync_file_range: reports nothing).
            wblib.writeback(host_fd)
            found_by = "nobody: the host wrote the upper file back itself"
        sc.say(f"upper writeback error found by {found_by}")
        if st is not None:
            sc.say(f"  ovlfs status: upper errors {st['upper']['errors']}, latest "
                   f"{st['upper']['latest_errno']}")
        upper.free()
        touch(f"{ctl}/found")

        wait("checked", "the container's checks", timeout=RUN_TIMEOUT)
        # The container is still running: its mount's status, from the host.
        if cli_is_ovlfs:
            st, text_json = status(cli, merged)
            _, text = status(cli, merged, json_=False)
            sc.say(f"$ ovlfs status {eng.placeholders(merged)}")
            sc.say("\n".join("    " + eng.placeholders(ln) for ln in text.splitlines()))
            if st is None:
                sc.true("ovlfs status --json of the container's mount", False, text_json)
            else:
                sc.expect("ovlfs status: volatile", st["volatile"], sc.volatile)
                sc.true("ovlfs status: errors since mount >= 1", st["mount"]["errors"] >= 1,
                        str(st["mount"]))
                sc.expect("ovlfs status: latest error since mount", st["mount"]["latest_errno"],
                          ERR)
                sc.expect("ovlfs status: upper device", st["upper"]["device"],
                          f"{os.major(udev)}:{os.minor(udev)}")
                sc.expect("ovlfs status: dirty files", st["dirty_files"], 0)
                calls = st["host_calls"]
                n = calls["fsync"] + calls["fdatasync"] + calls["syncfs"]
                if sc.volatile:
                    sc.expect("ovlfs status: fsync+fdatasync+syncfs of the upper (volatile)",
                              n, 0)
                else:
                    sc.true("ovlfs status: the non-volatile mount synced the upper", n > 0,
                            str(calls))
        # The rig's proof: the upper file really failed writeback.
        rig = sc.rig = wblib.errno_of(os.fsync, host_fd)
        sc.say(f"host: fsync of the upper file {eng.placeholders(updir)}/victim through an "
               f"fd opened before the write: {rig}")
        if rig != ERR:
            sc.problems.append(f"the rig made no writeback error (host fsync: {rig}); "
                               "the test is broken, not the mount program")
            print(f"  FAIL  {sc.problems[-1]}", flush=True)
    finally:
        if host_fd >= 0:
            os.close(host_fd)
        upper.free()
        for f in ("go", "found", "exit"):  # let the container end whatever happened
            touch(f"{ctl}/{f}")
        th.join(RUN_TIMEOUT + 30)
    if "e" in outcome:
        raise outcome["e"]
    p = outcome["p"]
    log = open(f"{ctl}/log", errors="replace").read() if os.path.exists(f"{ctl}/log") else ""
    if p.returncode != 0:
        sc.true("podman run exits 0", False, f"exit {p.returncode}: {p.stderr.strip()}")
    results, outputs = parse_probe(log)
    sc.results = results
    for label, want in SETUP_EXPECT.items():
        sc.expect(f"container: {label}", results.get(label), want)
    sc.say("in the container (wbprobe: 'label: result'; $ lines: busybox sh):")
    col = 1 if sc.volatile else 2
    for row in CHECKED:
        label, got = row[0], results.get(row[0], "(missing)")
        want = row[1 + col]
        if label.startswith("$ "):
            sc.say(f"  {label.split(' (')[0]}")
            for out in outputs.get(label, []):
                sc.say(f"      {eng.placeholders(out)}")
            sc.say(f"      [{got}]")
        elif not label.startswith(("close ", "open ", "create ", "pwrite ", "sleep")):
            sc.say(f"  {label}: {got}")
        if want is not None:
            sc.expect(f"container: {label}", got, want)
    if not sc.volatile:
        eng.podman("rm", "-f", name, timeout=TIMEOUT, check=False)
    verdict = ("contract met" if not sc.problems else
               f"{len(sc.problems)} answers differ from the contract")
    sc.say(f"=== {sc.title}: {time.monotonic() - t0:.1f} s, {verdict}")


def build_probe(path: str) -> str:
    """Compiles wbprobe.c statically; returns gcc's complaint, or "" when it worked."""
    include = os.path.join(HERE, "..", "..", "include")
    p = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-I", include, "-o", path,
                        os.path.join(HERE, "wbprobe.c")], capture_output=True, text=True)
    return "" if p.returncode == 0 else (p.stderr or p.stdout).strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ovlfs", required=True, help="the mount program under test (build/ovlfs)")
    ap.add_argument("--cli", help="the ovlfs binary for `ovlfs status` and `ovlfs sync` "
                                  "(default: --ovlfs)")
    ap.add_argument("--reference", default=shutil.which("fuse-overlayfs") or "",
                    help="another mount program to show the volatile run with (default: "
                         "fuse-overlayfs from PATH; '' for none); never fails the test")
    ap.add_argument("--only", default="", help="volatile,nonvolatile,reference")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("podman") or not shutil.which("gcc"):
        print(f"SKIP: needs root, podman and gcc (euid {os.geteuid()})")
        return 77
    wblib.need_root_or_skip()
    if not os.path.exists(BUSYBOX) or not E.is_static_elf(BUSYBOX):
        print(f"FAIL: {BUSYBOX} is not a static executable (install busybox-static)")
        return 1
    program = os.path.realpath(args.ovlfs)
    cli = os.path.realpath(args.cli or args.ovlfs)
    for p in (program, cli):
        if not os.access(p, os.X_OK):
            print(f"FAIL: {p} is not an executable")
            return 1
    cli_is_ovlfs = wblib.run([cli, "--version"], check=False).stdout.startswith("ovlfs")
    only = {s for s in args.only.split(",") if s}
    wblib.enter_private_namespace()
    start = time.monotonic()
    versions = [wblib.run([p, "--version"], check=False) for p in ("podman", program)]
    print("; ".join((v.stdout + v.stderr).strip().splitlines()[-1] for v in versions),
          flush=True)
    scenarios = []
    if not only or "volatile" in only:
        scenarios.append(Scenario("v", f"{os.path.basename(program)}, volatile container "
                                       "(podman run --rm)", program, True, True))
    if not only or "nonvolatile" in only:
        scenarios.append(Scenario("n", f"{os.path.basename(program)}, non-volatile "
                                       "container (podman run, no --rm)", program, False,
                                  True))
    reference = args.reference and os.path.realpath(args.reference)
    if reference and (not only or "reference" in only):
        scenarios.append(Scenario("f", f"{os.path.basename(reference)}, volatile container "
                                       "(podman run --rm), for comparison", reference, True,
                                  False))
    with wblib.Cleanup() as cl:
        top = cl.tmpdir("ow.")  # short: podman 4.3 waits 20 s per exit on long runroots
        print("host: " + ", ".join(E.isolate_host(cl, top)), flush=True)
        fx = {"archive": f"{top}/image.tar", "wbprobe": f"{top}/wbprobe"}
        E.make_docker_archive(fx["archive"], IMAGE, image_layers())
        err = build_probe(fx["wbprobe"])
        if err:
            print(f"SKIP: cannot build the static helper (gcc -static): {err}")
            return 77
        for sc in scenarios:
            try:
                run_scenario(cl, top, sc, fx, cli, cli_is_ovlfs)
            except Exception as e:
                traceback.print_exc()
                sc.problems.append(f"the scenario raised {e!r}")
    failed = 0
    print("\n=== results")
    for sc in scenarios:
        if not sc.contract:
            calls = [sc.results.get(label, "?") for label, step, _, _ in CHECKED
                     if step.split("|")[0] in ("fsync", "fdatasync")]
            print(f"INFO  {sc.title} (never fails the test): /victim's writeback failed "
                  f"with {ERR} (the host's fsync of the upper file: {sc.rig}); in the "
                  f"container {calls.count('0')} of {len(calls)} fsync/fdatasync calls "
                  f"returned 0, busybox `sync /victim`: "
                  f"{sc.results.get('$ sync /victim (1st)', '?')}, OVLFS_IOC_SYNCFS: "
                  f"{sc.results.get('ioctl(D1, OVLFS_IOC_SYNCFS) #1 (dir fd opened before)', '?')}"
                  f"; {len(sc.problems)} answers differ from ovlfs's contract")
            continue
        state = "PASS" if not sc.problems else "FAIL"
        failed += bool(sc.problems)
        print(f"{state}  {sc.title}")
        for p in sc.problems:
            print(f"      {p}")
    print(f"({time.monotonic() - start:.0f} s)")
    print("RESULT:", "PASS" if not failed and any(s.contract for s in scenarios) else "FAIL",
          flush=True)
    return 1 if failed or not any(s.contract for s in scenarios) else 0


if __name__ == "__main__":
    sys.exit(main())
