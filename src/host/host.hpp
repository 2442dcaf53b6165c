// The host-I/O boundary: every system call the overlay makes on the host's
// filesystems goes through one Host.
//
// The overlay logic (src/overlay) never calls the kernel itself: it holds a Host&
// and calls these methods. Production uses SysHost, a thin wrapper over the
// syscalls; tests substitute a subclass that counts calls or fails any one of them
// with any errno (see FaultyHost in host/fault_host.hpp). Every method returns the
// exact errno of the failed call, never a generic error.
//
// Conventions: `dirfd` + `name` address a directory entry (name is one path
// component unless a method says otherwise); `fd` alone addresses the object an fd
// refers to, including O_PATH fds. Nothing here follows a symlink unless the
// caller passes flags that say so.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "host/fd.hpp"
#include "host/result.hpp"

struct file_handle;

namespace ovlfs {

// One directory entry as the host's getdents64 returns it.
struct HostDirent {
  std::string name;
  ino_t ino;
  unsigned char type;  // DT_*
};

// What decides whether a write by a task keeps a file's set-group-ID bit.
struct CallerIds {
  gid_t fsgid = 0;
  std::vector<gid_t> groups;  // supplementary
  bool fsetid = false;        // CAP_FSETID in its effective set
};

class Host {
 public:
  virtual ~Host() = default;

  // --- namespace ---------------------------------------------------------------
  virtual Result<Fd> openat(int dirfd, const char* name, int flags, mode_t mode = 0) = 0;
  // Reopens the object of an O_PATH fd with real access flags.
  virtual Result<Fd> reopen(int fd, int flags) = 0;
  // A second fd for the same open file description (F_DUPFD_CLOEXEC).
  virtual Result<Fd> dup(int fd) = 0;
  virtual Result<struct stat> fstatat(int dirfd, const char* name, int flags) = 0;
  virtual Status mkdirat(int dirfd, const char* name, mode_t mode) = 0;
  virtual Status mknodat(int dirfd, const char* name, mode_t mode, dev_t dev) = 0;
  virtual Status symlinkat(const char* target, int dirfd, const char* name) = 0;
  virtual Result<std::string> readlinkat(int dirfd, const char* name) = 0;
  virtual Status unlinkat(int dirfd, const char* name, int flags) = 0;
  virtual Status renameat2(int olddirfd, const char* oldname, int newdirfd,
                           const char* newname, unsigned flags) = 0;
  virtual Status linkat(int olddirfd, const char* oldname, int newdirfd,
                        const char* newname, int flags) = 0;
  virtual Result<std::vector<HostDirent>> read_dir(int dirfd) = 0;

  // --- attributes (fd may be O_PATH) -------------------------------------------
  virtual Status fchmod(int fd, mode_t mode) = 0;
  virtual Status fchown(int fd, uid_t uid, gid_t gid) = 0;
  virtual Status futimens(int fd, const struct timespec times[2]) = 0;
  virtual Status ftruncate(int fd, off_t size) = 0;
  virtual Result<struct statfs> fstatfs(int fd) = 0;

  // --- extended attributes (fd may be O_PATH; never follows symlinks) ---------
  // getxattr with size 0 returns the size the value needs.
  virtual Result<std::size_t> fgetxattr(int fd, const char* name, void* value,
                                        std::size_t size) = 0;
  // The same for the object `name` in `dirfd` (one path component), without an fd
  // of its own: one syscall where fgetxattr on an O_PATH fd takes two.
  virtual Result<std::size_t> getxattrat(int dirfd, const char* name, const char* attr,
                                         void* value, std::size_t size) = 0;
  virtual Status fsetxattr(int fd, const char* name, const void* value, std::size_t size,
                           int flags) = 0;
  virtual Result<std::size_t> flistxattr(int fd, char* list, std::size_t size) = 0;
  virtual Status fremovexattr(int fd, const char* name) = 0;

  // --- data ----------------------------------------------------------------------
  virtual Result<std::size_t> pread(int fd, void* buf, std::size_t size, off_t off) = 0;
  // `rwf`: pwritev2(2)'s flags (RWF_APPEND: at the end, whatever `off` says).
  virtual Result<std::size_t> pwrite(int fd, const void* buf, std::size_t size, off_t off,
                                     int rwf) = 0;
  virtual Result<std::size_t> copy_file_range(int fdin, off_t* offin, int fdout,
                                              off_t* offout, std::size_t len) = 0;
  virtual Status clone_file(int dstfd, int srcfd) = 0;  // FICLONE
  virtual Status fallocate(int fd, int mode, off_t off, off_t len) = 0;
  virtual Result<off_t> lseek(int fd, off_t off, int whence) = 0;

