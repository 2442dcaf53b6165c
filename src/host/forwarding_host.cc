// ForwardingHost: every call forwarded to the inner Host unless intercept() fails it.
#include "host/forwarding_host.hpp"

namespace ovlfs {

const char* host_op_name(HostOp op) noexcept {
  static constexpr const char* names[kHostOps] = {
      "openat",
      "reopen",
      "dup",
      "fstatat",
      "mkdirat",
      "mknodat",
      "symlinkat",
      "readlinkat",
      "unlinkat",
      "renameat2",
      "linkat",
      "read_dir",
      "fchmod",
      "fchown",
      "futimens",
      "ftruncate",
      "fstatfs",
      "fgetxattr",
      "fsetxattr",
      "flistxattr",
      "fremovexattr",
      "pread",
      "pwrite",
      "copy_file_range",
      "clone_file",
      "fallocate",
      "lseek",
      "fsync",
      "fdatasync",
      "syncfs",
      "sync_file_range",
      "name_to_handle",
      "open_by_handle",
      "fs_uuid",
      "idmapped_mount",
      "clone_mount",
      "shm_dir",
      "mmap_shared",
      "munmap",
      "flock",
      "ofd_lock",
      "boot_id",
      "now",
  };
  auto i = static_cast<std::size_t>(op);
  return i < kHostOps ? names[i] : "?";
}

Result<Fd> ForwardingHost::openat(int dirfd, const char* name, int flags, mode_t mode) {
  if (int e = intercept(HostOp::openat)) return fail(e);
  return inner_.openat(dirfd, name, flags, mode);
}

Result<Fd> ForwardingHost::reopen(int fd, int flags) {
  if (int e = intercept(HostOp::reopen)) return fail(e);
  return inner_.reopen(fd, flags);
}

Result<Fd> ForwardingHost::dup(int fd) {
  if (int e = intercept(HostOp::dup)) return fail(e);
  return inner_.dup(fd);
}

Result<struct stat> ForwardingHost::fstatat(int dirfd, const char* name, int flags) {
  if (int e = intercept(HostOp::fstatat)) return fail(e);
  return inner_.fstatat(dirfd, name, flags);
}

Status ForwardingHost::mkdirat(int dirfd, const char* name, mode_t mode) {
  if (int e = intercept(HostOp::mkdirat)) return fail(e);
  return inner_.mkdirat(dirfd, name, mode);
}

Status ForwardingHost::mknodat(int dirfd, const char* name, mode_t mode, dev_t dev) {
  if (int e = intercept(HostOp::mknodat)) return fail(e);
  return inner_.mknodat(dirfd, name, mode, dev);
}

Status ForwardingHost::symlinkat(const char* target, int dirfd, const char* name) {
  if (int e = intercept(HostOp::symlinkat)) return fail(e);
  return inner_.symlinkat(target, dirfd, name);
}

Result<std::string> ForwardingHost::readlinkat(int dirfd, const char* name) {
  if (int e = intercept(HostOp::readlinkat)) return fail(e);
  return inner_.readlinkat(dirfd, name);
}

Status ForwardingHost::unlinkat(int dirfd, const char* name, int flags) {
  if (int e = intercept(HostOp::unlinkat)) return fail(e);
  return inner_.unlinkat(dirfd, name, flags);
}

Status ForwardingHost::renameat2(int olddirfd, const char* oldname, int newdirfd, const char* newname, unsigned flags) {
  if (int e = intercept(HostOp::renameat2)) return fail(e);
  return inner_.renameat2(olddirfd, oldname, newdirfd, newname, flags);
}

Status ForwardingHost::linkat(int olddirfd, const char* oldname, int newdirfd, const char* newname, int flags) {
  if (int e = intercept(HostOp::linkat)) return fail(e);
  return inner_.linkat(olddirfd, oldname, newdirfd, newname, flags);
}

Result<std::vector<HostDirent>> ForwardingHost::read_dir(int dirfd) {
  if (int e = intercept(HostOp::read_dir)) return fail(e);
  return inner_.read_dir(dirfd);
}

Status ForwardingHost::fchmod(int fd, mode_t mode) {
  if (int e = intercept(HostOp::fchmod)) return fail(e);
  return inner_.fchmod(fd, mode);
}

Status ForwardingHost::fchown(int fd, uid_t uid, gid_t gid) {
  if (int e = intercept(HostOp::fchown)) return fail(e);
  return inner_.fchown(fd, uid, gid);
}

Status ForwardingHost::futimens(int fd, const struct timespec times[2]) {
  if (int e = intercept(HostOp::futimens)) return fail(e);
  return inner_.futimens(fd, times);
}

Status ForwardingHost::ftruncate(int fd, off_t size) {
  if (int e = intercept(HostOp::ftruncate)) return fail(e);
  return inner_.ftruncate(fd, size);
}

Result<struct statfs> ForwardingHost::fstatfs(int fd) {
  if (int e = intercept(HostOp::fstatfs)) return fail(e);
  return inner_.fstatfs(fd);
}

Result<std::size_t> ForwardingHost::fgetxattr(int fd, const char* name, void* value, std::size_t size) {
  if (int e = intercept(HostOp::fgetxattr)) return fail(e);
  return inner_.fgetxattr(fd, name, value, size);
}

Result<std::size_t> ForwardingHost::getxattrat(int dirfd, const char* name, const char* attr,
                                               void* value, std::size_t size) {
  if (int e = intercept(HostOp::fgetxattr)) return fail(e);
  return inner_.getxattrat(dirfd, name, attr, value, size);
}

Status ForwardingHost::fsetxattr(int fd, const char* name, const void* value, std::size_t size, int flags) {
  if (int e = intercept(HostOp::fsetxattr)) return fail(e);
  return inner_.fsetxattr(fd, name, value, size, flags);
}

Result<std::size_t> ForwardingHost::flistxattr(int fd, char* list, std::size_t size) {
  if (int e = intercept(HostOp::flistxattr)) return fail(e);
  return inner_.flistxattr(fd, list, size);
}

Status ForwardingHost::fremovexattr(int fd, const char* name) {
  if (int e = intercept(HostOp::fremovexattr)) return fail(e);
  return inner_.fremovexattr(fd, name);
}

Result<std::size_t> ForwardingHost::pread(int fd, void* buf, std::size_t size, off_t off) {
  if (int e = intercept(HostOp::pread)) return fail(e);
  return inner_.pread(fd, buf, size, off);
}

Result<std::size_t> ForwardingHost::pwrite(int fd, const void* buf, std::size_t size, off_t off,
                                           int rwf) {
  if (int e = intercept(HostOp::pwrite)) return fail(e);
  return inner_.pwrite(fd, buf, size, off, rwf);
}

Result<std::size_t> ForwardingHost::copy_file_range(int fdin, off_t* offin, int fdout, off_t* offout, std::size_t len) {
  if (int e = intercept(HostOp::copy_file_range)) return fail(e);
  return inner_.copy_file_range(fdin, offin, fdout, offout, len);
}

Status ForwardingHost::clone_file(int dstfd, int srcfd) {
  if (int e = intercept(HostOp::clone_file)) return fail(e);
  return inner_.clone_file(dstfd, srcfd);
}

Status ForwardingHost::fallocate(int fd, int mode, off_t off, off_t len) {
  if (int e = intercept(HostOp::fallocate)) return fail(e);
  return inner_.fallocate(fd, mode, off, len);
}

Result<off_t> ForwardingHost::lseek(int fd, off_t off, int whence) {
  if (int e = intercept(HostOp::lseek)) return fail(e);
  return inner_.lseek(fd, off, whence);
}

Status ForwardingHost::fsync(int fd) {
  if (int e = intercept(HostOp::fsync)) return fail(e);
  return inner_.fsync(fd);
}

Status ForwardingHost::fdatasync(int fd) {
  if (int e = intercept(HostOp::fdatasync)) return fail(e);
  return inner_.fdatasync(fd);
}

Status ForwardingHost::syncfs(int fd) {
  if (int e = intercept(HostOp::syncfs)) return fail(e);
  return inner_.syncfs(fd);
}

Status ForwardingHost::sync_file_range(int fd, off_t off, off_t len, unsigned flags) {
  if (int e = intercept(HostOp::sync_file_range)) return fail(e);
  return inner_.sync_file_range(fd, off, len, flags);
}

Status ForwardingHost::name_to_handle(int fd, struct file_handle* fh, int* mount_id) {
  if (int e = intercept(HostOp::name_to_handle)) return fail(e);
  return inner_.name_to_handle(fd, fh, mount_id);
}

Result<Fd> ForwardingHost::open_by_handle(int mount_fd, struct file_handle* fh, int flags) {
  if (int e = intercept(HostOp::open_by_handle)) return fail(e);
  return inner_.open_by_handle(mount_fd, fh, flags);
}

Status ForwardingHost::fs_uuid(int fd, unsigned char uuid[16]) {
  if (int e = intercept(HostOp::fs_uuid)) return fail(e);
  return inner_.fs_uuid(fd, uuid);
}

Result<bool> ForwardingHost::idmapped_mount(int fd) {
  if (int e = intercept(HostOp::idmapped_mount)) return fail(e);
  return inner_.idmapped_mount(fd);
}

Result<Fd> ForwardingHost::clone_mount(int fd, std::uint64_t attr_set, std::uint64_t attr_clr) {
  if (int e = intercept(HostOp::clone_mount)) return fail(e);
  return inner_.clone_mount(fd, attr_set, attr_clr);
}

Result<Fd> ForwardingHost::shm_dir() {
  if (int e = intercept(HostOp::shm_dir)) return fail(e);
  return inner_.shm_dir();
}

Result<void*> ForwardingHost::mmap_shared(int fd, std::size_t len) {
  if (int e = intercept(HostOp::mmap_shared)) return fail(e);
  return inner_.mmap_shared(fd, len);
}

void ForwardingHost::munmap(void* addr, std::size_t len) {
  (void)intercept(HostOp::munmap);
  return inner_.munmap(addr, len);
}

Status ForwardingHost::flock(int fd, int op) {
  if (int e = intercept(HostOp::flock)) return fail(e);
  return inner_.flock(fd, op);
}

Status ForwardingHost::ofd_lock(int fd, short type) {
  if (int e = intercept(HostOp::ofd_lock)) return fail(e);
  return inner_.ofd_lock(fd, type);
}

Result<std::string> ForwardingHost::boot_id() {
  if (int e = intercept(HostOp::boot_id)) return fail(e);
  return inner_.boot_id();
}

struct timespec ForwardingHost::now() {
  (void)intercept(HostOp::now);
  return inner_.now();
}

}  // namespace ovlfs
