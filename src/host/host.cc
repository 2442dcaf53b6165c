// SysHost: the real host. Each method is one syscall (or a short, fixed sequence
// of them), returning the exact errno.
#include "host/host.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/mount.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "host/fd_table.hpp"

namespace ovlfs {
namespace {

// "/proc/self/fd/N": the path through which calls that do not accept O_PATH fds
// reach the object itself (the magic link is not followed any further, so a
// symlink's own inode is addressed, never its target).
struct ProcPath {
  explicit ProcPath(int fd) { std::snprintf(buf, sizeof buf, "/proc/self/fd/%d", fd); }
  char buf[32];
};

Status status_of(int rc) {
  if (rc < 0) return fail_errno();
  return {};
}

Result<std::size_t> size_of(ssize_t rc) {
  if (rc < 0) return fail_errno();
  return static_cast<std::size_t>(rc);
}

Result<Fd> fd_of(int rc) {
  if (rc < 0) return fail_errno();
  fd_table::note(rc);
  return Fd(rc);
}

// The xattr calls on an fd refuse O_PATH fds (EBADF) and so do the *xattrat
// calls with AT_EMPTY_PATH: an fd opened for I/O is used as it is, an O_PATH one
// through its /proc path.
template <class Direct, class ByPath>
auto xattr_call(int fd, Direct direct, ByPath by_path) {
  auto rc = direct(fd);
  if (rc >= 0 || errno != EBADF) return rc;
  ProcPath p(fd);
  return by_path(p.buf);
}

#ifndef SYS_getxattrat
#define SYS_getxattrat 464
#endif

// struct xattr_args of <linux/xattr.h> (Linux 6.13+).
struct XattrArgs {
  alignas(8) std::uint64_t value;
  std::uint32_t size;
  std::uint32_t flags;
};

// Whether getxattrat(2) exists; cleared by the first ENOSYS.
std::atomic<bool> have_getxattrat{true};

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif

#ifndef FS_IOC_GETFSUUID
struct fsuuid2 {
  __u8 len;
  __u8 uuid[16];
};
#define FS_IOC_GETFSUUID _IOR(0x15, 0, struct fsuuid2)
#endif

}  // namespace

Result<Fd> SysHost::openat(int dirfd, const char* name, int flags, mode_t mode) {
  return fd_of(::openat(dirfd, name, flags | O_CLOEXEC, mode));
}

Result<Fd> SysHost::reopen(int fd, int flags) {
  ProcPath p(fd);
  return fd_of(::open(p.buf, (flags & ~O_NOFOLLOW) | O_CLOEXEC));
}

Result<Fd> SysHost::dup(int fd) { return fd_of(::fcntl(fd, F_DUPFD_CLOEXEC, 0)); }

Result<struct stat> SysHost::fstatat(int dirfd, const char* name, int flags) {
  struct stat st;
  if (::fstatat(dirfd, name, &st, flags) < 0) return fail_errno();
  return st;
}

Status SysHost::mkdirat(int dirfd, const char* name, mode_t mode) {
  return status_of(::mkdirat(dirfd, name, mode));
}

Status SysHost::mknodat(int dirfd, const char* name, mode_t mode, dev_t dev) {
  return status_of(::mknodat(dirfd, name, mode, dev));
}

Status SysHost::symlinkat(const char* target, int dirfd, const char* name) {
  return status_of(::symlinkat(target, dirfd, name));
}

Result<std::string> SysHost::readlinkat(int dirfd, const char* name) {
  std::string out(256, '\0');
  for (;;) {
    ssize_t n = ::readlinkat(dirfd, name, out.data(), out.size());
    if (n < 0) return fail_errno();
    if (static_cast<std::size_t>(n) < out.size()) {
      out.resize(static_cast<std::size_t>(n));
      return out;
    }
    if (out.size() >= 65536) return fail(ENAMETOOLONG);
    out.resize(out.size() * 4);
  }
}

Status SysHost::unlinkat(int dirfd, const char* name, int flags) {
  return status_of(::unlinkat(dirfd, name, flags));
}

Status SysHost::renameat2(int olddirfd, const char* oldname, int newdirfd,
                          const char* newname, unsigned flags) {
  return status_of(::renameat2(olddirfd, oldname, newdirfd, newname, flags));
}

Status SysHost::linkat(int olddirfd, const char* oldname, int newdirfd,
                       const char* newname, int flags) {
  return status_of(::linkat(olddirfd, oldname, newdirfd, newname, flags));
}

Result<std::vector<HostDirent>> SysHost::read_dir(int dirfd) {
  // A fresh readable fd at offset 0, whatever kind of fd dirfd is.
  int fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fail_errno();
  Fd dir(fd);
  std::vector<HostDirent> out;
  alignas(8) char buf[32768];
  for (;;) {
    long n = ::syscall(SYS_getdents64, dir.get(), buf, sizeof buf);
    if (n < 0) return fail_errno();
    if (n == 0) break;
    for (long pos = 0; pos < n;) {
      struct linux_dirent64 {
        ino64_t d_ino;
        off64_t d_off;
        unsigned short d_reclen;
        unsigned char d_type;
        char d_name[1];
      };
      auto* d = reinterpret_cast<linux_dirent64*>(buf + pos);
      out.push_back(HostDirent{d->d_name, d->d_ino, d->d_type});
      pos += d->d_reclen;
    }
  }
  return out;
}

// fchmodat2 (Linux 6.6) takes AT_EMPTY_PATH on an O_PATH fd; before it, the
// /proc path.
Status SysHost::fchmod(int fd, mode_t mode) {
  if (::syscall(SYS_fchmodat2, fd, "", mode, AT_EMPTY_PATH) == 0) return {};
  if (errno != ENOSYS) return fail_errno();
  ProcPath p(fd);
  return status_of(::chmod(p.buf, mode));
}

Status SysHost::fchown(int fd, uid_t uid, gid_t gid) {
  return status_of(::fchownat(fd, "", uid, gid, AT_EMPTY_PATH));
}

Status SysHost::futimens(int fd, const struct timespec times[2]) {
  if (::utimensat(fd, "", times, AT_EMPTY_PATH) == 0) return {};
  if (errno != EINVAL && errno != ENOENT) return fail_errno();  // else: no AT_EMPTY_PATH
  ProcPath p(fd);
  return status_of(::utimensat(AT_FDCWD, p.buf, times, 0));
}

Status SysHost::ftruncate(int fd, off_t size) {
  if (::ftruncate(fd, size) == 0) return {};
  if (errno != EBADF && errno != EINVAL) return fail_errno();
  ProcPath p(fd);  // an O_PATH fd: truncate the object it names
  return status_of(::truncate(p.buf, size));
}

Result<struct statfs> SysHost::fstatfs(int fd) {
  struct statfs st;
  if (::fstatfs(fd, &st) < 0) return fail_errno();
  return st;
}

Result<std::size_t> SysHost::fgetxattr(int fd, const char* name, void* value,
                                       std::size_t size) {
  return size_of(xattr_call(
      fd, [&](int f) { return ::fgetxattr(f, name, value, size); },
      [&](const char* p) { return ::getxattr(p, name, value, size); }));
}

Result<std::size_t> SysHost::getxattrat(int dirfd, const char* name, const char* attr,
                                        void* value, std::size_t size) {
  if (have_getxattrat.load(std::memory_order_relaxed)) {
    XattrArgs args{reinterpret_cast<std::uintptr_t>(value), static_cast<std::uint32_t>(size), 0};
    long rc = ::syscall(SYS_getxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, attr, &args,
                        sizeof args);
    if (rc >= 0 || errno != ENOSYS) return size_of(rc);
    have_getxattrat.store(false, std::memory_order_relaxed);
  }
  // Before Linux 6.13: through the directory's /proc path.
  char path[PATH_MAX];
  int n = std::snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name);
  if (n < 0 || static_cast<std::size_t>(n) >= sizeof path) return fail(ENAMETOOLONG);
  return size_of(::lgetxattr(path, attr, value, size));
}

