// Fds of the nodes' real objects: opened when used, closed when not used lately.
//
// A node keeps no fd it does not need: its upper object is found again by name in
// its parent's upper (which is found the same way, up to the nearest ancestor
// whose upper is open: the root's always is), a lower directory along its path
// from the layer's root, a lower non-dir by name in the lower dir it was found
// in. Every step is one openat of one name with O_NOFOLLOW from a directory of
// the same layer, and what it finds must be the object the node had (st_dev,
// st_ino): a layer's content can neither lead outside the layer nor swap another
// object in. Nodes that got an fd are listed (fd_ring_, oldest first); once the
// fds of nodes pass the bound, the thread that opens one sweeps: a node used
// since the last sweep gets another turn, the others give their fds up (those in
// use by a request stay open until it ends, host/fd_slot.hpp).
#include <fcntl.h>

#include <thread>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {

void Node::set_upper(Fd fd, dev_t at_dev, ino_t at_ino) {
  upper_dev_ = at_dev;
  upper_ino_ = at_ino;
  upper_.put_back(std::make_shared<FdBox>(std::move(fd)));
  has_upper_.store(true, std::memory_order_release);
  ovl.note_opened(*this);
}

int Node::upper_fd() const {
  if (!has_upper()) return -1;
  if (FdRef r = upper_.load()) return used(std::move(r));
  return ovl.reopen_upper(*this);
}

int Node::real_fd() const {
  if (has_upper()) return upper_fd();
  return lowers.empty() ? lower_fd() : ovl.dir_fd(*this, lowers.front());
}

int Node::lower_fd() const {
  if (FdRef r = lower_.load()) return used(std::move(r));
  if (lower_at < 0) {
    errno = ESTALE;  // opened along a path: never closed (lower_fixed_)
    return -1;
  }
  auto f = open_lower(kPathFlags);
  if (!f) {
    errno = f.error();
    return -1;
  }
  return opened(lower_.install(std::move(*f)));
}

Result<Fd> Node::open_lower(int flags) const {
  const int at = ovl.dir_fd(*lower_dir, lower_dir->lowers[static_cast<std::size_t>(lower_at)]);
  if (at < 0) return fail(errno);
  return ovl.host_.openat(at, lower_name.c_str(), flags | O_NOFOLLOW);
}

int Node::opened(FdRef r) const {
  ovl.note_opened(*this);
  return used(std::move(r));
}

