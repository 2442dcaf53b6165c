#!/usr/bin/env python3
"""podman and buildah with ovlfs as containers-storage's mount_program (issue 17, item 4;
SPEC.md §5), each check compared with the same check on podman's native kernel overlay.

Every check runs twice, on two storages of their own under one temporary directory:
`kernel` (the overlay driver mounting the kernel's overlayfs) and `ovlfs` (the same driver
with mount_program = ovlfs). A check passes when both runs print the same (a diff is
printed when not) and each run meets the check's own expectations (listed per check);
a check whose kernel run already misses them is a broken test or host, and fails too.

The image is made here, offline: a docker-archive of three layers built from
busybox-static, whose upper layers delete files, directories and symlinks and make
directories opaque with AUFS whiteouts (`.wh.NAME`, `.wh..wh..opq`), as image layers
carry them; containers-storage keeps them in that form on disk when a mount program is
set, and turns them into the kernel's (0:0 devices, opaque xattrs) when not.

Checks: layers (the image's tree through the mount), run (writes, renames a lower
directory, hard links, device nodes, deletions, opaque), commit (the new layer, exported,
and a run of the committed image), build (a Containerfile whose RUN steps create,
modify, delete and rename; the tree its layers make and a run of the result), dirlinks
(directory link counts), volume (`-v DIR:/x:O`), uidmap (`--uidmap 0:100000:65536`),
keep-id (`--userns=keep-id`: skipped when podman refuses it rootful), info (`podman info`
names the mount program), buildah (from, run, commit), unmount (no mount and no ovlfs
daemon left once podman is done). Layers are compared by the tree they make, not byte
for byte: with a mount program containers-storage always diffs the mounted trees, without
one it reads the upper directory, and the two write the same change differently.

--reference PROGRAM runs every check a third time with another mount program (e.g.
fuse-overlayfs) and shows how it fares, to tell ovlfs's failures from the engine's; it
never changes the verdict. --show prints every check's output; --only runs some checks.

Needs root and podman (else exit 77: skipped). Runs in a private mount namespace where
the host's system directories are read-only, /run and /var/tmp are directories of its
own and no cgroup hierarchy is visible; every mount, daemon and file it makes goes with
it (its temporary directory is /tmp/oe.*). Each podman command runs under a watchdog: on
a timeout the ovlfs daemons' thread backtraces are printed, they are killed, and the run
fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import enginelib as E  # noqa: E402
from enginelib import Entry, wblib  # noqa: E402

IMAGE = "localhost/ovlfs-test:layers"
BUSYBOX = "/bin/busybox"
TIMEOUT = 60  # seconds, per podman command

# ---------------------------------------------------------------------------------------
# The image


def image_layers() -> list[list[Entry]]:
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    applets = wblib.run([BUSYBOX, "--list"]).stdout.split()
    d = lambda name, mode=0o755: Entry(name, "d", mode=mode)  # noqa: E731
    base = [
        d("bin"), Entry("bin/busybox", data=busybox, mode=0o755),
        *[Entry(f"bin/{a}", "l", target="busybox") for a in sorted(applets) if a != "busybox"],
        d("etc"),
        Entry("etc/passwd",
              data="root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n"),
        Entry("etc/group", data="root:x:0:\nu:x:1000:\n"),
        d("root", 0o700), d("tmp", 0o1777), d("var"), d("home"),
        d("t"),
        d("t/keep"), Entry("t/keep/a", data="a1\n"), Entry("t/keep/b", data="b1\n"),
        d("t/keep/sub"), Entry("t/keep/sub/deep", data="deep\n"),
        d("t/gone"), Entry("t/gone/x", data="x\n"), d("t/gone/y"), Entry("t/gone/y/z", data="z\n"),
        Entry("t/file_gone", data="fg\n"),
        Entry("t/sym_gone", "l", target="keep/a"),
        d("t/opq"), Entry("t/opq/old1", data="o1\n"), Entry("t/opq/old2", data="o2\n"),
        d("t/opq/sub"), Entry("t/opq/sub/old3", data="o3\n"),
        d("t/ren"), Entry("t/ren/r1", data="r1\n"), d("t/ren/sub"),
        Entry("t/ren/sub/r2", data="r2\n", mode=0o600, uid=1000, gid=1000),
        Entry("t/owned", data="owned\n", mode=0o640, uid=1000, gid=1000),
        d("t/udir", 0o750), Entry("t/udir/f", data="u\n", uid=1000, gid=1000),
        Entry("t/hl1", data="hard\n"), Entry("t/hl2", "h", target="t/hl1"),
        Entry("t/sym", "l", target="keep/a"),
        Entry("t/modme", data="v1\n"),
        Entry("t/fifo", "p"),
        Entry("t/null", "c", mode=0o666, dev=(1, 3)),
        Entry("t/setuid", data="#!/bin/sh\n", mode=0o4755),
        d("t/mixed"), Entry("t/mixed/m1", data="m1\n"), Entry("t/mixed/m2", data="m2\n"),
    ]
    second = [  # deletes, an opaque directory, a merge
        d("t"),
        Entry("t/.wh.file_gone"), Entry("t/.wh.gone"), Entry("t/.wh.sym_gone"),
        Entry("t/.wh.nothere"),                       # hides nothing
        d("t/opq"), Entry("t/opq/.wh..wh..opq"), Entry("t/opq/new1", data="n1\n"),
        d("t/keep"), Entry("t/keep/c", data="c2\n"),
        d("t/keep/sub"), Entry("t/keep/sub/.wh.deep"),  # empties a directory
        Entry("t/modme", data="v2\n"),
        d("t/mixed"), Entry("t/mixed/.wh.m1"), Entry("t/mixed/m3", data="m3\n"),
        d("t/later"), Entry("t/later/l1", data="l1\n"), Entry("t/later/l2", data="l2\n"),
    ]
    third = [  # names deleted below come back as other types; opaque over a merge
        d("t"),
        Entry("t/gone", data="gone-again\n"),           # a directory below, a file now
        d("t/file_gone"), Entry("t/file_gone/inside", data="i\n"),  # a file below
        d("t/later"), Entry("t/later/.wh.l1"),
        d("t/mixed"), Entry("t/mixed/.wh..wh..opq"), Entry("t/mixed/m4", data="m4\n"),
    ]
    return [base, second, third]


# What /t of the image shows (names only; every line of the listing is compared between
# the two runs anyway).
IMAGE_T = """
/t /t/file_gone /t/file_gone/inside /t/fifo /t/gone /t/hl1 /t/hl2 /t/keep /t/keep/a
/t/keep/b /t/keep/c /t/keep/sub /t/later /t/later/l2 /t/mixed /t/mixed/m4 /t/modme /t/null
/t/opq /t/opq/new1 /t/owned /t/ren /t/ren/r1 /t/ren/sub /t/ren/sub/r2 /t/setuid /t/sym
/t/udir /t/udir/f
""".split()

# ---------------------------------------------------------------------------------------
# Shell run inside the containers (busybox)

# lst PATH...: one line per name, sorted: type, mode, owner, link count, size and content
# digest of files, link targets, device numbers. No times, no inode numbers, no directory
# sizes (they depend on the filesystem below), no directory link counts (the `dirlinks`
# check has them: a directory renamed in a container is a merged directory, link count 1,
# on an overlay that renames by redirect, and a plain copy, its real count, where the
# kernel's overlayfs has redirect_dir off, as here by default).
SH_LIB = r"""
exec 2>&1
lst() {
  find "$@" | sort | while IFS= read -r f; do
    set -- $(stat -c '%f %a %u %g %h %s %t %T' "$f")
    case $(( 0x$1 >> 12 )) in
      4) echo "$f d $2 $3:$4";;
      8) echo "$f f $2 $3:$4 n=$5 s=$6 $(md5sum < "$f" | cut -c1-8)";;
      10) echo "$f l $3:$4 -> $(readlink "$f")";;
      2) echo "$f c $2 $3:$4 n=$5 $7:$8";;
      6) echo "$f b $2 $3:$4 n=$5 $7:$8";;
      1) echo "$f p $2 $3:$4 n=$5";;
      *) echo "$f ? $1";;
    esac
  done
}
# Names of whiteouts anywhere on the container's root filesystem, and a lookup of some.
wh() {
  echo "-- .wh. names:"; find / -xdev -name '.wh.*'
  for n in /t/.wh.gone /t/.wh.file_gone /t/.wh.sym_gone /t/opq/.wh..wh..opq \
           /t/mixed/.wh..wh..opq /t/later/.wh.l1 /t/keep/sub/.wh.deep; do
    [ -e "$n" ] || [ -L "$n" ] && echo "VISIBLE $n"
  done
  echo "-- end"
}
try() { "$@" || echo "FAILED (exit $?): $*"; }
"""

# The container of the `run` check: what a program in a container does to its tree.
RUN_SCRIPT = r"""
echo "== image"; lst /t; wh
echo "== reads"
cat /t/modme /t/gone /t/file_gone/inside /t/sym /t/hl2
[ /t/hl1 -ef /t/hl2 ] && echo "hl1 and hl2: one inode"
try cat /t/null
echo "== changes"
try sh -c 'echo new > /t/new'
try sh -c 'echo v3 >> /t/modme'
try sh -c 'echo b2 > /t/keep/b'
try mv /t/ren /t/renamed
try mv /t/keep/a /t/moved_a
try ln /t/keep/c /t/hl_c
try ln /t/new /t/new_hl
try rm /t/hl1
try sh -c 'echo n2 > /t/opq/n2'
echo "opq now:" $(ls -A /t/opq)
try rm -r /t/opq
try mv /t/mixed /t/mixed_moved
try mkdir /t/mixed
try sh -c 'echo fresh > /t/mixed/fresh'
try mkdir -p /t/nd/sub
try sh -c 'echo x > /t/nd/sub/x'
try mknod /t/c2 c 1 3
try mknod /t/b2 b 7 0
try mknod /t/p2 p
try chmod 600 /t/keep/b
try chown 1000:1000 /t/new
try chmod 4711 /t/keep/c
try rmdir /t/keep/sub
try ln -s renamed/r1 /t/sym2
try rm /t/sym
try sh -c 'echo l3 > /t/later/l3'
try mv /t/later /t/keep/later
echo "== after"; lst /t; wh
cat /t/renamed/r1 /t/renamed/sub/r2 /t/moved_a /t/hl_c /t/modme /t/mixed/fresh /t/sym2
[ /t/keep/c -ef /t/hl_c ] && echo "c and hl_c: one inode"
[ /t/new -ef /t/new_hl ] && echo "new and new_hl: one inode"
try ls /t/ren
try cat /t/c2
"""

RUN_AFTER_T = """
/t /t/b2 /t/c2 /t/fifo /t/file_gone /t/file_gone/inside /t/gone /t/hl2 /t/hl_c /t/keep
/t/keep/b /t/keep/c /t/keep/later /t/keep/later/l2 /t/keep/later/l3 /t/mixed /t/mixed/fresh
/t/mixed_moved /t/mixed_moved/m4 /t/modme
/t/moved_a /t/nd /t/nd/sub /t/nd/sub/x /t/new /t/new_hl /t/null /t/owned /t/p2 /t/renamed
/t/renamed/r1 /t/renamed/sub /t/renamed/sub/r2 /t/setuid /t/sym2 /t/udir /t/udir/f
""".split()

# The container that the `commit` check commits.
COMMIT_SCRIPT = r"""
echo x >> /t/modme
rm /t/keep/b
rm -r /t/later
rm -r /t/opq && mkdir /t/opq && echo o > /t/opq/o
mv /t/ren /t/renamed
echo new > /t/newf && ln /t/newf /t/newf_hl
mkdir -p /t/newd/sub && echo s > /t/newd/sub/s
mknod /t/newc c 1 3
chmod 600 /t/owned
chown 1000:1000 /t/keep/c
rm /t/sym && ln -s keep/c /t/sym
echo done
"""

COMMIT_T = """
/t /t/fifo /t/file_gone /t/file_gone/inside /t/gone /t/hl1 /t/hl2 /t/keep /t/keep/a
/t/keep/c /t/keep/sub /t/mixed /t/mixed/m4 /t/modme /t/newc /t/newd /t/newd/sub
/t/newd/sub/s /t/newf /t/newf_hl /t/null /t/opq /t/opq/o /t/owned /t/renamed /t/renamed/r1
/t/renamed/sub /t/renamed/sub/r2 /t/setuid /t/sym /t/udir /t/udir/f
""".split()

CONTAINERFILE = """\
FROM {image}
RUN echo created > /t/created && mkdir -p /t/bd/sub && echo s > /t/bd/sub/s && \\
    echo v-build >> /t/modme