Status SysHost::fsetxattr(int fd, const char* name, const void* value, std::size_t size,
                          int flags) {
  return status_of(xattr_call(
      fd, [&](int f) { return ::fsetxattr(f, name, value, size, flags); },
      [&](const char* p) { return ::setxattr(p, name, value, size, flags); }));
}

Result<std::size_t> SysHost::flistxattr(int fd, char* list, std::size_t size) {
  return size_of(xattr_call(
      fd, [&](int f) { return ::flistxattr(f, list, size); },
      [&](const char* p) { return ::listxattr(p, list, size); }));
}

Status SysHost::fremovexattr(int fd, const char* name) {
  return status_of(xattr_call(
      fd, [&](int f) { return ::fremovexattr(f, name); },
      [&](const char* p) { return ::removexattr(p, name); }));
}

Result<std::size_t> SysHost::pread(int fd, void* buf, std::size_t size, off_t off) {
  return size_of(::pread(fd, buf, size, off));
}

Result<std::size_t> SysHost::pwrite(int fd, const void* buf, std::size_t size, off_t off,
                                    int rwf) {
  struct iovec iov = {const_cast<void*>(buf), size};
  return size_of(::pwritev2(fd, &iov, 1, off, rwf));
}

Result<std::size_t> SysHost::copy_file_range(int fdin, off_t* offin, int fdout,
                                             off_t* offout, std::size_t len) {
  return size_of(::copy_file_range(fdin, offin, fdout, offout, len, 0));
}