int Overlay::dir_fd(const Node& n, const LowerDir& ld) const {
  if (FdRef r = ld.fd.load()) return n.used(std::move(r));
  // Component by component from the layer's root, never through a symlink.
  Fd cur;
  int at = layers_[static_cast<std::size_t>(ld.layer)].root.get();
  std::string_view rest = ld.path;
  do {
    const auto slash = rest.find('/');
    const std::string comp(rest.substr(0, slash));
    auto f = host_.openat(at, comp.empty() ? "." : comp.c_str(),
                          O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (!f) {
      errno = f.error() == ENOENT || f.error() == ENOTDIR || f.error() == ELOOP ? ESTALE
                                                                                  : f.error();
      return -1;
    }
    cur = std::move(*f);
    at = cur.get();
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  } while (!rest.empty());
  auto st = host_.fstatat(cur.get(), "", kStatFd);
  if (!st || st->st_dev != ld.dev || st->st_ino != ld.ino) {
    errno = st ? ESTALE : st.error();
    return -1;
  }
  return n.opened(ld.fd.install(std::move(cur)));
}

int Overlay::reopen_upper(const Node& n) const {
  // A rename moves the object first and the node after: a search by the old name
  // meanwhile fails, and is done again.
  for (int tries = 0; tries < 64; ++tries) {
    if (tries > 0) std::this_thread::yield();
    // Up to the nearest ancestor whose upper is open; chain[i] is named names[i]
    // in chain[i + 1] (chain[0] is n itself, which the caller holds).
    std::vector<NodeRef> chain;
    std::vector<std::string> names;
    Node* cur = const_cast<Node*>(&n);  // only its lock
    int at = -1;
    for (;;) {
      NodeRef parent;
      std::string name;
      {
        MutexLock g(cur->mu);
        parent = cur->parent;
        name = cur->name;
      }
      if (!parent || !parent->has_upper()) {
        errno = ESTALE;
        return -1;
      }
      names.push_back(std::move(name));
      if (FdRef r = parent->upper_.load()) {
        at = parent->used(std::move(r));
        break;
      }
      cur = parent.get();
      chain.push_back(std::move(parent));
    }
    // Down again, each found by name and checked.
    int err = 0;
    for (std::size_t i = names.size(); i-- > 0;) {
      const Node& child = i == 0 ? n : *chain[i - 1];
      auto f = host_.openat(at, names[i].c_str(), kPathFlags);
      auto st = f ? host_.fstatat(f->get(), "", kStatFd) : fail(f.error());
      if (!st) {
        err = st.error() == ENOENT || st.error() == ENOTDIR ? ESTALE : st.error();
        break;
      }
      if (st->st_dev != child.upper_dev_ || st->st_ino != child.upper_ino_) {
        err = ESTALE;
        break;
      }
      at = child.opened(child.upper_.install(std::move(*f)));
    }
    if (err == 0) return at;
    if (err != ESTALE) {
      errno = err;
      return -1;
    }
  }
  errno = ESTALE;
  return -1;
}

void Overlay::note_opened(const Node& n) const {
  if (!n.in_ring_.exchange(true, std::memory_order_acq_rel)) {
    MutexLock g(ring_mu_);
    fd_ring_.push_back(const_cast<Node&>(n).weak_from_this());
    // Entries of nodes the kernel forgot go when the list is mostly those.
    if (fd_ring_.size() > 2 * (FdBox::live() + 1024))
      std::erase_if(fd_ring_, [](const std::weak_ptr<Node>& e) { return e.expired(); });
  }
  if (FdBox::live() > fd_bound_) sweep_fds();
}

void Overlay::keep_fds(Node* n) {
  n->keep_fds.store(true, std::memory_order_seq_cst);
  // Open now, while its name still finds it; a sweep that took it before it saw
  // keep_fds puts it back (sweep_fds).
  (void)n->upper_fd();
}

void Overlay::sweep_fds() const {
  if (sweeping_.exchange(true, std::memory_order_acq_rel)) return;  // another thread is at it
  const std::size_t target = fd_bound_ - fd_bound_ / 8;
  // Let go of when the request ends: the caller may hold locks, and a reference
  // taken here may be the last.
  std::vector<NodeRef> seen;
  {
    MutexLock g(ring_mu_);
    std::size_t turns = fd_ring_.size();
    while (FdBox::live() > target && turns-- > 0 && !fd_ring_.empty()) {
      std::weak_ptr<Node> w = std::move(fd_ring_.front());
      fd_ring_.pop_front();
      NodeRef n = w.lock();
      if (!n) continue;
      if (n.get() == root_.get() || n->keep_fds.load(std::memory_order_seq_cst)) {
        n->in_ring_.store(false, std::memory_order_release);  // keeps its fds for good
      } else if (n->used_.exchange(false, std::memory_order_relaxed)) {
        fd_ring_.push_back(std::move(w));  // another turn
      } else {
        // Off the list first: an fd opened again from now on lists it again.
        n->in_ring_.store(false, std::memory_order_seq_cst);
        if (FdRef u = n->upper_.take(); u && n->keep_fds.load(std::memory_order_seq_cst))
          n->upper_.put_back(std::move(u));
        if (!n->lower_fixed_) (void)n->lower_.take();
        for (const LowerDir& ld : n->lowers) (void)ld.fd.take();
      }
      seen.push_back(std::move(n));
    }
  }
  sweeping_.store(false, std::memory_order_release);
  for (NodeRef& n : seen) FdScope::release_later(std::move(n));
}

}  // namespace ovlfs
