// Open files: reads and writes go to the real file; opening for write copies up.
// Writeback errors of upper files reach fsync as SPEC 2 says (overlay/wb.hpp).
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/uio.h>

#include <optional>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"
#include "overlay/wb.hpp"

namespace ovlfs {
namespace {

bool wants_write(int flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

// Status flags that change how the kernel uses a real fd (direct or synchronous
// I/O, no atime, non-blocking): a real fd carries them when the caller's open has
// them. Appending is not among them: a handle's writes say it themselves
// (RWF_APPEND), so one read-write fd serves appending opens too.
constexpr int kFdStatus = O_DIRECT | O_SYNC | O_DSYNC | O_NONBLOCK | O_NOATIME | O_PATH;

// Flags for reopening the real file: the caller's access mode and status flags,
// never creation (the object exists), never following a link, never appending.
int real_open_flags(int flags) {
  return flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_APPEND);
}

// Whether a real fd opened with `flags` can back a passthrough open as it is.
bool plain_rdwr(int flags) {
  return (flags & O_ACCMODE) == O_RDWR && !(flags & kFdStatus);
}

}  // namespace

// The kernel's rules (should_remove_suid, setattr_should_drop_sgid since Linux
// 6.2): a write or truncate clears set-user-ID, and set-group-ID when the file is
// group-executable or the caller is not in its group; a caller with CAP_FSETID
// keeps both. The kernel's FUSE clears only set-user-ID and a group-executable
// set-group-ID itself (a setattr before the write); the rest is the daemon's.
// The caller's groups and capabilities come from /proc; without them, its primary
// group, and CAP_FSETID for uid 0.
std::pair<bool, bool> Overlay::caller_group_fsetid(gid_t gid, const Cred& cred) {
  std::optional<CallerIds> ids;
  if (cred.pid > 0)
    if (auto r = host_.caller_ids(cred.pid)) ids = std::move(*r);
  bool in = cred.gid == gid;
  if (!in && ids) {
    in = id_to_disk(cfg_.gid_map, ids->fsgid) == gid;
    for (gid_t g : ids->groups) in = in || id_to_disk(cfg_.gid_map, g) == gid;
  }
  return {in, ids ? ids->fsetid : cred.uid == 0};
}

mode_t Overlay::setid_kill(const struct stat& st, const Cred& cred) {
  if (!S_ISREG(st.st_mode) || !(st.st_mode & (S_ISUID | S_ISGID))) return 0;
  const auto [in_group, fsetid] = caller_group_fsetid(st.st_gid, cred);
  if (fsetid) return 0;
  mode_t kill = st.st_mode & S_ISUID;
  if ((st.st_mode & S_ISGID) && ((st.st_mode & S_IXGRP) || !in_group)) kill |= S_ISGID;
  return kill;
}

Result<Fd> Overlay::reopen_real(int fd, int flags) {
  if (cfg_.atime == Config::Atime::noatime) {
    auto r = host_.reopen(fd, flags | O_NOATIME);
    if (r || r.error() != EPERM) return r;  // EPERM: not the file's owner (rootless)
  }
  return host_.reopen(fd, flags);
}

Status Overlay::kill_setid(Node* node, int fd, const Cred& cred) {
  auto st = host_.fstatat(fd, "", kStatFd);
  if (!st) return fail(st.error());
  mode_t kill = setid_kill(*st, cred);
  if (!kill) return {};
  OVL_TRY(host_.fchmod(fd, st->st_mode & 07777 & ~kill));
  attrs_changed(node);  // the reply to a write carries no attributes
  return {};
}

Result<std::unique_ptr<FileHandle>> Overlay::open(Node* node, int flags, const Cred& cred) {
  if (node->is_dir() && wants_write(flags)) return fail(EISDIR);
  const bool copied_up = wants_write(flags) && !node->has_upper();
  Fd copy;  // the copy's read-write fd, when this open made it
  if (wants_write(flags)) {
    OVL_TRY(check_writable());
    if (wb_ && node->has_upper()) wb_->relieve();  // a writer gets a detector
    OVL_TRY(copy_up(node, &copy));
  }
  auto fh = std::make_unique<FileHandle>();
  if (copy && !(flags & (O_TRUNC | kFdStatus))) {
    // The copy's own read-write fd is all this open needs: no second open.
    fh->fd = std::move(copy);
    fh->rdwr = true;
  } else {
    const int real = real_open_flags(flags);
    const int at = node->real_fd();
    if (at < 0) return fail(errno);
    auto fd = reopen_real(at, real);
    if (!fd) return fail(fd.error());
    fh->fd = std::move(*fd);
    fh->rdwr = plain_rdwr(real);
    fh->spare = std::move(copy);
  }
  if (wants_write(flags) && S_ISREG(node->type)) {
    auto st = host_.fstatat(fh->fd.get(), "", kStatFd);
    if (!st) return fail(st.error());
    // The open truncated the file: truncate(2)'s clearing of set-id bits is the
    // daemon's to do (the kernel sends no setattr for an open that truncates).
    mode_t kill = (flags & O_TRUNC) ? setid_kill(*st, cred) : 0;
    if (kill) OVL_TRY(host_.fchmod(fh->fd.get(), st->st_mode & 07777 & ~kill));
    fh->watch_setid = (st->st_mode & ~kill) & (S_ISUID | S_ISGID);
  }
  fh->node = node->shared_from_this();
  fh->on_upper = node->has_upper();
  fh->flags = flags;
  if (wb_) {
    auto o = wb_->open_file(*node, fh->on_upper, wants_write(flags),
                            fh->on_upper ? fh->fd.get() : -1, flags & O_DIRECT);
    if (!o) return fail(o.error());
    fh->wb = std::move(*o);
    // The copied-up data is written back and checked like written data.
    if (copied_up) wb_->note_write(*fh->wb);
  }
  return fh;
}

Result<std::pair<Entry, std::unique_ptr<FileHandle>>> Overlay::create(
    Node* parent, std::string_view name, mode_t mode, int flags, const Cred& cred) {
  Fd fd;
  // Write-only opens get a read-write fd (the kernel never reads through a
  // write-only open), so that it can also back a passthrough open.
  int real = real_open_flags(flags);
  if ((real & O_ACCMODE) == O_WRONLY) real = (real & ~O_ACCMODE) | O_RDWR;
  if (wb_) wb_->relieve();
  auto e = create_object(parent, name, S_IFREG | (mode & 07777), 0, nullptr, nullptr, cred,
                         real, &fd);
  if (!e) return fail(e.error());
  auto fh = std::make_unique<FileHandle>();
  fh->node = e->node->shared_from_this();
  fh->fd = std::move(fd);
  fh->on_upper = true;
  fh->flags = flags;
  fh->rdwr = plain_rdwr(real);
  if (wb_) {
    auto o = wb_->open_file(*e->node, true, true, fh->fd.get(), flags & O_DIRECT);
    if (!o) {
      forget(e->node, 1);
      return fail(o.error());
    }
    fh->wb = std::move(*o);
  }
  return std::pair{*e, std::move(fh)};
}

Result<std::size_t> Overlay::read(FileHandle* fh, char* buf, std::size_t size, off_t off) {
  int fd;
  {
    MutexLock g(fh->mu);
    if (!fh->on_upper && fh->node->has_upper()) {
      // Copied up since it was opened (through another handle): read the copy.
      auto up = host_.reopen(fh->node->upper_fd(), real_open_flags(fh->flags));
      if (up) {
        fh->fd = std::move(*up);
        fh->on_upper = true;
      }
    }
    fd = fh->fd.get();
  }
  return host_.pread(fd, buf, size, off);
}

// A write that the upper refuses at once (ENOSPC, EDQUOT, EIO) is returned now and
// is not a writeback error; one that it takes is queued for the writeback pass.
Result<std::size_t> Overlay::write(FileHandle* fh, const char* buf, std::size_t size,
                                   off_t off, const Cred& cred, bool cache_writeback) {
  if (wb_read_only()) return fail(EROFS);  // errors=remount-ro after an upper error
  if (fh->watch_setid) OVL_TRY(kill_setid(fh->node.get(), fh->fd.get(), cred));
  int fd = fh->fd.get();
  if (cache_writeback && (fh->flags & O_DIRECT)) {
    // Pages of the kernel's cache (a shared mapping of the file), written back
    // through this handle: not direct I/O, which refuses the short last page of a
    // file (EINVAL, and the mapped data would be lost). The kernel's overlayfs has
    // the upper file's own cache write them back.
    MutexLock g(fh->mu);
    if (!fh->cached) {
      auto c = host_.reopen(fh->fd.get(), O_RDWR);
      if (!c) return fail(c.error());
      fh->cached = std::move(*c);
    }
    fd = fh->cached.get();
  }
  // The real fd is never O_APPEND: an appending handle says so on each write.
  auto n = host_.pwrite(fd, buf, size, off, (fh->flags & O_APPEND) ? RWF_APPEND : 0);
  if (n && *n > 0 && fh->wb) wb_->note_write(*fh->wb);
  return n;
}

// Volatile: the latest upper error since the mount, on every call; never a sync.
// Otherwise: fsync of the upper file, each of its errors reported once to this
// open file description (a lower file is not synced, as in the kernel's overlayfs).
Status Overlay::fsync(FileHandle* fh, bool datasync) {
  if (!wb_) return {};
  if (cfg_.is_volatile) return wb_->fsync_volatile();
  {
    MutexLock g(fh->mu);
    if (!fh->on_upper) return {};
  }
  return wb_->fsync_file(*fh->node, *fh->wb, datasync);
}

// close(2) reports nothing: errors of what was written go to fsync and syncfs.
Status Overlay::release(FileHandle* fh) {
  Status s = fh->fd.close();
  fh->wb.reset();  // the file's detector stays open until its data is checked
  return s;
}

Status Overlay::fallocate(FileHandle* fh, int mode, off_t off, off_t len, const Cred& cred) {
  if (!fh->on_upper) return fail(EBADF);
  if (wb_read_only()) return fail(EROFS);
  if (!(mode & FALLOC_FL_KEEP_SIZE) || (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)))
    OVL_TRY(kill_setid(fh->node.get(), fh->fd.get(), cred));
  Status s = host_.fallocate(fh->fd.get(), mode, off, len);
  if (s && fh->wb) wb_->note_write(*fh->wb);
  return s;
}

Result<off_t> Overlay::lseek(FileHandle* fh, off_t off, int whence) {
  return host_.lseek(fh->fd.get(), off, whence);
}

Result<int> Overlay::open_backing(Node* node, FileHandle* fh, Fd& opened) {
  if (!S_ISREG(node->type) || !node->has_upper()) return fail(EINVAL);
  {
    MutexLock g(fh->mu);
    if (fh->rdwr && fh->on_upper) return fh->fd.get();
    if (fh->spare) {  // the copy-up's own fd: handed over
      opened = std::move(fh->spare);
      return opened.get();
    }
  }
  auto fd = reopen_real(node->upper_fd(), O_RDWR);
  if (!fd) return fail(fd.error());
  opened = std::move(*fd);
  return opened.get();
}

void Overlay::set_fd_budget(std::size_t fds) {
  if (wb_) wb_->set_fd_budget(fds);
}

}  // namespace ovlfs