Status SysHost::clone_file(int dstfd, int srcfd) {
  return status_of(::ioctl(dstfd, FICLONE, srcfd));
}

Status SysHost::fallocate(int fd, int mode, off_t off, off_t len) {
  return status_of(::fallocate(fd, mode, off, len));
}

Result<off_t> SysHost::lseek(int fd, off_t off, int whence) {
  off_t r = ::lseek(fd, off, whence);
  if (r < 0) return fail_errno();
  return r;
}

Status SysHost::fsync(int fd) { return status_of(::fsync(fd)); }
Status SysHost::fdatasync(int fd) { return status_of(::fdatasync(fd)); }
Status SysHost::syncfs(int fd) { return status_of(::syncfs(fd)); }

Status SysHost::sync_file_range(int fd, off_t off, off_t len, unsigned flags) {
  return status_of(::sync_file_range(fd, off, len, flags));
}

Status SysHost::name_to_handle(int fd, struct file_handle* fh, int* mount_id) {
  return status_of(::name_to_handle_at(fd, "", fh, mount_id, AT_EMPTY_PATH));
}

Result<Fd> SysHost::open_by_handle(int mount_fd, struct file_handle* fh, int flags) {
  return fd_of(::open_by_handle_at(mount_fd, fh, flags | O_CLOEXEC));
}

Status SysHost::fs_uuid(int fd, unsigned char uuid[16]) {
  struct fsuuid2 u {};
  int dfd = ::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);  // ioctl needs a real fd
  if (dfd < 0) return fail_errno();
  Fd dir(dfd);
  if (::ioctl(dir.get(), FS_IOC_GETFSUUID, &u) < 0) return fail_errno();
  if (u.len != 16) return fail(ENOTTY);
  std::memcpy(uuid, u.uuid, 16);
  return {};
}

Result<Fd> SysHost::clone_mount(int fd, std::uint64_t attr_set, std::uint64_t attr_clr) {
  const int t = static_cast<int>(::syscall(SYS_open_tree, fd, "",
                                           OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH));
  if (t < 0) return fail_errno();
  Fd tree(t);
  struct mount_attr attr {};
  attr.attr_set = attr_set;
  attr.attr_clr = attr_clr;
  if (::syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH, &attr, sizeof attr) != 0)
    return fail_errno();
  return tree;
}

// The mount of fd (its mnt_id in /proc/self/fdinfo), looked up in
// /proc/self/mountinfo: "idmapped" among its per-mount options.
Result<bool> SysHost::idmapped_mount(int fd) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  FILE* f = std::fopen(path, "re");
  if (!f) return fail_errno();
  long mnt_id = -1;
  char line[256];
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "mnt_id: %ld", &mnt_id) == 1) break;
  std::fclose(f);
  if (mnt_id < 0) return fail(ENOTSUP);
  f = std::fopen("/proc/self/mountinfo", "re");
  if (!f) return fail_errno();
  bool idmapped = false, found = false;
  std::string l;
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c != '\n') {
      l += static_cast<char>(c);
      continue;
    }
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...
    std::vector<std::string_view> fields;
    for (std::string_view rest = l; fields.size() < 6;) {
      auto sp = rest.find(' ');
      fields.push_back(rest.substr(0, sp));
      if (sp == std::string_view::npos) break;
      rest.remove_prefix(sp + 1);
    }
    if (fields.size() == 6 && fields[0] == std::to_string(mnt_id)) {
      const std::string opts = "," + std::string(fields[5]) + ",";
      idmapped = opts.find(",idmapped,") != std::string::npos;
      found = true;
      break;
    }
    l.clear();
  }
  std::fclose(f);
  if (!found) return fail(ENOENT);
  return idmapped;
}

