#!/usr/bin/env python3
"""Scheduling of the daemon's threads (-o sched=, README "Scheduling").

- `normal` leaves every thread as started; `idle` allows SCHED_IDLE; `auto` (the
  default) allows it exactly when the daemon leads its own session (so its
  autogroup is its own) outside any CPU cgroup: never for a foreground daemon,
  which shares the session, and so the CPU group, of whoever started it.
- Allowed, the threads are SCHED_IDLE while the CPUs have idle time, and all go
  back to their policy while the CPUs are busy (here: a CPU-bound task on every
  CPU), then SCHED_IDLE again once the CPUs idle.
- `ovlfs status` tells both, and agrees with the threads' policies."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start, mount_ovlfs, overlay_dirs, try_mount, write, read  # noqa: E402

SCHED_OTHER, SCHED_IDLE = 0, 5
INIT_CGROUP_NS_INO = 0xEFFFFFFB


def stat_fields(path: str) -> list[str]:
    """Fields 3... of a /proc stat file (after the command name)."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def thread_policies(pid: int) -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = int(stat_fields(f"/proc/{pid}/task/{tid}/stat")[38])  # field 41
        except FileNotFoundError:
            pass  # a thread that just ended
    return out


def status(binary: str, mnt: str) -> dict:
    return json.loads(wblib.run([binary, "status", mnt, "--json"]).stdout)


def sched_of(st: dict) -> dict:
    return {k: st[k] for k in ("sched_idle_allowed", "sched_idle")}


