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
  return {};
}

Status Overlay::check_writable() const {
  if (!writable()) return fail(EROFS);
  return {};
}

}  // namespace ovlfs