RUN rm /t/keep/a && rm -r /t/later && mv /t/ren /t/ren_b && mv /t/owned /t/owned_b && \\
    ln /t/created /t/created_hl
RUN rm -r /t/opq && mkdir /t/opq && echo rebuilt > /t/opq/rebuilt && mv /t/bd /t/bd2 && \\
    rm /t/created && echo again >> /t/created_hl
COPY host.txt /t/copied
RUN mkdir -p /t/keep/sub2 && mknod /t/keep/sub2/null c 1 3 && chmod 700 /t/keep
"""

BUILD_T = """
/t /t/bd2 /t/bd2/sub /t/bd2/sub/s /t/copied /t/created_hl /t/fifo /t/file_gone
/t/file_gone/inside /t/gone /t/hl1 /t/hl2 /t/keep /t/keep/b /t/keep/c /t/keep/sub
/t/keep/sub2 /t/keep/sub2/null /t/mixed /t/mixed/m4 /t/modme /t/null /t/opq /t/opq/rebuilt
/t/owned_b /t/ren_b /t/ren_b/r1 /t/ren_b/sub /t/ren_b/sub/r2 /t/setuid /t/sym /t/udir
/t/udir/f
""".split()

# Directory link counts: the kernel's overlayfs reports 1 for a merged directory (one that
# layers below also hold, not opaque) and the real count for the others. No renamed
# directory here (see lst).
DIRLINKS_SCRIPT = r"""
dl() { for d in "$@"; do stat -c '%n n=%h' "$d"; done; }
echo "== image"; find /t -type d | sort | while IFS= read -r d; do dl "$d"; done
mkdir -p /t/nd/sub/sub2 /t/nd/sub3
rm -r /t/mixed && mkdir -p /t/mixed/s1 /t/mixed/s2
mkdir /t/keep/new /t/opq/new
rm -r /t/later/l2
rm -r /t/file_gone/inside && mkdir /t/file_gone/d
mv /t/ren /t/ren_moved && mkdir -p /t/ren/s1
echo "== after"
dl /t /t/nd /t/nd/sub /t/mixed /t/keep /t/keep/new /t/opq /t/later /t/file_gone /t/ren
"""

VOLUME_SCRIPT = r"""
lst /x
try sh -c 'echo w > /x/new'
try sh -c 'echo m >> /x/a'
try rm /x/sub/b
try rm -r /x/gonedir
try mkdir /x/d
try mv /x/sub /x/sub2
echo "== after"; lst /x
cat /x/a /x/new
"""

UIDMAP_SCRIPT = r"""
id
ls -lnd /t/owned /t/keep/a /t/setuid /t/udir /t/udir/f
lst /t/owned /t/keep/a /t/udir /t/setuid /t/ren
try sh -c 'echo w > /t/w'
try mkdir /t/wd
try chown 1000:1000 /t/wd
try sh -c 'echo more >> /t/owned'
try chown 0:0 /t/udir/f
echo "== after"; lst /t/w /t/wd /t/owned /t/udir
"""

BUILDAH_SCRIPT = r"""
echo bh > /t/bh
rm /t/keep/b
rm -r /t/mixed && mkdir /t/mixed && echo mx > /t/mixed/mx
mv /t/ren /t/ren_bh
lst /t; wh
"""

BUILDAH_T = """
/t /t/bh /t/fifo /t/file_gone /t/file_gone/inside /t/gone /t/hl1 /t/hl2 /t/keep /t/keep/a
/t/keep/c /t/keep/sub /t/later /t/later/l2 /t/mixed /t/mixed/mx /t/modme /t/null /t/opq
/t/opq/new1 /t/owned /t/ren_bh /t/ren_bh/r1 /t/ren_bh/sub /t/ren_bh/sub/r2 /t/setuid /t/sym
/t/udir /t/udir/f
""".split()

# ---------------------------------------------------------------------------------------
# Checks


@dataclass
class Outcome:
    """What one check showed on one engine: the text compared between engines, the
    expectations it missed, and a reason when the check does not apply (skipped)."""
    text: str = ""
    problems: list[str] = field(default_factory=list)
    skip: str = ""
    compare: bool = True
    info: str = ""  # shown with --show, never compared


def section(text: str, start: str, end: str | None = None) -> str:
    """The lines of text after the line `start` (up to the line `end`)."""
    lines = text.splitlines()
    if start not in lines:
        return ""
    lines = lines[lines.index(start) + 1:]
    if end is not None and end in lines:
        lines = lines[:lines.index(end)]
    return "\n".join(lines)


def names_of(listing: str, top: str) -> list[str]:
    """The names of a listing's lines that are top or below it."""
    names = [line.split(" ", 1)[0] for line in listing.splitlines()]
    return [n for n in names if n == top or n.startswith(top + "/")]


