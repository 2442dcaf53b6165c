// Small helpers of the overlay.
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstdio>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {

// A whiteout is a character device 0:0.
bool Overlay::is_whiteout(const struct stat& st) const {
  return S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0);
}

Result<bool> Overlay::aufs_whiteout_at(int dirfd, std::string_view name) {
  if (name.size() + kAufsPrefix.size() > NAME_MAX) return false;
  std::string wh(kAufsPrefix);
  wh.append(name);
  auto st = host_.fstatat(dirfd, wh.c_str(), AT_SYMLINK_NOFOLLOW);
  if (st) return true;
  if (st.error() == ENOENT || st.error() == ENOTDIR) return false;
  return fail(st.error());
}

// A fresh name in the work directory (the kernel's overlayfs uses "#<hex>" too).
std::string Overlay::temp_name() {
  char buf[32];
  std::snprintf(buf, sizeof buf, "#ovl%llx",
                static_cast<unsigned long long>(temp_seq_.fetch_add(1, std::memory_order_relaxed)));
  return buf;
}

Status Overlay::check_name(std::string_view name) const {
  if (name.empty()) return fail(ENOENT);
  if (name.size() > NAME_MAX) return fail(ENAMETOOLONG);
  if (name.find('/') != std::string_view::npos || name == "." || name == "..") return fail(EINVAL);
  // A whiteout's name, as fuse-overlayfs answers it: never looked up, never made.
  if (is_aufs_name(name)) return fail(EINVAL);
  return {};
}

Status Overlay::check_writable() const {
  if (!writable()) return fail(EROFS);
  return {};
}

}  // namespace ovlfs
