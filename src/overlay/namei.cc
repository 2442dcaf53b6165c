// Lookup: finding a name in the layers, and the node table that gives each overlay
// object one node.
#include <sys/stat.h>

#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {

// The overlay xattrs of a directory, with one listxattr in the common case that it
// has none. A redirect is returned only when followed, and only when valid (EIO
// for a corrupt one). Opaque is any layer format's mark: the mount's own xattr,
// the other overlays' (internal.hpp), or an AUFS ".wh..wh..opq" file in it.
Result<Overlay::DirXattrs> Overlay::dir_xattrs(int fd, bool below) {
  DirXattrs x;
  char list[1024];
  auto n = host_.flistxattr(fd, list, sizeof list);
  bool all = false;  // a list too long to read: ask for each one
  if (!n) {
    if (n.error() == ENOTSUP) return x;
    if (n.error() != ERANGE) return fail(n.error());
    all = true;
  }
  auto listed = [&](std::string_view want) {
    if (all) return true;
    for (std::size_t pos = 0; pos < *n;) {
      std::size_t len = strnlen(list + pos, *n - pos);
      if (want == std::string_view(list + pos, len)) return true;
      pos += len + 1;
    }
    return false;
  };
  if (below) {
    const std::string own = xattr_name(kXattrOpaque);
    for (const char* name : {own.c_str(), kXattrUserOpaque, kXattrFuseOvlOpaque})
      if (!x.opaque && listed(name)) x.opaque = xattr_is_y(fd, name);
    if (!x.opaque) {
      auto st = host_.fstatat(fd, kAufsOpaque, AT_SYMLINK_NOFOLLOW);
      if (st) x.opaque = true;
      else if (st.error() != ENOENT) return fail(st.error());
    }
  }
  x.impure = !all && listed(xattr_name(kXattrImpure));
  if (listed(xattr_name(kXattrOrigin)))
    x.origin = host_.fgetxattr(fd, xattr_name(kXattrOrigin).c_str(), nullptr, 0).has_value();
  if (cfg_.redirect_follow() && listed(xattr_name(kXattrRedirect))) {
    auto r = get_ovl_xattr(fd, kXattrRedirect);
    if (r) {
      if (!redirect_is_valid(*r)) return fail(EIO);
      x.redirect = std::move(*r);
    } else if (r.error() != ENODATA && r.error() != ENOTSUP) {
      return fail(r.error());
    }
  }
  return x;
}

// Marks an upper directory as holding entries with an origin (once). A mark that
// could not be written (no fd for the directory: the fd limit) is tried again by
// the next caller.
void Overlay::mark_impure(Node* dir) {
  if (dir->impure.load(std::memory_order_relaxed) || dir->impure.exchange(true)) return;
  const int fd = dir->upper_fd();
  if (fd < 0) {
    dir->impure.store(false);
    return;
  }
  (void)set_ovl_xattr(fd, kXattrImpure, "y");
}

bool redirect_is_valid(std::string_view r) {
  if (r.empty() || r.size() > kRedirectMax || r.find('\0') != std::string_view::npos)
    return false;
  if (r[0] != '/') return r.find('/') == std::string_view::npos && r != "." && r != "..";
  if (r == "/") return false;  // no name: the kernel's overlayfs refuses it too
  std::string_view rest = r.substr(1);
  while (!rest.empty()) {
    auto slash = rest.find('/');
    std::string_view comp = rest.substr(0, slash);
    if (comp.empty() || comp == "." || comp == ".." || comp.size() > NAME_MAX) return false;
    if (slash == std::string_view::npos) break;
    rest = rest.substr(slash + 1);
    if (rest.empty()) return false;  // trailing slash
  }
  return true;
}

