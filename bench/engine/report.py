"""bench/engine: medians, ratios, targets, the plot and the profile, from run.json.

Writes, in the results directory: results.md (the report), results.svg (the plot),
trials.tsv (every timed trial) next to run.json (everything the run recorded).
"""
from __future__ import annotations

import os
import statistics

LIMIT_KERNEL = 1.2  # issue 17, item 6: at most 1.2x the kernel's, ahead of fuse-overlayfs
NAMES = {"kernel": "kernel overlay", "fuse-overlayfs": "fuse-overlayfs", "ovlfs": "ovlfs"}
COLOURS = {"kernel": "#9467bd", "fuse-overlayfs": "#ff7f0e", "ovlfs": "#1f77b4"}
CPU_KEYS = [("podman_cpu", "podman (+crun)"), ("conmon_container", "conmon+container"),
            ("mount_program", "mount program")]


def fmt_t(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.1f} s"


def summarize(run: dict) -> dict:
    out = {}
    for w in run["workloads"]:
        key = w["key"]
        cells = {}
        for c in run["configs"]:
            xs = [t for t in run["trials"] if t["workload"] == key and t["config"] == c]
            walls = [t["wall"] for t in xs]
            if not walls:
                continue
            med = statistics.median(walls)
            cells[c] = {
                "median": med, "half_range": (max(walls) - min(walls)) / 2,
                "n": len(walls),
                "cpu": {k: statistics.median([t.get(k, 0.0) or 0.0 for t in xs])
                        for k, _ in CPU_KEYS},
                "settle": statistics.median([t.get("settle", 0.0) for t in xs]),
                "psi": statistics.median([t["psi_some"] for t in xs
                                          if t.get("psi_some") is not None] or [0.0]),
            }
        k, f, o = (cells.get(c, {}).get("median") for c in ("kernel", "fuse-overlayfs", "ovlfs"))
        r_ok = o / k if o and k else None
        r_of = o / f if o and f else None
        r_fk = f / k if f and k else None
        out[key] = {"cells": cells, "ovlfs_kernel": r_ok, "ovlfs_fuse": r_of,
                    "fuse_kernel": r_fk,
                    "meets_kernel": r_ok is not None and r_ok <= LIMIT_KERNEL,
                    "meets_fuse": r_of is not None and r_of < 1.0}
        out[key]["met"] = out[key]["meets_kernel"] and out[key]["meets_fuse"]
    return out


def cell(c: dict | None) -> str:
    if not c:
        return "—"
    return f"{fmt_t(c['median'])} ±{100 * c['half_range'] / c['median']:.0f}%"


def yn(ok: bool, ratio: float | None, bound: str) -> str:
    if ratio is None:
        return "—"
    return ("**yes**" if ok else "no") + f" ({ratio:.2f}× {bound})"