def auto_expects_idle(pid: int) -> tuple[bool, str]:
    """The rule of `auto`, worked out from the daemon's /proc entries."""
    with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
        if f.read().strip() != "1":
            return False, "autogroups off"
    if int(stat_fields(f"/proc/{pid}/stat")[3]) != pid:  # field 6: session
        return False, "not a session leader"
    if os.stat(f"/proc/{pid}/ns/cgroup").st_ino != INIT_CGROUP_NS_INO:
        return False, "cgroup namespace"
    v1_cpu = v2 = None
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f.read().splitlines():
            hid, ctrls, path = line.split(":", 2)
            if hid == "0" and ctrls == "":
                v2 = path
            elif "cpu" in ctrls.split(","):
                v1_cpu = path
    if v1_cpu is not None:
        return v1_cpu == "/", f"v1 cpu cgroup {v1_cpu}"
    if v2 is not None and v2 != "/":
        mnt = next((m["mountpoint"] for m in wblib.mountinfo()
                    if m["fstype"] == "cgroup2" and m["root"] == "/"), None)
        if mnt is None:
            return False, "no cgroup2 mount"
        with open(f"{mnt}/cgroup.subtree_control") as f:
            if "cpu" in f.read().split():
                return False, f"cgroup2 cpu controller, cgroup {v2}"
    return True, "own autogroup"


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        L, U, W, M = overlay_dirs(cl.tmpdir("ovlfs-sched."))
        write(f"{L}/f", "lower")
        good = f"lowerdir={L},upperdir={U},workdir={W}"

        p = try_mount(args.ovlfs, ["-o", good + ",sched=fast", M])
        c.expect(p.returncode != 0 and "sched must be auto, idle or normal" in p.stderr
                 and len(p.stderr.strip().splitlines()) == 1,
                 f"sched=fast is refused with one line: {p.returncode} {p.stderr!r}")
        c.expect(not wblib.is_mountpoint(M), "nothing mounted after a bad sched=")
        c.expect("sched=auto|idle|normal" in try_mount(args.ovlfs, ["--help"]).stdout,
                 "--help lists sched=")

        def consistent(label: str, pid: int | None = None) -> dict:
            """Status, and the threads' policies that go with it (read between two
            status calls that agree: a change in between would be a tick)."""
            for _ in range(20):
                st = status(args.ovlfs, M)
                pol = set(thread_policies(pid or st["pid"]).values())
                st2 = status(args.ovlfs, M)
                if st2["sched_idle"] == st["sched_idle"]:
                    break
            want = SCHED_IDLE if st["sched_idle"] else SCHED_OTHER
            c.expect(pol == {want}, f"{label}: status says sched_idle {st['sched_idle']}; "
                     f"the threads' policies are {pol}")
            c.expect(st["sched_idle_allowed"] or not st["sched_idle"],
                     f"{label}: SCHED_IDLE only where allowed: {sched_of(st)}")
            return st

        def works(label: str) -> None:
            write(f"{M}/new", "upper")
            c.expect(read(f"{M}/new") == b"upper" and read(f"{M}/f") == b"lower",
                     f"{label}: files are written and read")
            os.unlink(f"{M}/new")

        mount_ovlfs(cl, args.ovlfs, M, [L], U, W, "sched=normal")
        st = consistent("sched=normal")
        c.expect(st["sched_idle_allowed"] is False and st["sched_idle"] is False,
                 f"sched=normal: SCHED_IDLE not allowed: {sched_of(st)}")
        works("sched=normal")
        wblib.umount(M)

        # auto, daemonized (the daemon leads a session of its own).
        mount_ovlfs(cl, args.ovlfs, M, [L], U, W)
        st = consistent("auto, daemonized")
        expect, why = auto_expects_idle(st["pid"])
        c.expect(st["sched_idle_allowed"] is expect,
                 f"auto, daemonized ({why}): SCHED_IDLE allowed {st['sched_idle_allowed']}, "
                 f"want {expect}")
        print(f"auto, daemonized: {why}: SCHED_IDLE {'allowed' if expect else 'not allowed'}",
              flush=True)
        works("auto")
        wblib.umount(M)

        # auto in the foreground: this test's session, so never allowed; `sched=idle`
        # allows it there too.
        for extra, want_allowed in (("", False), (",sched=idle", True)):
            daemon = subprocess.Popen([args.ovlfs, "-f", "-o", good + extra, M],
                                      stderr=subprocess.PIPE)
            cl.push("kill daemon", daemon.kill)
            deadline = time.monotonic() + 10
            while not wblib.is_mountpoint(M) and daemon.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            c.expect(daemon.poll() is None, f"-f{extra}: mounted")
            if daemon.poll() is None:
                st = consistent(f"-f{extra}", daemon.pid)
                c.expect(st["sched_idle_allowed"] is want_allowed,
                         f"-f{extra}: SCHED_IDLE allowed {st['sched_idle_allowed']}, "
                         f"want {want_allowed}")
                works(f"-f{extra}")
                wblib.umount(M)
                daemon.wait(timeout=10)

        # sched=idle: SCHED_IDLE while the CPUs idle, back while they are busy.
        mount_ovlfs(cl, args.ovlfs, M, [L], U, W, "sched=idle")
        serial = [0]

        def requests(seconds: float) -> None:
            """Lookups of new names for a while (the daemon looks at the CPUs as it serves)."""
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                serial[0] += 1
                try:
                    os.stat(f"{M}/none-{serial[0]}")
                except FileNotFoundError:
                    pass

        hogs = []
        for cpu in sorted(os.sched_getaffinity(0)):
            h = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                                 preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
            cl.push("kill hog", h.kill)
            hogs.append(h)
        requests(1.5)
        st = consistent("sched=idle, every CPU busy")
        c.expect(st["sched_idle"] is False, f"sched=idle: with every CPU busy the threads are "
                 f"back to their policy: {sched_of(st)}")
        works("sched=idle, CPUs busy")
        for h in hogs:
            h.kill()
            h.wait()

        def idle_cpus(seconds: float) -> float:
            def times():
                with open("/proc/stat") as f:
                    v = [int(x) for x in f.readline().split()[1:9]]
                return v[3] + v[4], sum(v)
            i0, t0 = times()
            requests(seconds)
            i1, t1 = times()
            return multiprocessing.cpu_count() * (i1 - i0) / max(1, t1 - t0)

        # The daemon decides on each 250 ms of requests, and a busy one after an idle
        # one sends it back: other tests running beside this one can make any single
        # look land after a busy stretch. So it is asked after each of up to 8 half
        # seconds of requests; it must be SCHED_IDLE again by the end of them when at
        # least 4 had 0.6 CPUs idle.
        free, spares = 0, []
        for _ in range(8):
            spares.append(idle_cpus(0.5))
            st = consistent("sched=idle, CPUs free")
            if st["sched_idle"] is True:
                break
            free += spares[-1] >= 0.6
        seen = ", ".join(f"{s:.2f}" for s in spares)
        if st["sched_idle"] is True or free >= 4:
            c.expect(st["sched_idle"] is True, f"sched=idle: with CPUs idle ({seen} in half "
                     f"seconds) the threads are SCHED_IDLE again: {sched_of(st)}")
        else:
            print(f"sched=idle, CPUs free: only {seen} CPUs were idle in half seconds (the "
                  f"machine is busy): the return to SCHED_IDLE is not checked", flush=True)
        works("sched=idle")
        wblib.umount(M)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
