// Hosts that wrap another Host: the seam for counting and for fault injection.
//
// ForwardingHost passes every call to an inner Host, after asking intercept(op)
// whether to fail it instead. CountingHost counts the calls (ovlfs counts the
// durability calls it makes on the upper, so `ovlfs status` can prove that a
// volatile mount made none). FaultyHost (fault_host.hpp) fails chosen calls with
// chosen errnos, for unit tests.
//
// Adding a method to Host means adding it here too (the compiler says so for the
// pure ones): one HostOp, one forwarding method.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "host/host.hpp"

namespace ovlfs {

// One value per Host method.
enum class HostOp : unsigned {
  openat, reopen, dup, fstatat, mkdirat, mknodat, symlinkat, readlinkat,
  unlinkat, renameat2, linkat, read_dir, fchmod, fchown, futimens, ftruncate, fstatfs,
  fgetxattr, fsetxattr, flistxattr, fremovexattr, pread, pwrite, copy_file_range,
  clone_file, fallocate, lseek, fsync, fdatasync, syncfs, sync_file_range,
  name_to_handle, open_by_handle, fs_uuid, idmapped_mount, clone_mount, shm_dir, mmap_shared, munmap, flock, ofd_lock,
  boot_id, now,
  count_  // the number of ops
};
inline constexpr std::size_t kHostOps = static_cast<std::size_t>(HostOp::count_);

// The name of an op ("fsync"), for messages and test output.
const char* host_op_name(HostOp op) noexcept;

class ForwardingHost : public Host {
 public:
  explicit ForwardingHost(Host& inner) : inner_(inner) {}
  Host& inner() const { return inner_; }

  // Called before every forwarded call: 0 to forward it, or the errno to fail it
  // with (calls that cannot fail -- munmap, now -- ignore the answer).
  // Context: any thread, concurrently.
  virtual int intercept(HostOp op) = 0;
  // How many `op` calls were made (0 if this host does not count).
  virtual std::uint64_t calls(HostOp) const { return 0; }

  Result<Fd> openat(int dirfd, const char* name, int flags, mode_t mode) override;
  Result<Fd> reopen(int fd, int flags) override;
  Result<Fd> dup(int fd) override;
  Result<struct stat> fstatat(int dirfd, const char* name, int flags) override;
  Status mkdirat(int dirfd, const char* name, mode_t mode) override;
  Status mknodat(int dirfd, const char* name, mode_t mode, dev_t dev) override;
  Status symlinkat(const char* target, int dirfd, const char* name) override;
  Result<std::string> readlinkat(int dirfd, const char* name) override;
  Status unlinkat(int dirfd, const char* name, int flags) override;
  Status renameat2(int olddirfd, const char* oldname, int newdirfd, const char* newname,
                   unsigned flags) override;
  Status linkat(int olddirfd, const char* oldname, int newdirfd, const char* newname,
                int flags) override;
  Result<std::vector<HostDirent>> read_dir(int dirfd) override;
  Status fchmod(int fd, mode_t mode) override;
  Status fchown(int fd, uid_t uid, gid_t gid) override;
  Status futimens(int fd, const struct timespec times[2]) override;
  Status ftruncate(int fd, off_t size) override;
  Result<struct statfs> fstatfs(int fd) override;
  Result<std::size_t> fgetxattr(int fd, const char* name, void* value,
                                std::size_t size) override;
  // Intercepted as HostOp::fgetxattr: the same read, reached another way.
  Result<std::size_t> getxattrat(int dirfd, const char* name, const char* attr, void* value,
                                 std::size_t size) override;
  Status fsetxattr(int fd, const char* name, const void* value, std::size_t size,
                   int flags) override;
  Result<std::size_t> flistxattr(int fd, char* list, std::size_t size) override;
  Status fremovexattr(int fd, const char* name) override;
  Result<std::size_t> pread(int fd, void* buf, std::size_t size, off_t off) override;
  Result<std::size_t> pwrite(int fd, const void* buf, std::size_t size, off_t off,
                             int rwf) override;
  Result<std::size_t> copy_file_range(int fdin, off_t* offin, int fdout, off_t* offout,
                                      std::size_t len) override;
  Status clone_file(int dstfd, int srcfd) override;
  Status fallocate(int fd, int mode, off_t off, off_t len) override;
  Result<off_t> lseek(int fd, off_t off, int whence) override;
  Status fsync(int fd) override;
  Status fdatasync(int fd) override;
  Status syncfs(int fd) override;
  Status sync_file_range(int fd, off_t off, off_t len, unsigned flags) override;
  Status name_to_handle(int fd, struct file_handle* fh, int* mount_id) override;
  Result<Fd> open_by_handle(int mount_fd, struct file_handle* fh, int flags) override;
  Status fs_uuid(int fd, unsigned char uuid[16]) override;
  Result<bool> idmapped_mount(int fd) override;
  Result<Fd> clone_mount(int fd, std::uint64_t attr_set, std::uint64_t attr_clr) override;
  Result<Fd> shm_dir() override;
  Result<void*> mmap_shared(int fd, std::size_t len) override;
  void munmap(void* addr, std::size_t len) override;
  Status flock(int fd, int op) override;
  Status ofd_lock(int fd, short type) override;
  Result<std::string> boot_id() override;
  Result<CallerIds> caller_ids(pid_t pid) override { return inner_.caller_ids(pid); }
  struct timespec now() override;
  std::uint32_t record_owner() override { return inner_.record_owner(); }
  uid_t euid() override { return inner_.euid(); }

 private:
  Host& inner_;
};

// Counts every call by op; forwards all of them.
class CountingHost : public ForwardingHost {
 public:
  using ForwardingHost::ForwardingHost;

  int intercept(HostOp op) override {
    // Relaxed: a statistic; readers want a recent value, not an ordering.
    counts_[static_cast<std::size_t>(op)].fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  std::uint64_t calls(HostOp op) const override {
    return counts_[static_cast<std::size_t>(op)].load(std::memory_order_relaxed);
  }

 private:
  std::array<std::atomic<std::uint64_t>, kHostOps> counts_{};
};

}  // namespace ovlfs