  // --- durability: the calls volatile mode must never make ---------------------
  virtual Status fsync(int fd) = 0;
  virtual Status fdatasync(int fd) = 0;
  virtual Status syncfs(int fd) = 0;
  // sync_file_range(2): starts or waits for writeback without a journal commit or a
  // cache flush; reports the mapping's writeback errors.
  virtual Status sync_file_range(int fd, off_t off, off_t len, unsigned flags) = 0;

  // --- identity ------------------------------------------------------------------
  // name_to_handle_at(fd, "", AT_EMPTY_PATH): the handle bytes and their type.
  virtual Status name_to_handle(int fd, struct file_handle* fh, int* mount_id) = 0;
  virtual Result<Fd> open_by_handle(int mount_fd, struct file_handle* fh, int flags) = 0;
  // The filesystem's UUID (FS_IOC_GETFSUUID); ENOTTY when it has none to give.
  virtual Status fs_uuid(int fd, unsigned char uuid[16]) = 0;
  // Whether `fd` lies on an id-mapped mount (mount_setattr's MOUNT_ATTR_IDMAP): its
  // owners are shown through that mount's mapping. Default: ENOSYS.
  virtual Result<bool> idmapped_mount(int fd);
  // A private clone of the mount of directory `fd`, rooted there, with the mount
  // attributes `attr_set` (MOUNT_ATTR_*) set and `attr_clr` cleared: open_tree(2)
  // with OPEN_TREE_CLONE, then mount_setattr(2). Detached: nobody else sees it,
  // and it goes away with its last fd. The returned fd is O_PATH at its root.
  // Default: ENOSYS.
  virtual Result<Fd> clone_mount(int fd, std::uint64_t attr_set, std::uint64_t attr_clr);

  // --- state shared between ovlfs processes (writeback errors, src/overlay/wb.*) --
  // These have defaults that fail with ENOSYS, so a Host that does not need them
  // (or predates them) still compiles; SysHost implements them all.
  //
  // The host's shared-memory directory, /dev/shm (O_PATH): the per-upper errseq
  // records live there for one boot.
  virtual Result<Fd> shm_dir();
  // Whose shared records this process makes: its user as the parent user
  // namespace knows it (/proc/self/uid_map), so that root of a user's user
  // namespace and that user are one. 0 for root. Default: 0.
  virtual std::uint32_t record_owner();
  // geteuid(2): this process's user, as its user namespace shows owners.
  virtual uid_t euid();
  // mmap(2) of `len` bytes of fd, PROT_READ|PROT_WRITE, MAP_SHARED.
  virtual Result<void*> mmap_shared(int fd, std::size_t len);
  virtual void munmap(void* addr, std::size_t len);
  // flock(2): LOCK_EX, LOCK_SH, LOCK_UN (| LOCK_NB).
  virtual Status flock(int fd, int op);
  // An open file description lock (F_OFD_SETLK) on the file's first byte:
  // F_RDLCK, F_WRLCK or F_UNLCK; EAGAIN when another open file holds a conflicting
  // one. Independent of flock; released when the last fd of the description closes.
  virtual Status ofd_lock(int fd, short type);
  // This boot's id (/proc/sys/kernel/random/boot_id), without the newline.
  virtual Result<std::string> boot_id();
  // The group ids and whether it has CAP_FSETID of the task `pid` (a FUSE
  // request's caller), from /proc/<pid>/status. Default: ENOSYS.
  virtual Result<CallerIds> caller_ids(pid_t pid);
  // clock_gettime(CLOCK_REALTIME): when an error was recorded.
  virtual struct timespec now();
};

// The real host: each method is the syscall of the same name.
class SysHost final : public Host {
 public:
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
  std::uint32_t record_owner() override;
  Result<void*> mmap_shared(int fd, std::size_t len) override;
  void munmap(void* addr, std::size_t len) override;
  Status flock(int fd, int op) override;
  Status ofd_lock(int fd, short type) override;
  Result<CallerIds> caller_ids(pid_t pid) override;
  Result<std::string> boot_id() override;
  struct timespec now() override;
};

}  // namespace ovlfs