def svg(run: dict, summ: dict) -> str:
    rows = run["workloads"]
    configs = run["configs"]
    bar, gap, left, width = 14, 16, 150, 480
    ratios = [(summ[w["key"]]["cells"].get(c, {}).get("median") or 0) /
              summ[w["key"]]["cells"]["kernel"]["median"]
              for w in rows for c in configs if "kernel" in summ[w["key"]]["cells"]]
    xmax = max([1.5] + ratios) * 1.08
    x = lambda r: left + width * r / xmax  # noqa: E731
    height = 40 + len(rows) * (bar * len(configs) + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 200}" '
           f'height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="16" font-size="13">Wall time of the podman command, '
           f'kernel overlay = 1 (median of {run["reps"]}; lower is better)</text>']
    y = 34
    for w in rows:
        s = summ[w["key"]]
        base = s["cells"].get("kernel", {}).get("median")
        out.append(f'<text x="{left - 8}" y="{y + bar * len(configs) / 2 + 4}" '
                   f'text-anchor="end" font-weight="bold">{w["key"]}</text>')
        for c in configs:
            m = s["cells"].get(c, {}).get("median")
            if m and base:
                r = m / base
                hr = s["cells"][c]["half_range"] / base
                out.append(f'<rect x="{left}" y="{y + 1}" width="{x(r) - left:.1f}" '
                           f'height="{bar - 2}" fill="{COLOURS[c]}"/>')
                out.append(f'<line x1="{x(r - hr):.1f}" x2="{x(r + hr):.1f}" '
                           f'y1="{y + bar / 2}" y2="{y + bar / 2}" stroke="black"/>')
                out.append(f'<text x="{x(r + hr) + 4:.1f}" y="{y + bar - 3}">'
                           f'{r:.2f}× {NAMES[c]}</text>')
            y += bar
        y += gap
    for r, label, dash in ((1.0, "1.0", "2,2"), (LIMIT_KERNEL, "target 1.2", "6,3")):
        out.append(f'<line x1="{x(r):.1f}" x2="{x(r):.1f}" y1="28" y2="{y - gap + 4}" '
                   f'stroke="#d62728" stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{x(r):.1f}" y="{y + 6}" text-anchor="middle" '
                   f'fill="#d62728">{label}</text>')
    out.append(f'<text x="{left}" y="{height - 8}" fill="#555">bars: median ratio to the '
               f'kernel overlay; whiskers: ± half the range of the repetitions</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def text_plot(run: dict, summ: dict) -> str:
    cols = 50
    ratios = [summ[w["key"]]["cells"][c]["median"] / summ[w["key"]]["cells"]["kernel"]["median"]
              for w in run["workloads"] for c in run["configs"]
              if c in summ[w["key"]]["cells"] and "kernel" in summ[w["key"]]["cells"]]
    xmax = max([1.5] + ratios)
    mark = round(cols * LIMIT_KERNEL / xmax)
    lines = [f"{'':22}0{' ' * (mark - 1)}1.2× kernel"]
    for w in run["workloads"]:
        s = summ[w["key"]]
        for i, c in enumerate(run["configs"]):
            if c not in s["cells"]:
                continue
            r = s["cells"][c]["median"] / s["cells"]["kernel"]["median"]
            n = round(cols * r / xmax)
            b = ["#"] * n + [" "] * (cols + 2 - n)
            if b[mark] == " ":
                b[mark] = "|"
            lines.append(f"{w['key'] if i == 0 else '':7}{c:>15} {''.join(b)} {r:.2f}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def profile_md(run: dict) -> list[str]:
    prof = run.get("profile") or {}
    if not prof:
        return []
    out = ["## Profile of the workloads that missed a target", "",
           "One more trial per configuration under `perf record`, which follows the podman "
           "command and everything it starts (conmon, crun, the container, the mount "
           "program's daemon) and nothing else (bench/engine/profiling.py). Times under "
           "perf are longer than the timed trials'; compare the parts.", ""]
    workloads = sorted({k.split("/")[0] for k in prof if "/" in k},
                       key=[w["key"] for w in run["workloads"]].index)
    for wk in workloads:
        cfgs = [c for c in run["configs"] if f"{wk}/{c}" in prof]
        P = {c: prof[f"{wk}/{c}"] for c in cfgs}
        out += [f"### {wk}", "", "| | " + " | ".join(NAMES[c] for c in cfgs) + " |",
                "|---|" + "---:|" * len(cfgs)]
        out.append("| wall under perf (first to last event) | " + " | ".join(
            f"{P[c]['wall'] * 1e3:.0f} ms ({P[c]['span'] * 1e3:.0f} ms)" for c in cfgs) + " |")
        groups = {}
        for c in cfgs:
            for comm, ms in P[c]["cpu_ms"].items():
                groups.setdefault(comm, {})[c] = ms
        out.append("| CPU, all processes | " + " | ".join(
            f"{sum(P[c]['cpu_ms'].values()):.0f} ms" for c in cfgs) + " |")
        for comm, by in sorted(groups.items(), key=lambda kv: -max(kv[1].values()))[:9]:
            out.append(f"| CPU of `{comm}` | " + " | ".join(
                f"{by.get(c, 0):.0f} ms" for c in cfgs) + " |")
        runs = sorted({p for c in cfgs for p in P[c]["runs"]})
        for p in runs:
            out.append(f"| `{p}` runs (exec to exit) | " + " | ".join(
                (f"{P[c]['runs'][p]['count']}× {P[c]['runs'][p]['total_ms']:.0f} ms"
                 if p in P[c]["runs"] else "—") for c in cfgs) + " |")
        calls = sorted({k for c in cfgs for k in P[c]["syscalls"]})
        for k in calls:
            out.append(f"| {k} | " + " | ".join(
                (f"{P[c]['syscalls'][k]['count']}× {P[c]['syscalls'][k]['total_ms']:.1f} ms"
                 if k in P[c]["syscalls"] else "—") for c in cfgs) + " |")
        fcfg = [c for c in cfgs if P[c]["fuse"]]
        if fcfg:
            tot = {c: (sum(v["count"] for v in P[c]["fuse"].values()),
                       sum(v["total_ms"] for v in P[c]["fuse"].values())) for c in fcfg}
            out.append("| FUSE requests, all (count, summed wait) | " + " | ".join(
                (f"{tot[c][0]}, {tot[c][1]:.0f} ms" if c in tot else "—") for c in cfgs) + " |")
            ops = sorted({op for c in fcfg for op in P[c]["fuse"]},
                         key=lambda op: -max(P[c]["fuse"].get(op, {}).get("total_ms", 0)
                                             for c in fcfg))
            for op in ops:
                out.append(f"| FUSE {op} | " + " | ".join(
                    (f"{P[c]['fuse'][op]['count']}, {P[c]['fuse'][op]['total_ms']:.0f} ms"
                     if op in P[c]["fuse"] else "—") for c in cfgs) + " |")
        out.append("")
        for c in fcfg:
            if P[c].get("fuse_callers"):
                out.append(f"Who sent the FUSE requests on {NAMES[c]} (process: request, "
                           "count): " + "; ".join(f"`{cm}` {op} {n}" for cm, op, n in
                                                 P[c]["fuse_callers"]) + ".")
                out.append("")
        if wk == "run" and prof.get("startup"):
            st = prof["startup"]
            out += ["The mount programs alone (bench/engine/profiling.py `startup`: each "
                    "mounted 20 times in turn on a tiny lower, outside podman; medians):", "",
                    "| | returns (containers-storage waits) | first stat through the mount "
                    "(INIT + lookups) | umount(2) | daemon lives on after the umount |",
                    "|---|---:|---:|---:|---:|"]
            for n, v in st.items():
                out.append(f"| {NAMES.get(n, n)} | " + " | ".join(f"{x:.2f} ms" for x in v) + " |")
            out.append("")
        for c in cfgs:
            hot = P[c].get("daemon_symbols_ms") or []
            if hot:
                out.append(f"Hottest symbols of the {NAMES[c]} daemon: " + "; ".join(
                    f"`{k.split(': ', 1)[1]}` {v:.1f} ms" for k, v in hot[:10]) + ".")
                out.append("")
        out += [f"<details><summary>timelines of {wk} under perf (ms from the first event: "
                "program run or system call, its duration)</summary>", ""]
        for c in cfgs:
            tl = [e for e in P[c].get("timeline", []) if not e[1].startswith("mount(2) by crun")]
            out += [f"{NAMES[c]}:", "", "```"]
            out += [f"{e[0]:9.1f}  {e[1]}" + ("" if e[2] is None else f"  ({e[2]:.1f} ms)")
                    for e in _squeeze(tl)]
            out += ["```", ""]
        out += ["</details>", ""]
    return out


def _squeeze(tl: list) -> list:
    """A timeline with runs of the same program folded into one line (a build runs
    hundreds of busybox applets)."""
    out = []
    for e in tl:
        if out and out[-1][1].split(" ×")[0] == e[1] and e[1] not in ("last event",):
            n = int(out[-1][1].split(" ×")[1]) if " ×" in out[-1][1] else 1
            out[-1] = [out[-1][0], f"{e[1]} ×{n + 1}", None]
        else:
            out.append(list(e))
    return out[:120]


def write(run: dict, outdir: str) -> None:
    summ = summarize(run)
    reps = run["reps"]
    with open(os.path.join(outdir, "trials.tsv"), "w") as f:
        keys = ["rep", "workload", "config", "wall", "podman_cpu", "conmon_container",
                "mount_program", "other", "psi_some", "settle"]
        f.write("\t".join(keys) + "\n")
        for t in run["trials"]:
            f.write("\t".join("" if t.get(k) is None else
                              (f"{t[k]:.4f}" if isinstance(t[k], float) else str(t[k]))
                              for k in keys) + "\n")
    with open(os.path.join(outdir, "results.svg"), "w") as f:
        f.write(svg(run, summ))
    m = run["machine"]
    psis = [t["psi_some"] for t in run["trials"] if t.get("psi_some") is not None]
    psi_med = statistics.median(psis) if psis else 0
    v = run["versions"]
    L = ["# Engine benchmarks (issue 17, item 6)", "",
         "<!-- generated by bench/engine/run; edits here are overwritten -->", "",
         f"- Run: {run['date']}, commit {run['commit']}"
         + (" (src/ or include/ had uncommitted changes)" if run.get("src_dirty") else "")
         + f"; {reps} repetitions, interleaved; `bench/engine/run "
         + " ".join(run["argv"]) + "`" + f", {run['duration_s'] / 60:.1f} min in all.",
         f"- {v['podman']}, {v['buildah']}, {v['crun']}, {v['conmon']}; "
         f"mount programs: {v['ovlfs']}; {v['fuse-overlayfs']}.",
         f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Linux "
         f"{m['kernel']}.",
         f"- Storages (graphroot, runroot, temporary files of podman and buildah): on "
         f"{run.get('fs', 'the host /tmp')}.",
         f"- Load: **shared with other work**: load average {run['load_start']} at the "
         f"start, {run.get('load_end', '?')} at the end; during a trial some task was waiting "
         f"for a CPU {100 * psi_med:.0f}% of the time (median over the trials, PSI cpu some; "
         f"largest {100 * max(psis or [0]):.0f}%).", "",
         f"## Median wall time of the podman command (± half the range of the {reps} "
         "repetitions)", "",
         "| workload | kernel overlay | fuse-overlayfs | ovlfs | fuse-overlayfs ÷ kernel "
         "| ovlfs ÷ kernel | ovlfs ÷ fuse-overlayfs | ovlfs ≤ 1.2× kernel | ovlfs < fuse-overlayfs |",
         "|---|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
    for w in run["workloads"]:
        s = summ[w["key"]]
        c = s["cells"]
        r = lambda x: "—" if x is None else f"{x:.2f}×"  # noqa: E731
        L.append(f"| {w['key']}: {w['title']} | {cell(c.get('kernel'))} | "
                 f"{cell(c.get('fuse-overlayfs'))} | {cell(c.get('ovlfs'))} | "
                 f"{r(s['fuse_kernel'])} | {r(s['ovlfs_kernel'])} | {r(s['ovlfs_fuse'])} | "
                 f"{'PASS' if s['meets_kernel'] else 'FAIL'} | "
                 f"{'PASS' if s['meets_fuse'] else 'FAIL'} |")
    met = sum(s["meets_kernel"] + s["meets_fuse"] for s in summ.values())
    L += ["", f"Targets met: {met} of {2 * len(summ)}.", "",
          "## Plot", "", "![ratios to the kernel overlay](results.svg)", "", "```",
          text_plot(run, summ).rstrip(), "```", "",
          "## CPU per trial (medians)", "",
          "CPU time (user + system) of what each trial started, read from the processes "
          "as they end (the benchmark is their subreaper): `podman (+crun)` is the podman "
          "command with what it waited for (crun create/start/delete, the mount "
          "program's foreground part); `conmon+container` is conmon with the container's "
          "processes and conmon's exit command (`podman container cleanup`); `mount "
          "program` is the FUSE daemon (all threads). Kernel work done for a FUSE request "
          "in the caller's context is the caller's.", "",
          "The last column is how long, after podman returned, its processes (conmon and "
          "its exit command, the mount program's daemon) took to end; the trials do not "
          "include it.", "",
          "| workload | config | wall | podman (+crun) | conmon+container | mount program "
          "| processes left after podman |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for w in run["workloads"]:
        for c in run["configs"]:
            x = summ[w["key"]]["cells"].get(c)
            if not x:
                continue
            L.append(f"| {w['key']} | {NAMES[c]} | {fmt_t(x['median'])} | " + " | ".join(
                f"{x['cpu'][k] * 1e3:.0f} ms" for k, _ in CPU_KEYS)
                + f" | {x['settle'] * 1e3:.0f} ms |")
    if run.get("verify"):
        L += ["", "## Check of the built image", "",
              "The warm-up's build, then one container counting what the build left "
              "(`find /new2 /moved /data | wc -l`, two files' contents, `ls /moved`, "
              "`ls -A /data`) and unpacking the archive (`find /u | wc -l`): the same on "
              "every configuration.", "", "```", *run["verify"], "```"]
    L += [""] + profile_md(run)
    if run.get("notes"):
        L += ["## Notes", ""] + [f"- {n}" for n in run["notes"]] + [""]
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write("\n".join(L).rstrip() + "\n")