namespace {

// Nodes whose last reference a node being destroyed held (its parent, the dir it
// was found in): released after it, one at a time, not from inside its
// destructor, so that a chain of nodes held only by their children (a deep tree
// forgotten from the leaf up) never recurses deeper than one destructor.
thread_local std::vector<NodeRef> tl_release;
thread_local bool tl_releasing = false;

void release_later(NodeRef&& n) {
  if (!n) return;
  if (tl_releasing) {
    tl_release.push_back(std::move(n));
    return;
  }
  tl_releasing = true;
  n.reset();
  while (!tl_release.empty()) {
    NodeRef next = std::move(tl_release.back());
    tl_release.pop_back();
    next.reset();
  }
  tl_releasing = false;
}

}  // namespace

Node::~Node() {
  ovl.unhash(this);
  release_later(std::move(parent));
  release_later(std::move(lower_dir));
}

void Overlay::unhash(Node* node) {
  MutexLock g(table_mu_);
  if (node->unhashed) return;
  node->unhashed = true;
  auto it = table_.find(node->key);
  if (it != table_.end() && it->second == node) table_.erase(it);
}

void Overlay::rehash(Node* node, const NodeKey& key) {
  MutexLock g(table_mu_);
  moved_.store(moved_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  auto it = table_.find(node->key);
  if (!node->unhashed && it != table_.end() && it->second == node) table_.erase(it);
  node->key = key;
  node->unhashed = false;
  table_[key] = node;
}

Result<Overlay::RealLookup> Overlay::lookup_real(Node* parent, std::string_view name_sv) {
  OVL_TRY(check_name(name_sv));
  const std::string name(name_sv);
  RealLookup rl;

  // The upper layer decides first: a whiteout hides everything, a non-dir or an
  // opaque dir stops the search.
  if (int ufd = parent->upper_fd(); ufd >= 0) {
    // Opened, then stat'ed through the fd: what is stat'ed is what is kept (a
    // removal may swap a whiteout in under the name at any moment).
    auto fd = host_.openat(ufd, name.c_str(), kPathFlags);
    Result<struct stat> st = fd ? host_.fstatat(fd->get(), "", kStatFd) : fail(fd.error());
    if (!st && st.error() == ENOENT) {
      auto wh = aufs_whiteout_at(ufd, name);
      if (!wh) return fail(wh.error());
      if (*wh) return rl;
    }
    if (st) {
      if (is_whiteout(*st)) return rl;
      rl.upper = std::move(*fd);
      rl.ust = *st;
      rl.type = st->st_mode & S_IFMT;
      if (!S_ISDIR(rl.ust.st_mode)) {
        rl.has_origin = host_.getxattrat(ufd, name.c_str(), xattr_name(kXattrOrigin).c_str(),
                                         nullptr, 0).has_value();
        return rl;
      }
      auto x = dir_xattrs(rl.upper.get(), true);
      if (!x) return fail(x.error());
      rl.opaque = x->opaque;
      rl.impure = x->impure;
      if (rl.opaque) return rl;
      rl.has_origin = x->origin;
      rl.redirect = std::move(x->redirect);
    } else if (st.error() != ENOENT) {
      return fail(st.error());
    }
  }

  // The lower layers, top first: by name in the parent's lower dirs, or by the path
  // a redirect names (relative: in the parent's lower dirs; absolute: from each
  // layer's root).
  std::string path = rl.redirect.empty() ? name : rl.redirect;
  bool absolute = !path.empty() && path[0] == '/';
  if (!absolute && parent->lowers.empty()) return rl;
  std::size_t pi = 0;  // next of the parent's lower dirs
  for (int li = has_upper_ ? 1 : 0; li < static_cast<int>(layers_.size()); ++li) {
    int dfd;
    if (absolute) {
      dfd = layers_[li].root.get();
    } else {
      while (pi < parent->lowers.size() && parent->lowers[pi].layer < li) ++pi;
      if (pi == parent->lowers.size()) break;
      if (parent->lowers[pi].layer != li) continue;
      dfd = dir_fd(*parent, parent->lowers[pi]);
      if (dfd < 0) return fail(errno);
    }
    // Walk the path's components (one, unless an absolute redirect).
    std::string_view rest = absolute ? std::string_view(path).substr(1) : std::string_view(path);
    Fd cur;
    std::string lazy_name;  // found, not opened: a name in dfd
    struct stat st {};
    bool found = true, stop = false;
    int at = dfd;
    while (true) {
      auto slash = rest.find('/');
      std::string comp(rest.substr(0, slash));
      bool last = slash == std::string_view::npos;
      auto s = host_.fstatat(at, comp.c_str(), AT_SYMLINK_NOFOLLOW);
      if (!s) {
        if (s.error() != ENOENT && s.error() != ENOTDIR) return fail(s.error());
        found = false;
        if (s.error() == ENOENT) {
          auto wh = aufs_whiteout_at(at, comp);
          if (!wh) return fail(wh.error());
          stop = *wh;
        }
        break;
      }
      if (is_whiteout(*s)) {
        found = false;
        stop = true;
        break;
      }
      if (!last && !S_ISDIR(s->st_mode)) {
        found = false;
        break;
      }
      if (last && !S_ISDIR(s->st_mode) && at == dfd && !absolute) {
        // A non-dir by name in the parent's own lower dir: stat'ed only, opened
        // when first needed (Node::lower_fd).
        lazy_name = std::move(comp);
        st = *s;
        break;
      }
      auto fd = host_.openat(at, comp.c_str(), kPathFlags);
      if (!fd) return fail(fd.error());
      cur = std::move(*fd);
      at = cur.get();
      st = *s;
      if (last) break;
      rest = rest.substr(slash + 1);
    }
    if (stop) break;
    if (!found) continue;
    if (!S_ISDIR(st.st_mode)) {
      // A non-dir ends the search; below a dir it is hidden.
      if (rl.type == 0) {
        rl.type = st.st_mode & S_IFMT;
        if (cur) {
          rl.lower = std::move(cur);
        } else {
          rl.lower_at = static_cast<int>(pi);
          rl.lower_name = std::move(lazy_name);
        }
        rl.lower_layer = li;
        rl.lst = st;
      }
      break;
    }
    if (rl.type != 0 && rl.type != S_IFDIR) break;
    for (const auto& [dev, ino] : traps_)
      if (st.st_dev == dev && st.st_ino == ino) return fail(ELOOP);  // the upper, in a lower
    if (rl.type == 0) {
      rl.type = S_IFDIR;
      rl.lst = st;
      rl.lower_layer = li;
    } else if (rl.lowers.empty()) {
      rl.lst = st;  // the top lower dir under an upper dir: its number, by name
    }
    auto x = dir_xattrs(cur.get(), li + 1 < static_cast<int>(layers_.size()));
    if (!x) return fail(x.error());
    // Found again by this path when its fd was closed (fds.cc).
    std::string lpath = absolute                           ? path.substr(1)
                        : parent->lowers[pi].path.empty() ? path
                                                          : parent->lowers[pi].path + "/" + path;
    rl.lowers.push_back(LowerDir{li, FdSlot(std::move(cur)), std::move(lpath), st.st_dev,
                                 st.st_ino});
    if (x->opaque) break;
    // A lower layer's own redirect (a layer made by an overlay) steers the layers
    // below it.
    if (!x->redirect.empty()) {
      path = std::move(x->redirect);
      absolute = path[0] == '/';
    }
  }
  if (!rl.lowers.empty() && !rl.upper) rl.lower = Fd();  // dirs keep lowers only
  // A merged dir found without an origin (made by hand, or by an older overlay)
  // gets one, and its parent is marked impure, as the kernel's lookup does: then
  // both agree on its inode number.
  if (rl.upper && !rl.lowers.empty() && !rl.has_origin && writable() &&
      set_origin(rl.lowers.front().fd.load()->get(), rl.lowers.front().layer, rl.upper.get())) {
    rl.has_origin = true;
    mark_impure(parent);
  }
  return rl;
}

// A lookup that found an object only in the lower layers races with the copy-up
// of that object: the copy-up moves the node to the key of its upper object
// (rehash), and a lookup that misses the lower key after that would make a second
// node for the same file, which the kernel would then show under that name with
// the lower's data. So a lower-only result is entered only if no node moved since
// the lookup began (`moved`, from moved_generation()); else EAGAIN, and the lookup
// is done again (lookup_retrying).
Result<NodeRef> Overlay::node_get(Node* parent, std::string_view name, RealLookup&& rl,
                                  std::uint64_t moved) {
  NodeKey key;
  const bool dir = S_ISDIR(rl.type);
  // Whether the layers showed an upper object (rl.upper moves into the new node
  // below: ask this, never rl.upper, after that).
  const bool upper = static_cast<bool>(rl.upper);
  if (upper) {
    key = NodeKey{rl.ust.st_dev, rl.ust.st_ino, 0, 0};
  } else {
    key = NodeKey{rl.lst.st_dev, rl.lst.st_ino, reinterpret_cast<std::uintptr_t>(parent), 0};
    if (!dir && rl.lst.st_nlink > 1) key.name_hash = std::hash<std::string_view>()(name);
  }

  // The node already made for that object, if any. Taken out of the table under
  // its lock, used after: its mu ranks below the table's (a copy-up holds mu
  // and rehashes), and if this is its last reference, destroying it takes the
  // table's lock again.
  NodeRef found;
  {
    MutexLock g(table_mu_);
    if (auto it = table_.find(key); it != table_.end())
      found = it->second->weak_from_this().lock();
    else if (!upper && moved_.load(std::memory_order_relaxed) != moved)
      return fail(EAGAIN);
  }
  if (found && found->type == rl.type) {
    NodeRef old_parent;  // let go of after mu: it may be the last reference
    MutexLock ng(found->mu);
    if (!found->has_upper() || !dir) {
      old_parent = std::exchange(found->parent, parent->shared_from_this());
      found->name = name;
    }
    return found;
  }

  std::uint64_t ino;
  if (rl.upper) {
    ino = map_ino(rl.ust.st_dev, rl.ust.st_ino);
    if (rl.has_origin) {
      auto o = origin_of(rl.upper.get());
      if (o && (dir || o->nlink == 1)) ino = map_ino(o->dev, o->ino);
      // A merged directory whose origin cannot be decoded (a user's mount, or a
      // lower changed since) takes the lower found by name, as the kernel does.
      else if (!o && dir && !rl.lowers.empty()) ino = map_ino(rl.lst.st_dev, rl.lst.st_ino);
    }
  } else {
    ino = map_ino(rl.lst.st_dev, rl.lst.st_ino);
  }

  auto node = std::make_shared<Node>(*this, rl.type, ino);
  bool has_fds = !rl.lowers.empty();
  if (rl.lower) {
    // Opened along a path (a redirect): kept.
    node->lower_.put_back(std::make_shared<FdBox>(std::move(rl.lower)));
    node->lower_fixed_ = true;
    has_fds = true;
  } else if (rl.lower_at >= 0) {
    node->lower_at = rl.lower_at;
    node->lower_dir = parent->shared_from_this();  // its lowers[lower_at] holds the name
    node->lower_name = std::move(rl.lower_name);
  }
  node->lower_layer = rl.lower_layer;
  node->lower_nlink = rl.lst.st_nlink;
  node->lowers = std::move(rl.lowers);
  node->parent = parent->shared_from_this();
  node->name = name;
  node->opaque = rl.opaque;
  node->has_origin = rl.has_origin;
  node->redirect = std::move(rl.redirect);
  node->impure.store(rl.impure, std::memory_order_relaxed);
  if (rl.upper) {
    node->set_upper(std::move(rl.upper), rl.ust.st_dev, rl.ust.st_ino);
  } else if (has_fds) {
    note_opened(*node);
  }
  {
    MutexLock g(table_mu_);
    if (!upper && moved_.load(std::memory_order_relaxed) != moved) return fail(EAGAIN);
    // Another lookup of the same object entered its node first: that one is it.
    if (auto it = table_.find(key); it != table_.end() && it->second->type == rl.type)
      if (NodeRef other = it->second->weak_from_this().lock()) found = std::move(other);
    if (!found || found->type != rl.type) {
      node->key = key;
      table_[key] = node.get();
      return node;
    }
  }
  NodeRef old_parent;  // as above
  MutexLock ng(found->mu);
  if (!found->has_upper() || !dir) {
    old_parent = std::exchange(found->parent, parent->shared_from_this());
    found->name = name;
  }
  return found;  // `node`, never entered, goes with no lock held
}

Result<NodeRef> Overlay::lookup_retrying(Node* parent, std::string_view name,
                                         struct stat* st, bool* upper) {
  if (!parent->is_dir()) return fail(ENOTDIR);
  for (int tries = 0;; ++tries) {
    const std::uint64_t moved = moved_.load(std::memory_order_acquire);
    auto rl = lookup_real(parent, name);
    if (!rl) return fail(rl.error());
    if (rl->type == 0) return fail(ENOENT);
    if (st) *st = rl->upper ? rl->ust : rl->lst;
    if (upper) *upper = static_cast<bool>(rl->upper);
    auto node = node_get(parent, name, std::move(*rl), moved);
    // A copy-up somewhere moved a node meanwhile, and each try is a lookup. Under
    // a stream of copy-ups (many processes writing lower files) a few tries can
    // all be overtaken: past 8, each waits for the other threads to run first;
    // only a mount whose copy-ups never pause for 256 tries gets EIO.
    if (node || node.error() != EAGAIN) return node;
    if (tries == 256) return fail(EIO);
    if (tries >= 8) std::this_thread::yield();
  }
}

Result<NodeRef> Overlay::lookup_node(Node* parent, std::string_view name) {
  return lookup_retrying(parent, name, nullptr, nullptr);
}

Result<Entry> Overlay::entry_of(const NodeRef& node) {
  auto st = stat_node(node.get());
  if (!st) return fail(st.error());
  return entry_of(node, *st);
}

// With attributes just read from the node's real object (no stat again).
Entry Overlay::entry_of(const NodeRef& node, struct stat st) {
  st.st_ino = node->ino.load(std::memory_order_relaxed);
  if (node->merged()) st.st_nlink = 1;
  to_client(node.get(), st);
  MutexLock g(node->lookup_mu);
  if (node->nlookup++ == 0) node->pin = node;
  return Entry{node.get(), st};
}

Result<Entry> Overlay::lookup(Node* parent, std::string_view name) {
  struct stat st {};
  bool upper = false;
  auto node = lookup_retrying(parent, name, &st, &upper);
  if (!node) return fail(node.error());
  // The node found may have been copied up since the layers were read: its
  // attributes are the upper's now.
  // A directory's are read again once its readers are noted (stat_node): a
  // change of it since the layers were read is then either seen or told.
  if ((!upper && (*node)->has_upper()) || (*node)->is_dir()) return entry_of(*node);
  return entry_of(*node, st);
}

void Overlay::forget(Node* node, std::uint64_t n) {
  NodeRef drop;
  {
    MutexLock g(node->lookup_mu);
    if (n > node->nlookup) std::abort();  // the kernel never forgets more than it got
    node->nlookup -= n;
    if (node->nlookup == 0) drop = std::move(node->pin);
  }
  // `drop` is released here, outside the lock: the node may be destroyed.
}

// Whether a lower layer shows something under `name` in `parent`: then removing
// the name from the upper needs a whiteout.
bool Overlay::lower_positive(Node* parent, std::string_view name) {
  {
    MutexLock g(parent->mu);
    if (parent->opaque) return false;
  }
  if (parent->lowers.empty() && parent->redirect.empty()) return false;
  // Look below the upper only: ask as if the parent had no upper.
  std::string n(name);
  for (const LowerDir& ld : parent->lowers) {
    const int dfd = dir_fd(*parent, ld);
    if (dfd < 0) return true;  // cannot tell: a whiteout is harmless
    auto st = host_.fstatat(dfd, n.c_str(), AT_SYMLINK_NOFOLLOW);
    if (!st) {
      auto wh = aufs_whiteout_at(dfd, n);
      if (!wh) return true;   // unknown: a whiteout is never wrong
      if (*wh) return false;  // hidden from here down
      continue;
    }
    return !is_whiteout(*st);
  }
  return false;
}

}  // namespace ovlfs
