// Namespace changes: create, link, remove, rename; whiteouts, opaque directories
// and redirects, as the kernel's overlayfs writes them.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstring>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"
#include "overlay/wb.hpp"

namespace ovlfs {
namespace {

// Builds "/a/b/c" from a node up to the first absolute redirect or the root,
// using each directory's redirect where it has one: the path its lower lives at.
std::string redirect_path(Node* node) {
  std::string path;
  NodeRef cur = node->shared_from_this();
  while (cur) {
    std::string comp;
    NodeRef up;
    {
      MutexLock g(cur->mu);
      up = cur->parent;
      if (!up) break;  // the root
      comp = cur->redirect.empty() ? cur->name : cur->redirect;
    }
    if (comp[0] == '/') return comp + path;
    path = "/" + comp + path;
    cur = std::move(up);
  }
  return path;
}

}  // namespace

Status Overlay::make_whiteout(int dirfd, const char* name) {
  if (!aufs_whiteouts_) return host_.mknodat(dirfd, name, S_IFCHR | 0, makedev(0, 0));
  if (std::strlen(name) + kAufsPrefix.size() > NAME_MAX) return fail(ENAMETOOLONG);
  auto f = host_.openat(dirfd, (std::string(kAufsPrefix) + name).c_str(),
                        O_WRONLY | O_CREAT | O_NOFOLLOW, 0);
  if (!f) return fail(f.error());
  return {};
}

// Removes the whiteouts (of both formats) of an upper directory that is empty in
// the overlay's view.
Status Overlay::clear_whiteouts(int dirfd) {
  auto ents = host_.read_dir(dirfd);
  if (!ents) return fail(ents.error());
  for (const HostDirent& e : *ents) {
    if (e.name == "." || e.name == "..") continue;
    auto st = host_.fstatat(dirfd, e.name.c_str(), AT_SYMLINK_NOFOLLOW);
    if (!st) return fail(st.error());
    if (!is_whiteout(*st) && !(is_aufs_name(e.name) && S_ISREG(st->st_mode)))
      return fail(ENOTEMPTY);
    OVL_TRY(host_.unlinkat(dirfd, e.name.c_str(), 0));
  }
  return {};
}

Result<Entry> Overlay::create_object(Node* parent, std::string_view name_sv, mode_t mode,
                                     dev_t rdev, const char* link_target, Node* hardlink,
                                     const Cred& cred, int open_flags, Fd* opened) {
  OVL_TRY(check_writable());
  OVL_TRY(check_name(name_sv));
  if (!parent->is_dir()) return fail(ENOTDIR);
  OVL_TRY(copy_up(parent));
  if (hardlink) OVL_TRY(copy_up(hardlink));
  const std::string name(name_sv);
  const int pu = parent->upper_fd();
  if (pu < 0) return fail(errno);
  // The caller's umask applies unless the directory's default ACL decides (the
  // upper's filesystem applies that ACL itself to what is made in place).
  if (!hardlink && !has_default_acl(parent, pu)) mode &= ~(cred.umask & 0777);

  const mode_t type = hardlink ? hardlink->type : (mode & S_IFMT);
  const int create_flags = (open_flags & ~O_TRUNC) | O_CREAT | O_EXCL;
  // A new file where nothing is: created in place at once. Only when the name is
  // taken is it looked at (a whiteout is replaced; anything else is EEXIST).
  bool created = false;
  if (S_ISREG(type) && !hardlink && opened) {
    auto f = host_.openat(pu, name.c_str(), create_flags, mode & 07777);
    if (f) {
      *opened = std::move(*f);
      created = true;
    } else if (f.error() != EEXIST) {
      return fail(f.error());
    }
  }
  bool over_whiteout = false;
  if (!created) {
    auto st = host_.fstatat(pu, name.c_str(), AT_SYMLINK_NOFOLLOW);
    if (st) {
      if (!is_whiteout(*st)) return fail(EEXIST);
      over_whiteout = true;
    } else if (st.error() != ENOENT) {
      return fail(st.error());
    }
  }
  const bool opaque = S_ISDIR(type) && (over_whiteout || parent->merged());

  // Where to build: in place, or in the work directory when a whiteout must be
  // replaced atomically (exchanged, then removed).
  const int dfd = over_whiteout ? work_.get() : pu;
  const std::string tmp = over_whiteout ? temp_name() : name;
  const char* t = tmp.c_str();
  Fd fd;
  int rmflag = 0;
  if (created) {
    // done above
  } else if (hardlink) {
    OVL_TRY(host_.linkat(hardlink->upper_fd(), "", dfd, t, AT_EMPTY_PATH));
  } else if (S_ISREG(type) && opened) {
    auto f = host_.openat(dfd, t, create_flags, mode & 07777);
    if (!f) return fail(f.error());
    *opened = std::move(*f);
  } else if (S_ISDIR(type)) {
    OVL_TRY(host_.mkdirat(dfd, t, mode & 07777));
    rmflag = AT_REMOVEDIR;
  } else if (S_ISLNK(type)) {
    OVL_TRY(host_.symlinkat(link_target, dfd, t));
  } else {
    OVL_TRY(host_.mknodat(dfd, t, mode, rdev));
  }

  Status s = [&]() -> Status {
    auto f = host_.openat(dfd, t, kPathFlags);
    if (!f) return fail(f.error());
    fd = std::move(*f);
    // Owned by the caller; the group (and, for a directory, the set-group-ID bit)
    // of a set-group-ID parent is inherited. Built in place by root, the upper's
    // own filesystem already did all that.
    // With xattr_permissions=, the owner and mode of a file or directory go in
    // its override xattr, and the parent's there count.
    const bool override = !hardlink && uses_override(type);
    if (!hardlink && (cred.uid != 0 || cred.gid != 0 || over_whiteout || override)) {
      auto pst = host_.fstatat(pu, "", kStatFd);
      if (!pst) return fail(pst.error());
      if (!cfg_.override_xattr.empty()) (void)read_override(pu, *pst);
      const bool sgid_parent = pst->st_mode & S_ISGID;
      gid_t gid = sgid_parent ? pst->st_gid : cred.gid;
      mode_t perm = mode & 07777;
      if (S_ISDIR(type) && sgid_parent) perm |= S_ISGID;
      if (override) {
        OVL_TRY(write_override(fd.get(), cred.uid, gid, perm));
      } else {
        OVL_TRY(host_.fchown(fd.get(), cred.uid, gid));
        if ((perm & (S_ISUID | S_ISGID)) && !S_ISLNK(type)) {
          // chown cleared them: set again on the permissions the object was made
          // with (its umask, or a default ACL of the parent, applied by the upper).
          auto cst = host_.fstatat(fd.get(), "", kStatFd);
          if (!cst) return fail(cst.error());
          OVL_TRY(host_.fchmod(fd.get(), (cst->st_mode & 01777) | (perm & (S_ISUID | S_ISGID))));
        }
      }
    }
    if (opaque) OVL_TRY(set_ovl_xattr(fd.get(), kXattrOpaque, "y"));
    if (over_whiteout) {
      OVL_TRY(host_.renameat2(work_.get(), t, pu, name.c_str(), RENAME_EXCHANGE));
      (void)host_.unlinkat(work_.get(), t, 0);  // the whiteout, now in work
    }
    return {};
  }();
  if (!s) {
    if (opened) opened->reset();
    (void)host_.unlinkat(dfd, t, rmflag);
    return fail(s.error());
  }

  parent->dir_version.fetch_add(1, std::memory_order_relaxed);
  RealLookup rl;
  auto ust = host_.fstatat(fd.get(), "", kStatFd);
  if (!ust) return fail(ust.error());
  const struct stat attr = *ust;
  rl.type = type;
  rl.ust = *ust;
  rl.upper = std::move(fd);
  rl.opaque = opaque;
  if (hardlink) {
    MutexLock g(hardlink->mu);
    rl.has_origin = hardlink->has_origin;
  }
  if (rl.has_origin) mark_impure(parent);  // a link to a copied-up file moved in
  auto node = node_get(parent, name, std::move(rl), moved_.load(std::memory_order_acquire));
  if (!node) return fail(node.error());
  // A new file has no capabilities (a link shares those of its target).
  if (S_ISREG(type) && !hardlink) (*node)->no_caps.store(true, std::memory_order_release);
  return entry_of(*node, attr);
}

Result<Entry> Overlay::mknod(Node* parent, std::string_view name, mode_t mode, dev_t rdev,
                             const Cred& cred) {
  if (S_ISDIR(mode) || S_ISLNK(mode)) return fail(EINVAL);
  if (S_ISCHR(mode) && rdev == makedev(0, 0)) return fail(EPERM);  // a whiteout
  if ((mode & S_IFMT) == 0) mode |= S_IFREG;
  return create_object(parent, name, mode, rdev, nullptr, nullptr, cred, 0, nullptr);
}

Result<Entry> Overlay::mkdir(Node* parent, std::string_view name, mode_t mode,
                             const Cred& cred) {
  return create_object(parent, name, S_IFDIR | (mode & 07777), 0, nullptr, nullptr, cred, 0,
                       nullptr);
}

Result<Entry> Overlay::symlink(Node* parent, std::string_view name, const char* target,
                               const Cred& cred) {
  return create_object(parent, name, S_IFLNK | 0777, 0, target, nullptr, cred, 0, nullptr);
}

Result<Entry> Overlay::link(Node* node, Node* newparent, std::string_view newname) {
  if (node->is_dir()) return fail(EPERM);
  return create_object(newparent, newname, 0, 0, nullptr, node, Cred{}, 0, nullptr);
}

bool Overlay::has_default_acl(Node* dir, int pu) {
  signed char v = dir->default_acl.load(std::memory_order_relaxed);
  if (v < 0) {
    v = host_.fgetxattr(pu, "system.posix_acl_default", nullptr, 0).has_value() ? 1 : 0;
    dir->default_acl.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

// The last name of upper file `n` is gone (unlink, or a rename over it): unless the
// file is open, what writeback found in it is checked and its detector closed now,
// so that the node's own fd is all that keeps it, until the kernel forgets the
// node (it sends that right after the unlink unless something still holds the
// inode, an O_PATH fd or a cwd, which keeps the space under the kernel's
// overlayfs too).
void Overlay::removed(Node* n) {
  if (S_ISREG(n->type) && wb_) wb_->note_removed(*n);
}

Status Overlay::remove_object(Node* parent, std::string_view name_sv, bool is_dir) {
  OVL_TRY(check_writable());
  auto node = lookup_node(parent, name_sv);
  if (!node) return fail(node.error());
  Node* n = node->get();
  if (is_dir && !n->is_dir()) return fail(ENOTDIR);
  if (!is_dir && n->is_dir()) return fail(EISDIR);
  if (is_dir) {
    auto ents = read_merged(n, true);
    if (!ents) return fail(ents.error());
    if (!ents->empty()) return fail(ENOTEMPTY);
  }
  OVL_TRY(copy_up(parent));
  const std::string name(name_sv);
  const int pu = parent->upper_fd();
  if (pu < 0) return fail(errno);
  const bool need_whiteout = lower_positive(parent, name);
  // Its name goes: what the kernel still holds of it keeps its fd (fds.cc).
  if (n->has_upper()) keep_fds(n);

  if (!n->has_upper()) {
    OVL_TRY(make_whiteout(pu, name.c_str()));
  } else if (need_whiteout && aufs_whiteouts_) {
    // No 0:0 device to swap in: the upper object goes, then its `.wh.` file comes
    // (a crash between shows the lower's again).
    const std::string tmp = temp_name();
    OVL_TRY(host_.renameat2(pu, name.c_str(), work_.get(), tmp.c_str(), RENAME_NOREPLACE));
    if (is_dir) (void)clear_whiteouts(n->upper_fd());
    (void)host_.unlinkat(work_.get(), tmp.c_str(), is_dir ? AT_REMOVEDIR : 0);
    OVL_TRY(make_whiteout(pu, name.c_str()));
  } else if (need_whiteout) {
    // Exchange the upper object with a fresh whiteout, then delete it in work.
    const std::string tmp = temp_name();
    OVL_TRY(make_whiteout(work_.get(), tmp.c_str()));
    if (auto s = host_.renameat2(work_.get(), tmp.c_str(), pu, name.c_str(), RENAME_EXCHANGE);
        !s) {
      (void)host_.unlinkat(work_.get(), tmp.c_str(), 0);
      return s;
    }
    if (is_dir) (void)clear_whiteouts(n->upper_fd());
    (void)host_.unlinkat(work_.get(), tmp.c_str(), is_dir ? AT_REMOVEDIR : 0);
  } else if (!is_dir) {
    OVL_TRY(host_.unlinkat(pu, name.c_str(), 0));
  } else if (auto s = host_.unlinkat(pu, name.c_str(), AT_REMOVEDIR); !s) {
    if (s.error() != ENOTEMPTY && s.error() != EEXIST) return s;
    // Only whiteouts left (a redirected dir): move it out of sight, then clear it.
    const std::string tmp = temp_name();
    OVL_TRY(host_.renameat2(pu, name.c_str(), work_.get(), tmp.c_str(), RENAME_NOREPLACE));
    (void)clear_whiteouts(n->upper_fd());
    (void)host_.unlinkat(work_.get(), tmp.c_str(), AT_REMOVEDIR);
  }

  parent->dir_version.fetch_add(1, std::memory_order_relaxed);
  bool gone = true;
  if (n->has_upper() && !is_dir) {
    auto st = host_.fstatat(n->upper_fd(), "", kStatFd);
    gone = !st || st->st_nlink == 0;
    if (gone) removed(n);
  }
  if (gone) unhash(n);
  return {};
}

Status Overlay::unlink(Node* parent, std::string_view name) {
  return remove_object(parent, name, false);
}

Status Overlay::rmdir(Node* parent, std::string_view name) {
  return remove_object(parent, name, true);
}

Status Overlay::rename(Node* parent, std::string_view name_sv, Node* newparent,
                       std::string_view newname_sv, unsigned flags) {
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return fail(EINVAL);
  if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) return fail(EINVAL);
  OVL_TRY(check_writable());
  OVL_TRY(check_name(newname_sv));
  const bool exchange = flags & RENAME_EXCHANGE;
  auto src = lookup_node(parent, name_sv);
  if (!src) return fail(src.error());
  NodeRef dst;
  if (auto d = lookup_node(newparent, newname_sv); d) {
    dst = std::move(*d);
  } else if (d.error() != ENOENT) {
    return fail(d.error());
  }
  Node* s = src->get();
  const bool samedir = parent == newparent;
  // A directory with lower content moves by redirect, or not at all (checked
  // first, as in the kernel's overlayfs).
  auto needs_redirect = [&](Node* n) { return n->is_dir() && !n->lowers.empty(); };
  if ((needs_redirect(s) || (exchange && dst && needs_redirect(dst.get()))) &&
      !cfg_.redirect_create())
    return fail(EXDEV);
  if (dst) {
    if (dst.get() == s) return {};
    if (flags & RENAME_NOREPLACE) return fail(EEXIST);
    if (!exchange) {
      if (s->is_dir() && !dst->is_dir()) return fail(ENOTDIR);
      if (!s->is_dir() && dst->is_dir()) return fail(EISDIR);
      if (dst->is_dir()) {
        auto ents = read_merged(dst.get(), true);
        if (!ents) return fail(ents.error());
        if (!ents->empty()) return fail(ENOTEMPTY);
      }
    }
  } else if (exchange) {
    return fail(ENOENT);
  }


  OVL_TRY(copy_up(parent));
  OVL_TRY(copy_up(newparent));
  OVL_TRY(copy_up(s));
  if (exchange) OVL_TRY(copy_up(dst.get()));

  // Redirect (or opaque) xattrs go on before the rename, as in the kernel.
  auto prepare_dir = [&](Node* n, Node* to_parent, bool same) -> Status {
    if (!n->is_dir()) return {};
    if (needs_redirect(n)) {
      std::string cur;
      {
        MutexLock g(n->mu);
        cur = n->redirect;
      }
      if (!cur.empty() && (same || cur[0] == '/')) return {};
      std::string r;
      if (same) {
        MutexLock g(n->mu);
        r = n->name;
      } else {
        r = redirect_path(n);
      }
      if (r.size() > kRedirectMax) return fail(EXDEV);
      OVL_TRY(set_ovl_xattr(n->upper_fd(), kXattrRedirect, r));
      MutexLock g(n->mu);
      n->redirect = std::move(r);
      return {};
    }
    bool opq;
    {
      MutexLock g(n->mu);
      opq = n->opaque;
    }
    if (!opq && to_parent->merged()) {
      OVL_TRY(set_ovl_xattr(n->upper_fd(), kXattrOpaque, "y"));
      MutexLock g(n->mu);
      n->opaque = true;
    }
    return {};
  };
  OVL_TRY(prepare_dir(s, newparent, samedir));
  if (exchange) OVL_TRY(prepare_dir(dst.get(), parent, samedir));

  const std::string name(name_sv), newname(newname_sv);
  const int pu = parent->upper_fd(), npu = newparent->upper_fd();
  if (pu < 0 || npu < 0) return fail(errno);
  if (dst && !exchange && dst->has_upper()) keep_fds(dst.get());  // its name goes
  unsigned rflags = exchange ? RENAME_EXCHANGE : 0;
  bool whiteout = false, drop_whiteout = false;
  if (!exchange) {
    if (dst && dst->is_dir() && dst->has_upper()) OVL_TRY(clear_whiteouts(dst->upper_fd()));
    bool onto_whiteout = false;
    if (!dst) {
      auto st = host_.fstatat(npu, newname.c_str(), AT_SYMLINK_NOFOLLOW);
      onto_whiteout = st && is_whiteout(*st);
    }
    // As the kernel's overlayfs: the old name needs a whiteout when a lower layer
    // has it (made by the rename, or the target's whiteout swapped into place); a
    // directory cannot replace a whiteout, so it swaps with it and the whiteout goes.
    if (lower_positive(parent, name)) {
      if (onto_whiteout) rflags |= RENAME_EXCHANGE;
      else whiteout = true;
    } else if (s->is_dir() && onto_whiteout) {
      rflags |= RENAME_EXCHANGE;
      drop_whiteout = true;
    }
  }
  if (whiteout && !aufs_whiteouts_) rflags |= RENAME_WHITEOUT;
  auto r = host_.renameat2(pu, name.c_str(), npu, newname.c_str(), rflags);
  if (r && whiteout && aufs_whiteouts_) {
    OVL_TRY(make_whiteout(pu, name.c_str()));
  } else if (!r && whiteout && r.error() == EINVAL) {
    // An upper without RENAME_WHITEOUT: rename, then whiteout (not atomic).
    OVL_TRY(host_.renameat2(pu, name.c_str(), npu, newname.c_str(), 0));
    OVL_TRY(make_whiteout(pu, name.c_str()));
  } else if (!r) {
    return r;
  }
  if (drop_whiteout) (void)host_.unlinkat(pu, name.c_str(), 0);

  bool moved_origin;
  {
    MutexLock g(s->mu);
    moved_origin = s->has_origin || !s->redirect.empty();
  }
  if (!samedir && moved_origin) mark_impure(newparent);
  if (!samedir && exchange) {
    bool dst_origin;
    {
      MutexLock g(dst->mu);
      dst_origin = dst->has_origin || !dst->redirect.empty();
    }
    if (dst_origin) mark_impure(parent);  // no node lock held: it may find parent's upper again
  }
  {
    MutexLock g(s->mu);
    s->parent = newparent->shared_from_this();
    s->name = newname;
  }
  if (dst) {
    if (exchange) {
      MutexLock g(dst->mu);
      dst->parent = parent->shared_from_this();
      dst->name = name;
    } else {
      bool gone = true;
      if (dst->has_upper() && !dst->is_dir()) {
        auto st = host_.fstatat(dst->upper_fd(), "", kStatFd);
        gone = !st || st->st_nlink == 0;
        if (gone) removed(dst.get());
      }
      if (gone) unhash(dst.get());
    }
  }
  parent->dir_version.fetch_add(1, std::memory_order_relaxed);
  newparent->dir_version.fetch_add(1, std::memory_order_relaxed);
  return {};
}

}  // namespace ovlfs