// --- shared state: defaults for hosts that do not provide it ----------------------

Result<bool> Host::idmapped_mount(int) { return fail(ENOSYS); }
Result<Fd> Host::clone_mount(int, std::uint64_t, std::uint64_t) { return fail(ENOSYS); }

Result<Fd> Host::shm_dir() { return fail(ENOSYS); }
std::uint32_t Host::record_owner() { return 0; }
uid_t Host::euid() { return ::geteuid(); }
Result<void*> Host::mmap_shared(int, std::size_t) { return fail(ENOSYS); }
void Host::munmap(void*, std::size_t) {}
Status Host::flock(int, int) { return fail(ENOSYS); }
Status Host::ofd_lock(int, short) { return fail(ENOSYS); }
Result<std::string> Host::boot_id() { return fail(ENOSYS); }
Result<CallerIds> Host::caller_ids(pid_t) { return fail(ENOSYS); }
struct timespec Host::now() { return {}; }

// --- shared state: the real host --------------------------------------------------

std::uint32_t SysHost::record_owner() {
  const std::uint32_t euid = ::geteuid();
  FILE* f = std::fopen("/proc/self/uid_map", "re");
  if (!f) return euid;
  std::uint32_t inside, outside, count, owner = euid;
  while (std::fscanf(f, "%u %u %u", &inside, &outside, &count) == 3)
    if (euid >= inside && euid - inside < count) {
      owner = outside + (euid - inside);
      break;
    }
  std::fclose(f);
  return owner;
}

Result<Fd> SysHost::shm_dir() {
  return fd_of(::open("/dev/shm", O_PATH | O_DIRECTORY | O_CLOEXEC));
}

Result<void*> SysHost::mmap_shared(int fd, std::size_t len) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail_errno();
  return p;
}

void SysHost::munmap(void* addr, std::size_t len) {
  if (addr) ::munmap(addr, len);
}

Status SysHost::flock(int fd, int op) {
  for (;;) {
    if (::flock(fd, op) == 0) return {};
    if (errno != EINTR) return fail_errno();
  }
}

Status SysHost::ofd_lock(int fd, short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 1;
  return status_of(::fcntl(fd, F_OFD_SETLK, &fl));
}

Result<CallerIds> SysHost::caller_ids(pid_t pid) {
  char path[40];
  std::snprintf(path, sizeof path, "/proc/%d/status", static_cast<int>(pid));
  FILE* f = std::fopen(path, "re");
  if (!f) return fail_errno();
  CallerIds ids;
  bool gid_seen = false;
  char* line = nullptr;
  std::size_t cap = 0;
  while (::getline(&line, &cap, f) > 0) {
    unsigned long long v[4];
    if (std::sscanf(line, "Gid: %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3]) == 4) {
      ids.fsgid = static_cast<gid_t>(v[3]);
      gid_seen = true;
    } else if (std::strncmp(line, "Groups:", 7) == 0) {
      char* p = line + 7;
      for (;;) {
        char* end;
        unsigned long g = std::strtoul(p, &end, 10);
        if (end == p) break;
        ids.groups.push_back(static_cast<gid_t>(g));
        p = end;
      }
    } else if (std::sscanf(line, "CapEff: %llx", &v[0]) == 1) {
      ids.fsetid = (v[0] >> CAP_FSETID) & 1;
    }
  }
  std::free(line);
  std::fclose(f);
  if (!gid_seen) return fail(ESRCH);
  return ids;
}

Result<std::string> SysHost::boot_id() {
  int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_errno();
  Fd f(fd);
  char buf[64];
  ssize_t n = ::read(f.get(), buf, sizeof buf - 1);
  if (n < 0) return fail_errno();
  std::string id(buf, static_cast<std::size_t>(n));
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
  if (id.empty()) return fail(EINVAL);
  return id;
}

struct timespec SysHost::now() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

}  // namespace ovlfs