def expect_names(out: Outcome, what: str, listing: str, top: str, expected: list[str]
                 ) -> None:
    got = names_of(listing, top)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        out.problems.append(f"{what}: missing {missing}, unexpected {extra}")


def expect_no_whiteouts(out: Outcome, what: str, text: str) -> None:
    for block in text.split("-- .wh. names:")[1:]:
        shown = [n for n in block.split("-- end")[0].splitlines() if n.strip()]
        if shown:
            out.problems.append(f"{what}: whiteouts visible: {shown}")
    visible = [line for line in text.splitlines() if line.startswith("VISIBLE ")]
    if visible:
        out.problems.append(f"{what}: whiteouts found by lookup: {visible}")


def expect_in(out: Outcome, what: str, text: str, needles: list[str]) -> None:
    for n in needles:
        if n not in text:
            out.problems.append(f"{what}: no {n!r}")


def expect_no_failures(out: Outcome, what: str, text: str, allowed: tuple = ()) -> None:
    for line in text.splitlines():
        if line.startswith("FAILED") and not any(a in line for a in allowed):
            out.problems.append(f"{what}: {line}")


def container(eng: E.Engine, script: str, *podman_args: str) -> str:
    """Output (stdout and stderr) of `podman run --rm ... IMAGE sh -c SCRIPT`; raises
    with podman's message when podman fails."""
    p = eng.podman("run", "--rm", *podman_args, "sh", "-c", SH_LIB + script, timeout=TIMEOUT)
    return p.stdout


