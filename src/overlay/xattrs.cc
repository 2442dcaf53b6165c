// Extended attributes: the client's, passed through (copy-up on change), and the
// overlay's own, hidden from clients.
//
// The overlay's own xattrs are trusted.overlay.* (user.overlay.* with userxattr).
// A client may still use names in that namespace (an overlay nested in an
// overlay): as in the kernel's overlayfs, they are stored escaped, with an extra
// "overlay." (trusted.overlay.X lives as trusted.overlay.overlay.X), so that only
// the unescaped ones are private.
#include <sys/xattr.h>

#include <cstring>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {
namespace {

constexpr std::string_view kEscape = "overlay.";

}  // namespace

std::string Overlay::xattr_name(const char* suffix) const {
  return std::string(cfg_.userxattr ? "user.overlay." : "trusted.overlay.") + suffix;
}

// Private: the overlay's own namespace, unless escaped, and fuse-overlayfs's.
bool Overlay::is_private_xattr(std::string_view name) const {
  if (name.starts_with(kFuseOvlPrefix)) return true;
  std::string_view prefix = cfg_.userxattr ? "user.overlay." : "trusted.overlay.";
  if (!name.starts_with(prefix)) return false;
  return !name.substr(prefix.size()).starts_with(kEscape);
}

bool Overlay::reserved_xattr(std::string_view name) const {
  return name.starts_with(kFuseOvlPrefix) ||
         (!cfg_.override_xattr.empty() && name == cfg_.override_xattr);
}

bool Overlay::hidden_xattr(std::string_view name) const {
  return is_private_xattr(name) || reserved_xattr(name);
}

// The name a client's xattr is stored under.
std::string Overlay::escape_xattr(const char* name) const {
  std::string_view prefix = cfg_.userxattr ? "user.overlay." : "trusted.overlay.";
  std::string_view n(name);
  if (!n.starts_with(prefix)) return std::string(n);
  return std::string(prefix).append(kEscape).append(n.substr(prefix.size()));
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

bool Overlay::xattr_is_y(int fd, const char* name) {
  char v[2];
  auto n = host_.fgetxattr(fd, name, v, sizeof v);
  return n && *n == 1 && v[0] == 'y';
}

Status Overlay::setxattr(Node* node, const char* name, const void* value, std::size_t size,
                         int flags, const Cred& cred) {
  if (cfg_.noxattrs) return fail(ENOTSUP);
  if (reserved_xattr(name))
    return fail(EPERM);
  OVL_TRY(check_writable());
  OVL_TRY(copy_up(node));
  if (std::string_view(name) == "system.posix_acl_default") node->default_acl.store(-1);
  const bool caps = name == kXattrCaps;
  if (caps) {
    node->caps_gen.fetch_add(1, std::memory_order_acq_rel);
    node->no_caps.store(false, std::memory_order_release);
  }
  const int ufd = node->upper_fd();
  if (ufd < 0) return fail(errno);
  Status s = host_.fsetxattr(ufd, escape_xattr(name).c_str(), value, size, flags);
  if (caps) {
    node->caps_gen.fetch_add(1, std::memory_order_acq_rel);
    node->no_caps.store(false, std::memory_order_release);
  }
  if (s && std::string_view(name) == "system.posix_acl_access") {
    // Set by the daemon, the ACL keeps set-group-ID; the kernel clears it for a
    // caller outside the file's group without CAP_FSETID (posix_acl_update_mode).
    auto st = host_.fstatat(ufd, "", kStatFd);
    if (st && (st->st_mode & S_ISGID)) {
      if (auto [in_group, fsetid] = caller_group_fsetid(st->st_gid, cred); !in_group && !fsetid)
        OVL_TRY(host_.fchmod(ufd, st->st_mode & 07777 & ~S_ISGID));
    }
    // An access ACL sets the mode's group and other bits too; the kernel's FUSE,
    // which passes ACLs through as xattrs, keeps the mode it had.
    attrs_changed(node);
  }
  return s;
}

Result<std::size_t> Overlay::getxattr(Node* node, const char* name, void* value,
                                      std::size_t size) {
  if (cfg_.noxattrs) return fail(ENOTSUP);
  if (reserved_xattr(name))
    return fail(ENODATA);
  const bool caps = name == kXattrCaps;
  // Asked before every write: answered from the node once known to be absent.
  if (caps && node->no_caps.load(std::memory_order_acquire)) return fail(ENODATA);
  const std::uint32_t gen = node->caps_gen.load(std::memory_order_acquire);
  const int fd = node->real_fd();
  if (fd < 0) return fail(errno);
  if (!caps) return host_.fgetxattr(fd, escape_xattr(name).c_str(), value, size);
  auto n = host_.fgetxattr(fd, name, value, size);
  if (!n && n.error() == ENODATA && node->caps_gen.load(std::memory_order_acquire) == gen)
    node->no_caps.store(true, std::memory_order_release);
  return n;
}

Result<std::size_t> Overlay::listxattr(Node* node, char* list, std::size_t size,
                                       const Cred& cred) {
  if (cfg_.noxattrs) return fail(ENOTSUP);
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
  std::string_view prefix = cfg_.userxattr ? "user.overlay." : "trusted.overlay.";
  std::string out;
  for (std::size_t pos = 0; pos < raw.size();) {
    std::size_t len = std::strlen(raw.data() + pos);
    std::string_view name(raw.data() + pos, len);
    pos += len + 1;
    if (hidden_xattr(name)) continue;
    if (name.starts_with("trusted.") && cred.uid != 0) continue;
    if (name.starts_with(prefix)) {
      out.append(prefix).append(name.substr(prefix.size() + kEscape.size())).push_back('\0');
    } else {
      out.append(name).push_back('\0');
    }
  }
  if (size == 0) return out.size();
  if (out.size() > size) return fail(ERANGE);
  std::memcpy(list, out.data(), out.size());
  return out.size();
}

Status Overlay::removexattr(Node* node, const char* name) {
  if (cfg_.noxattrs) return fail(ENOTSUP);
  if (reserved_xattr(name))
    return fail(EPERM);
  OVL_TRY(check_writable());
  if (std::string_view(name) == "system.posix_acl_default") node->default_acl.store(-1);
  const std::string real = escape_xattr(name);
  if (!node->has_upper()) {
    // Nothing to remove: fail as the lower would, without a copy-up.
    auto n = host_.fgetxattr(node->real_fd(), real.c_str(), nullptr, 0);
    if (!n) return fail(n.error());
  }
  OVL_TRY(copy_up(node));
  const int ufd = node->upper_fd();
  if (ufd < 0) return fail(errno);
  Status s = host_.fremovexattr(ufd, real.c_str());
  if (s && std::string_view(name) == "system.posix_acl_access") attrs_changed(node);
  return s;
}

}  // namespace ovlfs
