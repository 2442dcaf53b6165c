#!/usr/bin/env python3
"""The options container engines pass (SPEC 5's table), each as the table says:
uidmapping/gidmapping (podman's leading colon too), squash_to_*, xattr_permissions,
fsync=0, static_nlink, noxattrs, timeout; context="..." with commas, propagation
words and the other no-effect options mount silently; an unknown option mounts with
a one-line warning; `\\:` in a lowerdir and an upperdir inside a lowerdir mount as
the kernel's overlayfs mounts them (compared with it)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start, mount_ovlfs, try_mount, write, read  # noqa: E402


def as_user(uid: int, gid: int, fn) -> int:
    """Runs fn() in a child with those ids; returns its exit status (0: fn returned)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fn()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            print(f"as uid {uid}: {e!r}", flush=True)
            os._exit(1)
    return os.waitpid(pid, 0)[1]


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-engopts.")
        os.chmod(t, 0o755)  # other users reach the mount
        L, M = f"{t}/l", f"{t}/m"
        os.makedirs(f"{L}/dir")
        write(f"{L}/f", "lower")
        write(f"{L}/img", "i")
        os.chown(f"{L}/img", 5, 6)
        write(f"{L}/mapped", "m")
        os.chown(f"{L}/mapped", 100005, 100006)  # outside the mapping below
        write(f"{L}/plain", "p")
        os.mkdir(M)
        n = [0]

        def fresh() -> tuple[str, str]:
            n[0] += 1
            u, w = f"{t}/u{n[0]}", f"{t}/w{n[0]}"
            os.mkdir(u)
            os.mkdir(w)
            return u, w

        def run_mount(opts: str) -> subprocess.CompletedProcess:
            u, w = fresh()
            p = try_mount(args.ovlfs, ["-o", f"lowerdir={L},upperdir={u},workdir={w},{opts}", M])
            if p.returncode == 0:
                cl.push(f"umount {M}", lambda: wblib.umount(M) if wblib.is_mountpoint(M) else None)
            return p

        # Unknown options: mounted, one warning line naming each.
        p = run_mount("bogus=1,kernel_cache")
        c.expect(p.returncode == 0 and wblib.is_mountpoint(M), f"unknown options mount: {p.stderr}")
        lines = p.stderr.strip().splitlines()
        c.expect(lines == ["ovlfs: ignoring unknown mount option 'bogus=1'",
                           "ovlfs: ignoring unknown mount option 'kernel_cache'"],
                 f"one warning line per unknown option: {lines}")
        wblib.umount(M)

        # Accepted without effect, silently: what buildah, podman and SELinux hosts pass.
        quiet = ('context="system_u:object_r:container_file_t:s0:c1,c2",private,rshared,'
                 'threaded=1,writeback=0,fast_ino=1,plugins=,lazytime,relatime,metacopy=off,'
                 'strictatime,noatime,nodev,nosuid,x-systemd.automount,noacl,nodiratime,nosymfollow,'
                 'diratime,atime,norelatime')
        p = run_mount(quiet)
        c.expect(p.returncode == 0 and p.stderr == "", f"engine options mount silently: {p.stderr!r}")
        if p.returncode == 0:
            c.expect(read(f"{M}/f") == b"lower", "and the mount works")
            opts = [m for m in wblib.mountinfo() if m["mountpoint"] == M][0]["options"].split(",")
            c.expect(all(o in opts for o in ("nodev", "nosuid", "noatime", "nodiratime",
                                             "nosymfollow")),
                     f"nodev, nosuid, noatime, nodiratime, nosymfollow reach the mount: {opts}")
            wblib.umount(M)
        p = run_mount("")
        opts = [m for m in wblib.mountinfo() if m["mountpoint"] == M][0]["options"].split(",")
        c.expect("nodev" not in opts and "nosuid" not in opts,
                 f"root's mount honours devices and set-user-ID, as the kernel's overlayfs: {opts}")
        wblib.umount(M)

        # uidmapping/gidmapping as container storage writes them (disk:mount:count,
        # podman 4.3's leading colon, two ranges): the layers keep the image's ids,
        # the container's processes (host ids 100000...) see their own.
        p = run_mount("uidmapping=:0:100000:65536:65536:1000:1,gidmapping=0:100000:65536")
        c.expect(p.returncode == 0, f"mapped mount: {p.stderr}")
        st = os.lstat(f"{M}/img")
        c.expect((st.st_uid, st.st_gid) == (100005, 100006),
                 f"on-disk 5:6 shows 100005:100006: {st.st_uid}:{st.st_gid}")
        st = os.lstat(f"{M}/mapped")
        c.expect((st.st_uid, st.st_gid) == (65534, 65534),
                 f"an id outside the mapping shows the overflow id: {st.st_uid}:{st.st_gid}")
        u = f"{t}/u{n[0]}"
        os.chmod(f"{M}/dir", 0o777)
        c.expect(as_user(100005, 100006, lambda: write(f"{M}/dir/by5", "5")) == 0,
                 "a process of the container (100005) creates a file")
        st = os.lstat(f"{u}/dir/by5")
        c.expect((st.st_uid, st.st_gid) == (5, 6),
                 f"owned on disk by the image's ids: {st.st_uid}:{st.st_gid}")
        c.expect(os.lstat(f"{M}/dir/by5").st_uid == 100005, "and shows its creator's uid")
        os.chown(f"{M}/dir/by5", 100007, -1)
        c.expect(os.lstat(f"{u}/dir/by5").st_uid == 7, "chown 100007 writes 7")
        os.chown(f"{M}/dir/by5", 1000, -1)
        c.expect(os.lstat(f"{u}/dir/by5").st_uid == 65536,
                 f"the second range: 1000 is 65536 on disk: {os.lstat(f'{u}/dir/by5').st_uid}")
        c.expect(os.lstat(f"{M}/dir/by5").st_uid == 1000, "and shows 1000")
        wblib.umount(M)

        # squash_to_root; squash_to_uid/gid.
        run_mount("squash_to_root")
        st = os.lstat(f"{M}/img")
        c.expect((st.st_uid, st.st_gid) == (0, 0), f"squash_to_root: 0:0, {st.st_uid}:{st.st_gid}")
        wblib.umount(M)
        run_mount("squash_to_uid=12,squash_to_gid=34")
        st = os.lstat(f"{M}/plain")
        c.expect((st.st_uid, st.st_gid) == (12, 34), f"squash_to_uid/gid: {st.st_uid}:{st.st_gid}")
        wblib.umount(M)

        # static_nlink; noxattrs; timeout.
        os.makedirs(f"{L}/dir/a", exist_ok=True)
        run_mount("static_nlink,noxattrs=1,timeout=0")
        c.expect(os.lstat(f"{M}/dir").st_nlink == 1, "static_nlink: a directory has 1 link")
        c.expect(wblib.errno_of(os.getxattr, f"{M}/f", "user.x") in ("ENOTSUP", "EOPNOTSUPP"),
                 "noxattrs=1: getxattr fails with ENOTSUP")
        c.expect(wblib.errno_of(os.setxattr, f"{M}/f", "user.x", b"1") in ("ENOTSUP", "EOPNOTSUPP"),
                 "noxattrs=1: setxattr fails with ENOTSUP")
        wblib.umount(M)
        run_mount("")
        c.expect(os.lstat(f"{M}/dir").st_nlink > 1, "without static_nlink: the real count")
        wblib.umount(M)

        # fsync=0 is volatile.
        p = run_mount("fsync=0")
        st = subprocess.run([args.ovlfs, "status", M, "--json"], capture_output=True, text=True)
        try:
            vol = json.loads(st.stdout).get("volatile")
        except ValueError:
            vol = None
        c.expect(vol is True, f"fsync=0: ovlfs status says volatile: {st.stdout.strip()[:200]}")
        wblib.umount(M)

        # xattr_permissions=2: owner and mode in user.containers.override_stat.
        write(f"{L}/ovr", "o")
        os.setxattr(f"{L}/ovr", "user.containers.override_stat", b"7:8:0640")
        write(f"{L}/badovr", "o")
        os.setxattr(f"{L}/badovr", "user.containers.override_stat", b"7:8:x")
        run_mount("xattr_permissions=2")
        u = f"{t}/u{n[0]}"
        st = os.lstat(f"{M}/ovr")
        c.expect((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o640),
                 f"owner and mode from the xattr: {st.st_uid}:{st.st_gid} {oct(st.st_mode)}")
        st = os.lstat(f"{M}/badovr")
        c.expect(st.st_uid == 0, "a value that does not parse is ignored")
        c.expect("user.containers.override_stat" not in os.listxattr(f"{M}/ovr"),
                 "the override xattr is not listed")
        os.chmod(f"{M}/ovr", 0o600)
        c.expect(os.getxattr(f"{u}/ovr", "user.containers.override_stat") == b"7:8:0600",
                 "chmod writes the xattr")
        c.expect(stat.S_IMODE(os.lstat(f"{u}/ovr").st_mode) == 0o644,
                 "and leaves the inode's mode")
        os.chown(f"{M}/ovr", 9, -1)
        c.expect(os.getxattr(f"{u}/ovr", "user.containers.override_stat") == b"9:8:0600",
                 "chown writes the xattr")
        os.mkdir(f"{M}/newdir", 0o750)
        c.expect(os.getxattr(f"{u}/newdir", "user.containers.override_stat") == b"0:0:0750",
                 "a new directory gets its owner and mode in the xattr")
        wblib.umount(M)

        # `\:` in a lowerdir path; an upperdir inside a lowerdir: as the kernel.
        colon = f"{t}/a:b"
        os.makedirs(f"{colon}/x/u")
        os.makedirs(f"{colon}/x/w")
        write(f"{colon}/x/u/inup", "u")
        write(f"{colon}/top", "t")
        esc = colon.replace(":", "\\:")
        views = {}
        for kind in ("kernel", "ovlfs"):
            o = f"lowerdir={esc},upperdir={colon}/x/u,workdir={colon}/x/w"
            if kind == "kernel":
                wblib.mount(cl, "overlay", M, "overlay", o)
            else:
                p = try_mount(args.ovlfs, ["-o", o, M])
                c.expect(p.returncode == 0, f"ovlfs mounts an upper inside a lower, `\\:`: {p.stderr}")
                if p.returncode:
                    continue
                cl.push(f"umount {M}", lambda: wblib.umount(M) if wblib.is_mountpoint(M) else None)
            views[kind] = (sorted(os.listdir(M)), sorted(os.listdir(f"{M}/x")),
                           wblib.errno_of(os.lstat, f"{M}/x/u"), wblib.errno_of(os.lstat, f"{M}/x/w"),
                           read(f"{M}/top"), read(f"{M}/inup"))
            wblib.umount(M)
        c.expect(views.get("ovlfs") == views.get("kernel"),
                 f"the same as the kernel's overlayfs: {views}")
        c.expect(views.get("kernel", ("",) * 4)[2] == "ELOOP",
                 f"the kernel answers ELOOP for the upper seen through the lower: {views}")
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