def check_layers(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    out.text = container(eng, "lst /t; wh; cat /t/modme /t/gone; ls /bin | wc -l", IMAGE)
    expect_names(out, "/t of the image", out.text, "/t", IMAGE_T)
    expect_no_whiteouts(out, "image", out.text)
    expect_in(out, "contents", out.text, ["v2\ngone-again\n"])
    return out


def check_run(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    out.text = container(eng, RUN_SCRIPT, IMAGE)
    expect_names(out, "/t of the image", section(out.text, "== image", "-- .wh. names:"),
                 "/t", IMAGE_T)
    expect_names(out, "/t after the changes", section(out.text, "== after", "-- .wh. names:"),
                 "/t", RUN_AFTER_T)
    expect_no_whiteouts(out, "run", out.text)
    # Whether a device node opens (nodev) is for the two runs to agree on: podman 4.3
    # drops storage.conf's mountopt (nodev) from a container's mount, so both open them.
    expect_no_failures(out, "run", out.text, allowed=("cat /t/null", "cat /t/c2", "ls /t/ren"))
    expect_in(out, "run", out.text, [
        "hl1 and hl2: one inode", "c and hl_c: one inode", "new and new_hl: one inode",
        "r1\nr2\na1\nc2\nv2\nv3\nfresh\nr1\n", "FAILED (exit 1): ls /t/ren",
        "opq now: n2 new1\n"])
    return out


def check_commit(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    name = "ovlfs-test-commit"
    committed = "localhost/ovlfs-test:committed"
    made = eng.podman("run", "--name", name, IMAGE, "sh", "-c", COMMIT_SCRIPT,
                      timeout=TIMEOUT).stdout
    try:
        eng.podman("commit", "-q", name, committed, timeout=TIMEOUT)
    finally:
        eng.podman("rm", "-f", name, timeout=TIMEOUT, check=False)
    layers = saved(eng, committed)
    effects, model = E.layer_effects(layers, 3)
    ran = container(eng, "lst /t; wh; cat /t/modme /t/renamed/sub/r2 /t/opq/o", committed)
    out.text = (f"container: {made}\nlayers: {len(layers)}\n" + "\n".join(effects)
                + "\n== run of the committed image\n" + ran)
    out.info = "the new layer as exported:\n" + "\n".join(E.describe_layer(layers[-1]))
    if len(layers) != 4:
        out.problems.append(f"{len(layers)} layers, expected 4")
    for bad in E.layer_internals(layers[-1]):
        out.problems.append(f"the new layer holds overlay internals: {bad}")
    expect_names(out, "/t that the layers make", "\n".join("/" + x for x in model.listing()),
                 "/t", COMMIT_T)
    expect_names(out, "/t of the committed image", ran, "/t", COMMIT_T)
    expect_no_whiteouts(out, "committed image", ran)
    expect_in(out, "committed image", ran, ["v2\nx\nr2\no\n"])
    return out


def saved(eng: E.Engine, image: str) -> list[bytes]:
    """The layer tars of image, exported by `podman save` (docker-archive)."""
    archive = f"{eng.top}/saved.tar"
    eng.podman("save", "--format", "docker-archive", "-o", archive, image, timeout=TIMEOUT)
    try:
        return E.saved_layers(archive)
    finally:
        os.unlink(archive)


def check_build(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    built = "localhost/ovlfs-test:built"
    eng.podman("build", "--pull=never", "--network=none", "--runtime-flag",
               "cgroup-manager=disabled", "-t", built, fx["context"], timeout=3 * TIMEOUT)
    layers = saved(eng, built)
    effects, model = E.layer_effects(layers, 3)
    ran = container(eng, "lst /t; wh; cat /t/modme /t/created_hl /t/copied /t/opq/rebuilt",
                    built)
    out.text = (f"layers: {len(layers)}\n" + "\n".join(effects)
                + "\n== run of the built image\n" + ran)
    out.info = "\n".join(f"layer {i} as exported:\n" + "\n".join(E.describe_layer(layer))
                         for i, layer in enumerate(layers[3:], 4))
    if len(layers) != 8:
        out.problems.append(f"{len(layers)} layers, expected 8 (3 + 5 steps)")
    for i, layer in enumerate(layers[3:], 4):
        for bad in E.layer_internals(layer):
            out.problems.append(f"layer {i} holds overlay internals: {bad}")
    expect_names(out, "/t that the layers make", "\n".join("/" + x for x in model.listing()),
                 "/t", BUILD_T)
    expect_names(out, "/t of the built image", ran, "/t", BUILD_T)
    expect_no_whiteouts(out, "built image", ran)
    expect_in(out, "built image", ran, ["v2\nv-build\ncreated\nagain\nfrom the host\nrebuilt\n"])
    return out


def tree_of(path: str) -> list[str]:
    """The host's view of a directory: names, types, modes, contents."""
    lines = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for n in sorted(dirs + files):
            p = os.path.join(root, n)
            st = os.lstat(p)
            line = f"{os.path.relpath(p, path)} {st.st_mode:o}"
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    line += " " + f.read().hex()
            lines.append(line)
    return lines


def check_dirlinks(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    out.text = container(eng, DIRLINKS_SCRIPT, IMAGE)
    # What holds whatever the overlay: a directory only the container made has its real
    # count; / of the container is merged.
    expect_in(out, "dirlinks", out.text, ["/t/nd n=4", "/t/nd/sub n=3", "/t n=1"])
    return out


def check_volume(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    vol = fx["volume"]
    before = tree_of(vol)
    out.text = container(eng, VOLUME_SCRIPT, "-v", f"{vol}:/x:O", IMAGE)
    after = tree_of(vol)
    if before != after:
        out.problems.append(f"the host directory changed: {before} -> {after}")
    expect_no_failures(out, "volume", out.text)
    expect_names(out, "/x after the changes", section(out.text, "== after"), "/x",
                 ["/x", "/x/a", "/x/d", "/x/new", "/x/sub2", "/x/keep", "/x/keep/k"])
    expect_in(out, "volume", out.text, ["a\nm\nw\n"])
    return out


def check_uidmap(eng: E.Engine, fx: dict) -> Outcome:
    """Debian 12's podman 4.3.1 (containers-storage 1.43), on a kernel that idmaps
    overlayfs lowers (6.18 here), gives a mount program lowers that are idmapped mounts
    already *and* uidmapping=/gidmapping= (fixed upstream by containers/storage#1551,
    "overlay: disable native idmap with mount-program"). Mapped twice, the image's files
    would show as the overflow id, and crun would fail to open merged/etc/hosts: ovlfs
    applies the mapping only to layers that are not on an id-mapped mount.
    fuse-overlayfs 1.10 fails this check that way (--reference shows it)."""
    out = Outcome()
    out.text = container(eng, UIDMAP_SCRIPT, "--uidmap", "0:100000:65536", IMAGE)
    expect_in(out, "uidmap", out.text, [
        "uid=0(root) gid=0(root)", "/t/owned f 640 1000:1000", "/t/keep/a f 644 0:0",
        "/t/udir d 750 0:0", "/t/udir/f f 644 1000:1000", "/t/ren/sub/r2 f 600 1000:1000",
        "/t/w f 644 0:0", "/t/wd d 755 1000:1000", "/t/udir/f f 644 0:0"])
    expect_no_failures(out, "uidmap", out.text)
    return out


def check_keep_id(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    p = eng.podman("run", "--rm", "--userns=keep-id", IMAGE, "sh", "-c",
                   SH_LIB + "id; lst /t/owned /t/keep/a", timeout=TIMEOUT, check=False)
    if p.returncode != 0 and "rootless" in p.stderr:
        out.skip = f"podman refuses it rootful: {p.stderr.strip()}"
        return out
    if p.returncode != 0:
        raise wblib.CommandError(p.args, p.returncode, p.stderr)
    out.text = p.stdout
    expect_in(out, "keep-id", out.text, ["/t/owned f 640 1000:1000", "/t/keep/a f 644 0:0"])
    return out


def check_info(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome(compare=False)
    info = json.loads(eng.podman("info", "--format", "json", timeout=TIMEOUT).stdout)
    store = info["store"]
    mp = store.get("graphOptions", {}).get("overlay.mount_program")
    out.text = (f"driver {store.get('graphDriverName')}, mount_program {json.dumps(mp)}, "
                f"status {json.dumps(store.get('graphStatus'))}")
    if store.get("graphDriverName") != "overlay":
        out.problems.append(f"driver {store.get('graphDriverName')}, not overlay")
    if eng.program:
        if not mp or mp.get("Executable") != eng.program:
            out.problems.append(f"podman info shows mount_program {mp}, not {eng.program}")
        elif eng.name == "ovlfs" and not str(mp.get("Version", "")).startswith("ovlfs "):
            out.problems.append(f"podman info shows the mount program's version "
                                f"{mp.get('Version')!r}, not ovlfs's")
    elif mp:
        out.problems.append(f"a mount_program on the kernel's run: {mp}")
    return out


def check_buildah(eng: E.Engine, fx: dict) -> Outcome:
    out = Outcome()
    if not shutil.which("buildah"):
        out.skip = "buildah is not installed"
        return out
    ctr = eng.buildah("from", "--pull=never", "--name", "ovlfs-test-bh", IMAGE,
                      timeout=TIMEOUT).stdout.strip()
    try:
        ran = eng.buildah("run", "--runtime-flag", "cgroup-manager=disabled", "--network=none",
                          ctr, "--", "sh", "-c", SH_LIB + BUILDAH_SCRIPT, timeout=TIMEOUT).stdout
        eng.buildah("commit", "-q", ctr, "localhost/ovlfs-test:buildah", timeout=TIMEOUT)
    finally:
        eng.buildah("rm", ctr, timeout=TIMEOUT, check=False)
    again = container(eng, "lst /t; wh", "localhost/ovlfs-test:buildah")
    out.text = f"== buildah run\n{ran}== podman run of the commit\n{again}"
    expect_names(out, "/t in buildah run", ran, "/t", BUILDAH_T)
    expect_names(out, "/t of the buildah commit", again, "/t", BUILDAH_T)
    expect_no_whiteouts(out, "buildah", out.text)
    return out


def check_unmount(eng: E.Engine, fx: dict) -> Outcome:
    """Once podman removed its containers, nothing is mounted and, on the ovlfs run, no
    ovlfs daemon is left (each ends by itself at its unmount, SPEC §5)."""
    out = Outcome()
    eng.podman("rm", "-a", "-f", timeout=TIMEOUT)
    eng.podman("image", "unmount", "-a", timeout=TIMEOUT, check=False)
    deadline = time.monotonic() + 10
    while True:
        mounts = [m for m in eng.mounts() if m["fstype"] != "tmpfs"]
        daemons = eng.daemons()
        if (not mounts and not daemons) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out.text = (f"mounts left: {len(mounts)}\n" + "\n".join(
        f"  {eng.placeholders(m['mountpoint'])} {m['fstype']}" for m in mounts))
    if mounts:
        out.problems.append(f"still mounted: {[m['mountpoint'] for m in mounts]}")
    if daemons:
        out.problems.append(f"ovlfs daemons left 10 s after their unmount: {daemons}")
    return out


CHECKS = [("layers", check_layers), ("run", check_run), ("commit", check_commit),
          ("build", check_build), ("dirlinks", check_dirlinks), ("volume", check_volume),
          ("uidmap", check_uidmap), ("keep-id", check_keep_id), ("info", check_info),
          ("buildah", check_buildah), ("unmount", check_unmount)]

# ---------------------------------------------------------------------------------------
# Running and comparing


def run_engine(eng: E.Engine, fx: dict, only: set[str], show: bool) -> dict[str, Outcome]:
    print(f"=== {eng.name}: " + ("the kernel's overlayfs" if not eng.program else
                               f"mount_program = {eng.program}"), flush=True)
    results: dict[str, Outcome] = {}
    t0 = time.monotonic()
    try:
        eng.podman("load", "-q", "-i", fx["archive"], timeout=TIMEOUT)
    except Exception as e:  # every check fails the same way
        for name, _ in CHECKS:
            results[name] = Outcome(text=f"ERROR: podman load: {e}",
                                    problems=[f"podman load failed: {e}"])
        return results
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        t = time.monotonic()
        try:
            out = fn(eng, fx)
        except wblib.CommandError as e:
            # podman's own message (the mount program's stderr among it) is the outcome.
            out = Outcome(text=f"ERROR: exit {e.returncode}: {e.stderr.strip()}",
                          problems=[f"{eng.describe(e.cmd)}: exit {e.returncode}: "
                                    f"{e.stderr.strip()}"])
        except E.Hung as e:
            out = Outcome(text=f"HUNG: {e}", problems=[str(e)])
        except Exception as e:  # a bug of the test: shown, and a failure
            traceback.print_exc()
            out = Outcome(text=f"EXCEPTION: {e!r}", problems=[f"test raised {e!r}"])
        out.text = eng.placeholders(out.text)
        results[name] = out
        state = ("skipped" if out.skip else "as expected" if not out.problems else
                 f"{len(out.problems)} expectation(s) missed")
        print(f"  {name}: {time.monotonic() - t:.1f} s, {state}", flush=True)
        if show:
            print(f"--- {name} on {eng.name}:\n{out.text}\n{eng.placeholders(out.info)}\n---",
                  flush=True)
    print(f"=== {eng.name}: {time.monotonic() - t0:.1f} s", flush=True)
    return results


def verdict(k: Outcome, o: Outcome) -> tuple[str, list[str], bool]:
    """(PASS, FAIL or SKIP, why, whether the texts differ) of a check's two outcomes."""
    if k.skip and o.skip:
        return "SKIP", [k.skip], False
    why = []
    if k.skip or o.skip:
        why.append(f"skipped on one run only: kernel {k.skip!r}, other {o.skip!r}")
    why += [f"kernel run: {p}" for p in k.problems]
    why += [f"{'ovlfs'} run: {p}" for p in o.problems]
    differ = k.compare and o.compare and k.text != o.text
    if differ:
        why.append("the two runs differ (diff below)")
    return ("FAIL" if why else "PASS"), why, differ


def verdicts(kernel: dict[str, Outcome], ovlfs: dict[str, Outcome],
             reference: tuple[str, dict[str, Outcome]] | None) -> int:
    failed = 0
    print("\n=== results (kernel = podman's native overlay, ovlfs = mount_program)")
    for name, _ in CHECKS:
        if name not in kernel:
            continue
        k, o = kernel[name], ovlfs[name]
        state, why, differ = verdict(k, o)
        if state == "SKIP":
            print(f"SKIP  {name}: {why[0]}", flush=True)
            continue
        print(f"{state}  {name}", flush=True)
        for w in why:
            print(f"      {w}")
        if not k.compare:
            print(f"      kernel: {k.text}\n      ovlfs:  {o.text}")
        if differ:
            print(E.unified_diff(k.text, o.text, f"{name} (kernel)", f"{name} (ovlfs)"))
        if reference:
            ref_name, ref = reference
            r = ref[name]
            r_state, _, r_differ = verdict(k, r)
            lines = [ln for ln in E.unified_diff(k.text, r.text, "k", "r").splitlines()[2:]
                     if ln[:1] in "+-"]
            print(f"      ({ref_name} as mount_program, for comparison: {r_state}"
                  + (f", {len(lines)} lines differ from the kernel's" if r_differ else "")
                  + ("; as ovlfs" if r.text == o.text and k.compare else "")
                  + "".join(f"; {p}" for p in r.problems)[:500]
                  + "".join(f"\n        {ln}" for ln in lines[:6] if k.compare) + ")")
        failed += state == "FAIL"
    return failed


def make_fixtures(top: str) -> dict:
    fx = {"archive": f"{top}/image.tar", "context": f"{top}/context", "volume": f"{top}/vol"}
    E.make_docker_archive(fx["archive"], IMAGE, image_layers())
    os.mkdir(fx["context"])
    with open(f"{fx['context']}/Containerfile", "w") as f:
        f.write(CONTAINERFILE.format(image=IMAGE))
    with open(f"{fx['context']}/host.txt", "w") as f:
        f.write("from the host\n")
    vol = fx["volume"]
    for d in ("sub", "gonedir", "keep"):
        os.makedirs(f"{vol}/{d}")
    for name, text in (("a", "a\n"), ("sub/b", "b\n"), ("gonedir/g", "g\n"), ("keep/k", "k\n")):
        with open(f"{vol}/{name}", "w") as f:
            f.write(text)
    return fx


def preflight(args, checks) -> tuple[set[str], int | None]:
    """What every run needs besides root: the static busybox the image is made of,
    the ovlfs program, known --only checks. Returns (the checks asked for, None),
    or (_, the exit status) after saying why not."""
    if not os.path.exists(BUSYBOX) or not E.is_static_elf(BUSYBOX):
        print(f"FAIL: {BUSYBOX} is not a static executable (install busybox-static: "
              "scripts/deps)")
        return set(), 1
    if not os.access(os.path.realpath(args.ovlfs), os.X_OK):
        print(f"FAIL: {args.ovlfs} is not an executable")
        return set(), 1
    only = {c for c in args.only.split(",") if c}
    unknown = only - {name for name, _ in checks}
    if unknown:
        print(f"unknown checks {sorted(unknown)}; known: {[n for n, _ in checks]}")
        return only, 2
    return only, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ovlfs", required=True, help="the ovlfs binary (build/ovlfs)")
    ap.add_argument("--only", default="", help="comma-separated checks to run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--show", action="store_true", help="print every check's output")
    ap.add_argument("--reference", metavar="PROGRAM",
                    help="also run every check with this mount program (e.g. "
                         "/usr/bin/fuse-overlayfs) and show how it fares; never fails the test")
    ap.add_argument("--timeout", type=float, default=TIMEOUT,
                    help="seconds per podman command (default %(default)s)")
    args = ap.parse_args()
    globals()["TIMEOUT"] = args.timeout
    missing = [p for p in ("podman",) if not shutil.which(p)]
    if os.geteuid() != 0 or missing:
        print(f"SKIP: needs root and podman (euid {os.geteuid()}, missing: {missing})")
        return 77
    only, bad = preflight(args, CHECKS)
    if bad is not None:
        return bad
    ovlfs = os.path.realpath(args.ovlfs)
    wblib.enter_private_namespace()
    start = time.monotonic()
    versions = [wblib.run([p, "--version"], check=False).stdout.strip()
                for p in ("podman", "buildah", "crun", ovlfs) if shutil.which(p)]
    print("; ".join(v.splitlines()[0] for v in versions if v), flush=True)
    with wblib.Cleanup() as cl:
        # Short: podman 4.3 makes each container's exit wait 20 s when the runroot's path
        # is longer than 50 characters (/tmp/oe.XXXXXXXX/o/r is 20).
        if args.keep:
            top = tempfile.mkdtemp(prefix="oe.", dir="/tmp")
            print(f"keeping {top}")
        else:
            top = cl.tmpdir("oe.")
        print("host: " + ", ".join(E.isolate_host(cl, top)), flush=True)
        fx = make_fixtures(top)
        engines = [E.Engine("kernel", f"{top}/k", None), E.Engine("ovlfs", f"{top}/o", ovlfs)]
        reference = args.reference and os.path.realpath(args.reference)
        if reference:
            engines.append(E.Engine(os.path.basename(reference), f"{top}/f", reference))
        for eng in engines:
            cl.push(f"tear down {eng.name}", lambda eng=eng: [
                print(f"cleanup: {n}") for n in eng.teardown()])
        results = [run_engine(eng, fx, only, args.show) for eng in engines]
        failed = verdicts(results[0], results[1],
                          (engines[2].name, results[2]) if reference else None)
    total = sum(1 for name, _ in CHECKS if name in results[0])
    print(f"\n{total - failed} of {total} checks passed or skipped, {failed} failed "
          f"({time.monotonic() - start:.0f} s)")
    print("RESULT:", "PASS" if not failed else "FAIL", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
