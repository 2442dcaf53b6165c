// Open files: reads and writes go to the real file; opening for write copies up.
// Writeback errors of upper files reach fsync as SPEC 2 says (overlay/wb.hpp).
#include <fcntl.h>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"
#include "overlay/wb.hpp"

namespace ovlfs {
namespace {

bool wants_write(int flags) {
  return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

// Flags for reopening the real file: the caller's access mode and status flags,
// never creation (the object exists) and never following a link.
int real_open_flags(int flags) {
  return flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW);
}

// Whether a real fd opened with `flags` can back a passthrough open as it is:
// read-write, with none of the status flags that would change how the kernel
// uses it (appending, direct or synchronous I/O, no atime, non-blocking).
bool plain_rdwr(int flags) {
  return (flags & O_ACCMODE) == O_RDWR &&
         !(flags & (O_APPEND | O_DIRECT | O_SYNC | O_DSYNC | O_NONBLOCK | O_NOATIME | O_PATH));
}

}  // namespace

Result<std::unique_ptr<FileHandle>> Overlay::open(Node* node, int flags) {
  if (node->is_dir() && wants_write(flags)) return fail(EISDIR);
  const bool copied_up = wants_write(flags) && !node->has_upper();
  Fd copy;  // the copy's read-write fd, when this open made it
  if (wants_write(flags)) {
    OVL_TRY(check_writable());
    OVL_TRY(copy_up(node, &copy));
  }
  auto fd = host_.reopen(node->real_fd(), real_open_flags(flags));
  if (!fd) return fail(fd.error());
  auto fh = std::make_unique<FileHandle>();
  fh->node = node->shared_from_this();
  fh->fd = std::move(*fd);
  fh->on_upper = node->has_upper();
  fh->flags = flags;
  fh->spare = std::move(copy);
  if (wb_) {
    auto o = wb_->open_file(*node, fh->on_upper, wants_write(flags),
                            fh->on_upper ? fh->fd.get() : -1);
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
    auto o = wb_->open_file(*e->node, true, true, fh->fd.get());
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
    std::lock_guard g(fh->mu);
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
                                   off_t off) {
  if (wb_read_only()) return fail(EROFS);  // errors=remount-ro after an upper error
  auto n = host_.pwrite(fh->fd.get(), buf, size, off);
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
    std::lock_guard g(fh->mu);
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

Status Overlay::fallocate(FileHandle* fh, int mode, off_t off, off_t len) {
  if (!fh->on_upper) return fail(EBADF);
  if (wb_read_only()) return fail(EROFS);
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
    std::lock_guard g(fh->mu);
    if (fh->rdwr && fh->on_upper) return fh->fd.get();
    if (fh->spare) {  // the copy-up's own fd: handed over
      opened = std::move(fh->spare);
      return opened.get();
    }
  }
  auto fd = host_.reopen(node->upper_fd(), O_RDWR);
  if (!fd) return fail(fd.error());
  opened = std::move(*fd);
  return opened.get();
}

void Overlay::set_fd_budget(std::size_t fds) {
  if (wb_) wb_->set_fd_budget(fds);
}

}  // namespace ovlfs
