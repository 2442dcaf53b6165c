// Open files: reads and writes go to the real file; opening for write copies up.
#include <fcntl.h>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

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

}  // namespace

Result<std::unique_ptr<FileHandle>> Overlay::open(Node* node, int flags) {
  if (node->is_dir() && wants_write(flags)) return fail(EISDIR);
  if (wants_write(flags)) {
    OVL_TRY(check_writable());
    OVL_TRY(copy_up(node));
  }
  auto fd = host_.reopen(node->real_fd(), real_open_flags(flags));
  if (!fd) return fail(fd.error());
  auto fh = std::make_unique<FileHandle>();
  fh->node = node->shared_from_this();
  fh->fd = std::move(*fd);
  fh->on_upper = node->has_upper();
  fh->flags = flags;
  return fh;
}

Result<std::pair<Entry, std::unique_ptr<FileHandle>>> Overlay::create(
    Node* parent, std::string_view name, mode_t mode, int flags, const Cred& cred) {
  Fd fd;
  auto e = create_object(parent, name, S_IFREG | (mode & 07777), 0, nullptr, nullptr, cred,
                         real_open_flags(flags), &fd);
  if (!e) return fail(e.error());
  auto fh = std::make_unique<FileHandle>();
  fh->node = e->node->shared_from_this();
  fh->fd = std::move(fd);
  fh->on_upper = true;
  fh->flags = flags;
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

Result<std::size_t> Overlay::write(FileHandle* fh, const char* buf, std::size_t size,
                                   off_t off) {
  return host_.pwrite(fh->fd.get(), buf, size, off);
}

Status Overlay::fsync(FileHandle* fh, bool datasync) {
  if (cfg_.is_volatile || !fh->on_upper) return {};
  return datasync ? host_.fdatasync(fh->fd.get()) : host_.fsync(fh->fd.get());
}

Status Overlay::release(FileHandle* fh) { return fh->fd.close(); }

Status Overlay::fallocate(FileHandle* fh, int mode, off_t off, off_t len) {
  if (!fh->on_upper) return fail(EBADF);
  return host_.fallocate(fh->fd.get(), mode, off, len);
}

Result<off_t> Overlay::lseek(FileHandle* fh, off_t off, int whence) {
  return host_.lseek(fh->fd.get(), off, whence);
}

}  // namespace ovlfs
