"""bench/engine: one trial of a workload under `perf record`, per configuration.

perf follows the podman command and everything it starts (conmon, crun, the
container's processes, the mount program and its daemon: they all descend from it),
and nothing else of the machine. It records:
  - cpu-clock every 250 µs of CPU time: CPU by process name, and the hottest symbols;
  - fuse:fuse_request_send / fuse_request_end: every FUSE request by type, with the time
    from the kernel queueing it to the daemon's answer (the caller waits that long);
  - sched:sched_process_exec / exit: how long each run of the mount program takes
    (containers-storage waits for it: start-up and mount), and of crun, conmon;
  - syscalls:sys_enter/exit_mount and _umount: time in mount(2) and umount(2).
The trial's wall time includes perf's own overhead: compare its parts, not its total
with the timed trials.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

EVENTS = ["cpu-clock/period=250000/", "fuse:fuse_request_send", "fuse:fuse_request_end",
          "sched:sched_process_exec", "sched:sched_process_exit",
          "syscalls:sys_enter_mount", "syscalls:sys_exit_mount",
          "syscalls:sys_enter_umount", "syscalls:sys_exit_umount"]
SAMPLE_MS = 0.25

LINE = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+(?P<time>\d+\.\d+):\s+"
                  r"(?P<event>\S+?):\s+(?P<rest>.*)$")


def record(runner, eng, w, path: str) -> tuple[float, int]:
    cmd = ["perf", "record", "-q", "-m", "1024", "-o", path]
    for e in EVENTS:
        cmd += ["-e", e]
    cmd += ["--", *eng.podman_cmd(runner.args(w))]
    t0 = time.perf_counter()
    p = eng.run(cmd, timeout=w.timeout * 3, check=True)
    return time.perf_counter() - t0, p.returncode


def analyse(path: str, programs: set[str]) -> dict:
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "trace:comm,tid,time,event,trace",
         "-F", "sw:comm,tid,time,event,ip,sym,dso"],
        capture_output=True, text=True, timeout=600)
    cpu: dict[str, int] = {}
    syms: dict[str, int] = {}
    fuse: dict[str, list] = {}           # opcode -> [count, total seconds]
    sent: dict[tuple[str, str], tuple[str, float]] = {}
    callers: dict[tuple[str, str], int] = {}   # (caller's command, opcode) -> count
    execs: dict[str, tuple[str, float]] = {}   # pid -> (program, time)
    runs: dict[str, list] = {}           # program -> [count, total seconds]
    sysc: dict[tuple[str, str], float] = {}
    calls: dict[str, list] = {}          # "mount by X" -> [count, total seconds]
    timeline: list[list] = []          # [offset from the first event, what, duration]
    first = last = None
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, t, ev, rest = m["comm"], m["tid"], float(m["time"]), m["event"], m["rest"]
        first = t if first is None else first
        last = t
        if ev.startswith("cpu-clock"):
            cpu[comm] = cpu.get(comm, 0) + 1
            parts = rest.split(None, 1)
            sym = parts[1] if len(parts) > 1 else "?"
            key = f"{comm}: {sym}"
            syms[key] = syms.get(key, 0) + 1
        elif ev == "fuse:fuse_request_send":
            f = rest.split()
            conn, req = f[1], f[3]
            op = f[6].strip("()").removeprefix("FUSE_")
            sent[(conn, req)] = (op, t)
            callers[(comm, op)] = callers.get((comm, op), 0) + 1
        elif ev == "fuse:fuse_request_end":
            f = rest.split()
            s = sent.pop((f[1], f[3]), None)
            if s:
                c = fuse.setdefault(s[0], [0, 0.0])
                c[0] += 1
                c[1] += t - s[1]
        elif ev == "sched:sched_process_exec":
            fm = re.search(r"filename=(\S+) pid=(\d+)", rest)
            if fm:
                execs[fm[2]] = (os.path.basename(fm[1]), t)
                timeline.append([t, os.path.basename(fm[1]), None, fm[2]])
        elif ev == "sched:sched_process_exit":
            pm = re.search(r"pid=(\d+)", rest)
            if pm and pm[1] in execs:
                prog, t0 = execs.pop(pm[1])
                for ev_ in timeline:
                    if ev_[3] == pm[1] and ev_[2] is None:
                        ev_[2] = t - t0
                r = runs.setdefault(prog, [0, 0.0])
                r[0] += 1
                r[1] += t - t0
        elif ev.startswith("syscalls:sys_enter_"):
            sysc[(tid, ev.rsplit("_", 1)[1])] = t
        elif ev.startswith("syscalls:sys_exit_"):
            kind = ev.rsplit("_", 1)[1]
            t0 = sysc.pop((tid, kind), None)
            if t0 is not None:
                if kind == "umount" or comm not in ("crun",):
                    timeline.append([t0, f"{kind}(2) by {comm}", t - t0, tid])
                c = calls.setdefault(f"{kind}(2) by {comm}", [0, 0.0])
                c[0] += 1
                c[1] += t - t0
    for op, _t in sent.values():  # sent, never answered within the trace (FORGETs)
        c = fuse.setdefault(op, [0, 0.0])
        c[0] += 1
    top_syms = sorted(syms.items(), key=lambda kv: -kv[1])[:25]
    daemon_syms = sorted(((k, v) for k, v in syms.items()
                          if k.split(":")[0] in programs or k.startswith("ovlfs")),
                         key=lambda kv: -kv[1])[:15]
    if last is not None:
        timeline.append([last, "last event", None, ""])
    timeline.sort(key=lambda e: e[0])
    return {
        "span": (last - first) if first is not None else 0.0,
        "cpu_ms": {k: v * SAMPLE_MS for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
        "top_symbols_ms": [(k, v * SAMPLE_MS) for k, v in top_syms],
        "daemon_symbols_ms": [(k, v * SAMPLE_MS) for k, v in daemon_syms],
        "timeline": [(round((e[0] - first) * 1e3, 1), e[1],
                      None if e[2] is None else round(e[2] * 1e3, 1))
                     for e in timeline[:400]] if first is not None else [],
        "fuse": {op: {"count": c, "total_ms": s * 1e3} for op, (c, s) in
                 sorted(fuse.items(), key=lambda kv: -kv[1][1])},
        "fuse_callers": [(c, op, n) for (c, op), n in
                         sorted(callers.items(), key=lambda kv: -kv[1])[:10]],
        "runs": {p: {"count": c, "total_ms": s * 1e3} for p, (c, s) in runs.items()
                 if p in programs or p in ("crun", "conmon", "ovlfs", "fuse-overlayfs")},
        "syscalls": {k: {"count": c, "total_ms": s * 1e3} for k, (c, s) in calls.items()},
        "perf_stderr": out.stderr.strip()[-500:],
    }


def startup(engines, top: str, rounds: int = 20) -> dict:
    """Each mount program alone, `rounds` times in turn, on a tiny lower: how long it
    takes to return (containers-storage waits for that), the first stat through the
    mount (the kernel's INIT round trip and two lookups), umount(2), and how long the
    daemon lives on after the umount. Medians, in ms."""
    progs = {e.name: e.program for e in engines.values() if e.program}
    os.makedirs(f"{top}/startup/lower/d")
    with open(f"{top}/startup/lower/d/f", "w") as f:
        f.write("x")
    rows: dict[str, list] = {n: [] for n in progs}
    for i in range(rounds):
        for name, prog in progs.items():
            b = f"{top}/startup/{name}{i}"
            for d in ("u", "w", "m"):
                os.makedirs(f"{b}/{d}")
            t0 = time.perf_counter()
            subprocess.run([prog, "-o", f"lowerdir={top}/startup/lower,upperdir={b}/u,"
                            f"workdir={b}/w,volatile", f"{b}/m"], check=True,
                           capture_output=True, timeout=30)
            t1 = time.perf_counter()
            os.stat(f"{b}/m/d/f")
            t2 = time.perf_counter()
            subprocess.run(["umount", f"{b}/m"], check=True, timeout=30)
            t3 = time.perf_counter()
            deadline = t3 + 10
            while time.perf_counter() < deadline and _mentions(b):
                time.sleep(0.0005)
            t4 = time.perf_counter()
            rows[name].append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    import statistics
    return {n: [round(statistics.median(c) * 1e3, 2) for c in zip(*r)] for n, r in rows.items()}


def _mentions(text: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        return True
            except OSError:
                pass
    return False


def profile_all(runner, engines, workloads, configs, top: str, settle, reap) -> dict:
    os.makedirs(top, exist_ok=True)
    programs = {os.path.basename(e.program) for e in engines.values() if e.program}
    res: dict = {}
    if any(w.key == "run" for w in workloads):
        res["startup"] = startup(engines, top)
        reap()
        print(f"  mount program start-up: {res['startup']}", flush=True)
    for w in workloads:
        for name in configs:
            eng = engines[name]
            path = f"{top}/{w.key}-{name}.data"
            wall, _ = record(runner, eng, w, path)
            settle(eng)
            reap()
            runner.after(eng, w)
            settle(eng)
            reap()
            a = analyse(path, programs)
            a["wall"] = wall
            res[f"{w.key}/{name}"] = a
            nreq = sum(v["count"] for v in a["fuse"].values())
            print(f"  profiled {w.key} on {name}: {wall:.2f} s under perf, "
                  f"{nreq} FUSE requests, CPU {sum(a['cpu_ms'].values()):.0f} ms", flush=True)
            os.unlink(path)
    return res
