#!/usr/bin/env python3
"""Turns errseq_bench's JSON output into the markdown tables of BENCHMARKS.md.

Every number is the median over the repetitions of CPU time per operation
(with 2 threads: per operation of one thread). A "cycle" benchmark runs
set() and then one other operation, both writing the word; that operation's
own cost is the cycle minus set() alone, marked "derived". set_two_words
makes two calls per iteration: halved.
"""
import json
import sys

WORDS = [("std::uint64_t", "errseq64"), ("std::uint32_t", "errseq32")]

# (label, what one call does, benchmark, how to get it, baseline for the ratio)
ROWS = [
    ("bare atomic load", "limit", "bare_load", "raw", None),
    ("bare compare-exchange", "limit", "bare_cas", "raw", None),
    ("load + compare-exchange", "for reference", "bare_load_cas", "raw", "bare_cas"),
    ("check()", "nothing new; int result kept", "check", "raw", "bare_load"),
    ("check()", "nothing new; caller branches on it", "check_branch", "raw", "bare_load"),
    ("check_and_advance()", "nothing new: one load", "check_and_advance_nothing_new", "raw", "bare_load"),
    ("peek()", "MUSTINC already set: one load", "peek_marked", "raw", "bare_load"),
    ("sample()", "already seen: one load", "sample_marked", "raw", "bare_load"),
    ("set()", "same errno, nobody looked: one load, no write", "set_unchanged", "raw", "bare_load"),
    ("set()", "errno alternates: one CAS (guess right)", "set_alternating", "raw", "bare_cas"),
    ("peek()", "marks MUSTINC: one CAS (derived)", "cycle_set_peek", "minus_set", "bare_cas"),
    ("check_and_advance()", "reports: one CAS (derived)", "cycle_set_check_and_advance", "minus_set", "bare_cas"),
    ("sample()", "marks MUSTINC: one CAS (derived)", "cycle_set_sample", "minus_set", "bare_cas"),
    ("set()", "two words in turn, guess about the other: load + CAS", "set_two_words", "half", "bare_cas"),
    ("set() + peek()", "cycle, both write", "cycle_set_peek", "raw", None),
    ("set() + check_and_advance()", "cycle, both write", "cycle_set_check_and_advance", "raw", None),
    ("set() + sample()", "cycle, both write", "cycle_set_sample", "raw", None),
]

TARGETS = [  # (benchmark row label, path prefix, baseline, limit)
    ("check()", "nothing new; int result kept", "bare_load", 1.3),
    ("check()", "nothing new; caller branches on it", "bare_load", 1.3),
    ("set()", "errno alternates", "bare_cas", 1.5),
    ("peek()", "marks MUSTINC", "bare_cas", 1.5),
    ("check_and_advance()", "reports", "bare_cas", 1.5),
]


def medians(path):
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        out[b["run_name"]] = b["cpu_time"]  # time_unit is ns by default
    return data["context"], out


def lookup(med, bench, impl, word, threads):
    if impl is None:
        name = f"{bench}<{word}>/threads:{threads}"
    else:
        name = f"{bench}<{impl}<{word}>>/threads:{threads}"
    return med.get(name)


def value(med, bench, how, impl, word, threads):
    v = lookup(med, bench, impl, word, threads)
    if v is None:
        return None
    if how == "minus_set":
        s = lookup(med, "set_alternating", impl, word, threads)
        # Below zero, the two medians differ by less than their noise: no value.
        return None if s is None or v < s else v - s
    if how == "half":
        return v / 2
    return v


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def table(med, word, title):
    lines = [f"#### {title}", "",
             "| operation | path measured | 1 thread ns | ratio | 2 threads ns | ratio | mutex 1 thread ns | mutex 2 threads ns |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    ratios = {}
    for label, path, bench, how, base in ROWS:
        bare = bench.startswith("bare_")
        impl = None if bare else "lockfree"
        cells = []
        for threads in (1, 2):
            v = value(med, bench, how, impl, word, threads)
            b = lookup(med, base, None, word, threads) if base else None
            r = v / b if (v is not None and b) else None
            cells += [fmt(v), fmt(r) + ("×" if r is not None else "")]
            if threads == 1:
                ratios[(label, path)] = r
        mutex = ["-", "-"] if bare else [
            fmt(value(med, bench, how, "locked", word, t)) for t in (1, 2)]
        lines.append(f"| {label} | {path} | " + " | ".join(cells + mutex) + " |")
    lines.append("")
    for label, prefix, base, limit in TARGETS:
        r = next((v for (l, p), v in ratios.items() if l == label and p.startswith(prefix)), None)
        verdict = "-" if r is None else ("met" if r <= limit else "NOT met")
        lines.append(f"- {label} ({prefix}) / {base.replace('_', ' ')}, 1 thread: "
                     f"{fmt(r)}× (target ≤ {limit}×): {verdict}")
    lines.append("")
    return "\n".join(lines)


def main():
    context, med = medians(sys.argv[1])
    print(f"Machine: {context.get('num_cpus')} CPUs at {context.get('mhz_per_cpu')} MHz, "
          f"load average {', '.join(f'{x:.2f}' for x in context.get('load_avg', []))}; "
          f"{context.get('library_build_type', '?')} build of Google Benchmark.\n")
    for word, name in WORDS:
        print(table(med, word, name))


if __name__ == "__main__":
    main()
