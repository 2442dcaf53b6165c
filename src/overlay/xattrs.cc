// Extended attributes: the client's, passed through (copy-up on change), and the
// overlay's own (trusted.overlay.* or user.overlay.*), hidden from clients.
#include <sys/xattr.h>

#include <cstring>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {

std::string Overlay::xattr_name(const char* suffix) const {
  return std::string(cfg_.userxattr ? "user.overlay." : "trusted.overlay.") + suffix;
}

bool Overlay::is_private_xattr(std::string_view name) const {
  return name.starts_with(cfg_.userxattr ? "user.overlay." : "trusted.overlay.");
}

Result<std::string> Overlay::get_ovl_xattr(int fd, const char* suffix) {
  const std::string name = xattr_name(suffix);
  char buf[kRedirectMax + 1];
  auto n = host_.fgetxattr(fd, name.c_str(), buf, sizeof buf);
  if (n) return std::string(buf, *n);
  if (n.error() != ERANGE) return fail(n.error());
  // Longer than any value the overlay writes but an origin handle: size it.
  auto need = host_.fgetxattr(fd, name.c_str(), nullptr, 0);
  if (!need) return fail(need.error());
  if (*need > 4096) return fail(EIO);  // hostile layer content
  std::string s(*need, '\0');
  n = host_.fgetxattr(fd, name.c_str(), s.data(), s.size());
  if (!n) return fail(n.error());
  s.resize(*n);
  return s;
}

Status Overlay::set_ovl_xattr(int fd, const char* suffix, std::string_view value) {
  return host_.fsetxattr(fd, xattr_name(suffix).c_str(), value.data(), value.size(), 0);
}

bool Overlay::is_opaque(int fd) {
  auto v = get_ovl_xattr(fd, kXattrOpaque);
  return v && *v == "y";
}

Status Overlay::setxattr(Node* node, const char* name, const void* value, std::size_t size,
                         int flags) {
  if (is_private_xattr(name)) return fail(EOPNOTSUPP);
  OVL_TRY(check_writable());
  OVL_TRY(copy_up(node));
  return host_.fsetxattr(node->upper_fd(), name, value, size, flags);
}

Result<std::size_t> Overlay::getxattr(Node* node, const char* name, void* value,
                                      std::size_t size) {
  if (is_private_xattr(name)) return fail(EOPNOTSUPP);
  return host_.fgetxattr(node->real_fd(), name, value, size);
}

Result<std::size_t> Overlay::listxattr(Node* node, char* list, std::size_t size) {
  const int fd = node->real_fd();
  std::string raw;
  for (;;) {
    auto need = host_.flistxattr(fd, nullptr, 0);
    if (!need) return fail(need.error());
    raw.resize(*need);
    auto n = host_.flistxattr(fd, raw.data(), raw.size());
    if (n) {
      raw.resize(*n);
      break;
    }
    if (n.error() != ERANGE) return fail(n.error());  // grew meanwhile: again
  }
  std::string out;
  for (std::size_t pos = 0; pos < raw.size();) {
    std::size_t len = std::strlen(raw.data() + pos);
    std::string_view name(raw.data() + pos, len);
    if (!is_private_xattr(name)) out.append(name).push_back('\0');
    pos += len + 1;
  }
  if (size == 0) return out.size();
  if (out.size() > size) return fail(ERANGE);
  std::memcpy(list, out.data(), out.size());
  return out.size();
}

Status Overlay::removexattr(Node* node, const char* name) {
  if (is_private_xattr(name)) return fail(EOPNOTSUPP);
  OVL_TRY(check_writable());
  if (!node->has_upper()) {
    // Nothing to remove: fail as the lower would, without a copy-up.
    auto n = host_.fgetxattr(node->real_fd(), name, nullptr, 0);
    if (!n) return fail(n.error());
  }
  OVL_TRY(copy_up(node));
  return host_.fremovexattr(node->upper_fd(), name);
}

}  // namespace ovlfs
