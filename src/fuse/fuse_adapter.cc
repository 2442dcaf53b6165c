// The FUSE adapter: one function per low-level operation, each a translation of
// the request into an Overlay call and of its result into exactly one reply.
#define FUSE_USE_VERSION 312
#include "fuse/fuse_adapter.hpp"
#include "fuse/loop.hpp"

#include <fuse_lowlevel.h>
#include <cstdarg>
#include <dirent.h>
#include <malloc.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <linux/fs.h>
#include <linux/mount.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <chrono>
#include <iterator>
#include <optional>
#include <memory>
#include <thread>

#include "base/lock.hpp"
#include "fuse/passthrough.hpp"
#include "fuse/sched.hpp"
#include "fuse/uring.hpp"
#include "host/fd_slot.hpp"
#include "host/fd_table.hpp"
#include "ovlfs/ioctl.h"

namespace ovlfs {
namespace {

// Attributes and names change only through this mount, and the kernel drops what
// each change makes stale (the daemon tells it when copy-up changes an inode's
// attributes, and which entries to drop to stay under its fd limit). Changes
// made by hand in the layers while mounted are not supported, as in the kernel's
// overlayfs, so entries and attributes are kept for a day (timeout=, default
// 86400 s): an entry that expired costs a lookup, and an open or permission check
// of a file whose attributes expired a getattr.
double timeout_of(const Overlay& ovl) { return ovl.config().timeout_s; }

// A file passing through for reading and writing can be written through a shared
// mapping: the page faults change the upper file's times with no request to the
// daemon, so while one is open its attributes are not cached (Node::pt_writers).
double attr_timeout_of(const Overlay& ovl, const Node* node) {
  return node->pt_writers.load(std::memory_order_relaxed) ? 0.0 : timeout_of(ovl);
}

// The fd table the daemon starts with (8 KiB of the kernel's memory); it grows
// ahead of need from there (host/fd_table.hpp).
constexpr int kFdTableStart = 1024;

class Reclaimer;

// The state of one mount's FUSE session: the overlay it serves and the transport.
struct Session {
  Overlay& ovl;
  Passthrough pt;
  std::unique_ptr<Uring> ring;  // FUSE over io_uring (uring.hpp); made with the session
  std::atomic<Reclaimer*> reclaimer{nullptr};  // while the loop runs
};

void note_forgotten(fuse_req_t req, std::uint64_t n);

// An open file as the kernel holds it: the overlay's handle and its io mode.
struct OpenFile {
  std::unique_ptr<FileHandle> fh;
  Node* node;
  int backing = -1;  // >= 0: the kernel passes reads and writes through to it
  bool mapped_writer = false;  // counted in node->pt_writers
};

Session& session_of(fuse_req_t req) { return *static_cast<Session*>(fuse_req_userdata(req)); }
Overlay& ovl_of(fuse_req_t req) { return session_of(req).ovl; }

Node* node_of(fuse_req_t req, fuse_ino_t ino) {
  if (ino == FUSE_ROOT_ID) return ovl_of(req).root();
  return reinterpret_cast<Node*>(ino);
}

fuse_ino_t ino_of(Overlay& ovl, Node* n) {
  return n == ovl.root() ? FUSE_ROOT_ID : reinterpret_cast<fuse_ino_t>(n);
}

OpenFile* of_of(fuse_file_info* fi) { return reinterpret_cast<OpenFile*>(fi->fh); }
FileHandle* fh_of(fuse_file_info* fi) { return of_of(fi)->fh.get(); }
DirHandle* dh_of(fuse_file_info* fi) { return reinterpret_cast<DirHandle*>(fi->fh); }

// The caller, with the ids the layers store (uidmapping=, gidmapping=).
Cred cred_of(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  Cred cred = ovl_of(req).host_cred(c->uid, c->gid);
  cred.umask = c->umask;
  cred.pid = c->pid;
  return cred;
}

fuse_entry_param entry_param(Overlay& ovl, const Entry& e) {
  fuse_entry_param p{};
  p.ino = ino_of(ovl, e.node);
  p.attr = e.attr;
  p.attr_timeout = attr_timeout_of(ovl, e.node);
  p.entry_timeout = timeout_of(ovl);
  return p;
}

void reply_entry(fuse_req_t req, const Result<Entry>& e) {
  if (!e) {
    fuse_reply_err(req, e.error());
    return;
  }
  fuse_entry_param p = entry_param(ovl_of(req), *e);
  if (fuse_reply_entry(req, &p) == -ENOENT) ovl_of(req).forget(e->node, 1);  // interrupted
}

void reply_status(fuse_req_t req, const Status& s) { fuse_reply_err(req, s ? 0 : s.error()); }

void reply_attr(fuse_req_t req, const Node* node, const Result<struct stat>& st) {
  if (!st) {
    fuse_reply_err(req, st.error());
    return;
  }
  fuse_reply_attr(req, &*st, attr_timeout_of(ovl_of(req), node));
}

// The requesting task, for the overlay's directory-attribute checks
// (Overlay::dir_changed), while one request is served on this thread.
struct Requester {
  explicit Requester(fuse_req_t req) { Overlay::set_requester(fuse_req_ctx(req)->pid); }
  ~Requester() { Overlay::set_requester(0); }
  Requester(const Requester&) = delete;
  Requester& operator=(const Requester&) = delete;
};

// --- operations -------------------------------------------------------------------

void op_init(void*, fuse_conn_info* conn) {
  auto want = [&](unsigned cap) {
    if (conn->capable & cap) conn->want |= cap;
  };
  want(FUSE_CAP_ATOMIC_O_TRUNC);
  want(FUSE_CAP_PARALLEL_DIROPS);
  want(FUSE_CAP_READDIRPLUS);
  want(FUSE_CAP_READDIRPLUS_AUTO);
  want(FUSE_CAP_CACHE_SYMLINKS);
  want(FUSE_CAP_IOCTL_DIR);
  // The caller's umask comes with each create, for the daemon to apply where no
  // default ACL applies instead (Cred::umask), as the kernel's overlayfs lets the
  // upper's filesystem do.
  want(FUSE_CAP_DONT_MASK);
  // Writes must fail at once when the upper refuses them (ENOSPC, EIO): no
  // writeback cache in the kernel between the writer and the upper.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  // A direct write of a file in cached mode is synchronous in the kernel, so
  // that the kernel drops the file's page cache over the written range once the
  // daemon has written it (generic_file_direct_write). With asynchronous direct
  // I/O the kernel's FUSE completes an AIO write without that second
  // invalidation, and a buffered read racing it keeps the data from before the
  // write in the page cache. Passthrough opens do not reach this path.
  conn->want &= ~FUSE_CAP_ASYNC_DIO;
  conn->max_write = 1 << 20;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Requester who(req);
  Overlay& ovl = ovl_of(req);
  auto e = ovl.lookup(node_of(req, parent), name);
  if (!e && e.error() == ENOENT) {
    fuse_entry_param p{};  // a negative entry, cached like a positive one
    p.entry_timeout = timeout_of(ovl);
    fuse_reply_entry(req, &p);
    return;
  }
  reply_entry(req, e);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  ovl_of(req).forget(node_of(req, ino), nlookup);
  note_forgotten(req, 1);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i)
    ovl_of(req).forget(node_of(req, forgets[i].ino), forgets[i].nlookup);
  note_forgotten(req, count);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Requester who(req);
  Node* node = node_of(req, ino);
  reply_attr(req, node, ovl_of(req).getattr(node));
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                fuse_file_info* fi) {
  SetAttr sa;
  sa.st = *attr;
  sa.mode = to_set & FUSE_SET_ATTR_MODE;
  sa.uid = to_set & FUSE_SET_ATTR_UID;
  sa.gid = to_set & FUSE_SET_ATTR_GID;
  sa.size = to_set & FUSE_SET_ATTR_SIZE;
  sa.atime = to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW);
  sa.mtime = to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW);
  sa.atime_now = to_set & FUSE_SET_ATTR_ATIME_NOW;
  sa.mtime_now = to_set & FUSE_SET_ATTR_MTIME_NOW;
  sa.ctime = to_set & FUSE_SET_ATTR_CTIME;
  Requester who(req);
  Node* node = node_of(req, ino);
  reply_attr(req, node, ovl_of(req).setattr(node, sa, fi ? fh_of(fi) : nullptr, cred_of(req)));
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  auto r = ovl_of(req).readlink(node_of(req, ino));
  if (!r) {
    fuse_reply_err(req, r.error());
    return;
  }
  fuse_reply_readlink(req, r->c_str());
}

// The operations that add or remove names: each tells the overlay which
// directories it changed (Overlay::dir_changed) before it replies, while the
// kernel still holds them; the kernel drops their attributes itself only when
// the operation succeeds.
// Runs `change` (a name added or removed in `dir`) and tells the overlay.
template <class F>
auto change_dir(fuse_req_t req, Node* dir, F change) {
  Overlay& ovl = ovl_of(req);
  auto r = change(ovl);
  ovl.dir_changed(dir, r.has_value());
  return r;
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Requester who(req);
  Node* dir = node_of(req, parent);
  reply_entry(req, change_dir(req, dir, [&](Overlay& o) {
                return o.mknod(dir, name, mode, rdev, cred_of(req));
              }));
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Requester who(req);
  Node* dir = node_of(req, parent);
  reply_entry(req, change_dir(req, dir, [&](Overlay& o) {
                return o.mkdir(dir, name, mode, cred_of(req));
              }));
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  Requester who(req);
  Node* dir = node_of(req, parent);
  reply_entry(req, change_dir(req, dir, [&](Overlay& o) {
                return o.symlink(dir, name, target, cred_of(req));
              }));
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  Requester who(req);
  Node* dir = node_of(req, newparent);
  reply_entry(req, change_dir(req, dir, [&](Overlay& o) {
                return o.link(node_of(req, ino), dir, newname);
              }));
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Requester who(req);
  Node* dir = node_of(req, parent);
  reply_status(req, change_dir(req, dir, [&](Overlay& o) { return o.unlink(dir, name); }));
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Requester who(req);
  Node* dir = node_of(req, parent);
  reply_status(req, change_dir(req, dir, [&](Overlay& o) { return o.rmdir(dir, name); }));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned int flags) {
  Requester who(req);
  Overlay& ovl = ovl_of(req);
  Node* from = node_of(req, parent);
  Node* to = node_of(req, newparent);
  Status s = ovl.rename(from, name, to, newname, flags);
  ovl.dir_changed(from, s.has_value());
  if (to != from) ovl.dir_changed(to, s.has_value());
  reply_status(req, s);
}

// Hands an opened file to the kernel: passthrough to the upper copy when the
// kernel's io-mode rules allow it (see passthrough.hpp), else cached.
// `flags`: the open's; one for reading and writing that passes through is counted
// in node->pt_writers, and the kernel forgets the attributes it has of the node
// when it becomes the first (before the reply: a getattr from then on is not cached).
std::unique_ptr<OpenFile> open_file(fuse_req_t req, Node* node, std::unique_ptr<FileHandle> fh,
                                    int flags) {
  Session& s = session_of(req);
  auto of = std::make_unique<OpenFile>();
  of->node = node;
  of->fh = std::move(fh);
  bool eligible = s.ovl.passthrough_allowed() && S_ISREG(node->type) && node->has_upper() &&
                  !of->fh->watch_setid;  // its writes must reach the daemon
  Fd opened;  // a backing fd of its own, if one was needed: the kernel keeps its file
  of->backing = s.pt.begin_open(node, eligible,
                                [&] { return s.ovl.open_backing(node, of->fh.get(), opened); });
  if (of->backing >= 0 && (flags & O_ACCMODE) == O_RDWR) {
    of->mapped_writer = true;
    if (node->pt_writers.fetch_add(1, std::memory_order_relaxed) == 0) s.ovl.attrs_changed(node);
  }
  return of;
}

void close_file(fuse_req_t req, std::unique_ptr<OpenFile> of) {
  if (of->mapped_writer) of->node->pt_writers.fetch_sub(1, std::memory_order_relaxed);
  session_of(req).pt.end_open(of->node, of->backing);
  (void)ovl_of(req).release(of->fh.get());
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Requester who(req);
  Node* node = node_of(req, ino);
  auto fh = ovl_of(req).open(node, fi->flags, cred_of(req));
  if (!fh) {
    fuse_reply_err(req, fh.error());
    return;
  }
  auto of = open_file(req, node, std::move(*fh), fi->flags);
  // keep_cache: contents change only through this mount. Not under strictatime:
  // a read the page cache answers never reaches the upper file, whose atime it
  // should move (each open then starts from the upper file).
  const bool keep = ovl_of(req).config().atime != Config::Atime::strictatime;
  if (session_of(req).pt.reply_open(req, reinterpret_cast<uint64_t>(of.get()), keep,
                                    of->backing) == -ENOENT) {
    close_file(req, std::move(of));  // interrupted
    return;
  }
  (void)of.release();  // now owned by the kernel's open file; freed in op_release
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  Requester who(req);
  Overlay& ovl = ovl_of(req);
  Node* dir = node_of(req, parent);
  auto r = ovl.create(dir, name, mode, fi->flags, cred_of(req));
  ovl.dir_changed(dir, r.has_value());
  if (!r) {
    fuse_reply_err(req, r.error());
    return;
  }
  auto of = open_file(req, r->first.node, std::move(r->second), fi->flags);
  fuse_entry_param p = entry_param(ovl, r->first);  // after: its attr timeout
  if (session_of(req).pt.reply_create(req, p, reinterpret_cast<uint64_t>(of.get()), true,
                                      of->backing) == -ENOENT) {
    close_file(req, std::move(of));
    ovl.forget(r->first.node, 1);
    return;
  }
  (void)of.release();
}

// A page-aligned buffer of this thread's, of `size` bytes at least (nullptr when
// out of memory): a file opened with O_DIRECT is read and written with O_DIRECT on
// its real file too, which refuses an unaligned buffer (EINVAL).
char* aligned_buffer(size_t size) {
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<char, Free> buf;
  thread_local size_t cap = 0;
  if (cap < size) {
    constexpr size_t kPage = 4096;
    const size_t want = (size + kPage - 1) / kPage * kPage;
    buf.reset(static_cast<char*>(std::aligned_alloc(kPage, want)));
    cap = buf ? want : 0;
  }
  return buf.get();
}

void op_read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  char* buf = aligned_buffer(size);
  if (!buf) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  auto n = ovl_of(req).read(fh_of(fi), buf, size, off);
  if (!n) {
    fuse_reply_err(req, n.error());
    return;
  }
  fuse_reply_buf(req, buf, *n);
}

void op_write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
              fuse_file_info* fi) {
  FileHandle* fh = fh_of(fi);
  if ((fh->flags & O_DIRECT) && !fi->writepage &&
      reinterpret_cast<std::uintptr_t>(buf) % 4096 != 0) {
    // The data sits after the request's header: copied to an aligned buffer.
    char* copy = aligned_buffer(size);
    if (!copy) {
      fuse_reply_err(req, ENOMEM);
      return;
    }
    std::memcpy(copy, buf, size);
    buf = copy;
  }
  auto n = ovl_of(req).write(fh, buf, size, off, fh->watch_setid ? cred_of(req) : Cred{},
                             fi->writepage);
  if (!n) {
    fuse_reply_err(req, n.error());
    return;
  }
  fuse_reply_write(req, *n);
}


void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  close_file(req, std::unique_ptr<OpenFile>(of_of(fi)));
  fuse_reply_err(req, 0);
}

void op_fsync(fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
  reply_status(req, ovl_of(req).fsync(fh_of(fi), datasync != 0));
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto dh = ovl_of(req).opendir(node_of(req, ino));
  if (!dh) {
    fuse_reply_err(req, dh.error());
    return;
  }
  ovl_of(req).wb_opendir(dh->get());  // its own writeback-error cursors
  fi->fh = reinterpret_cast<uint64_t>(dh->get());
  if (fuse_reply_open(req, fi) == -ENOENT) return;  // unique_ptr frees it
  dh->release();
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                bool plus) {
  Requester who(req);
  Overlay& ovl = ovl_of(req);
  auto buf = std::make_unique_for_overwrite<char[]>(size);
  size_t used = 0;
  Node* dir = node_of(req, ino);
  auto s = ovl.readdir(dh_of(fi), off, [&](const DirEntry& d, off_t next) {
    struct stat st {};
    st.st_ino = d.ino;
    st.st_mode = static_cast<mode_t>(DTTOIF(d.type));
    size_t len;
    if (!plus) {
      len = fuse_add_direntry(req, buf.get() + used, size - used, d.name.c_str(), &st, next);
      if (len > size - used) return false;
      used += len;
      return true;
    }
    fuse_entry_param p{};
    Node* looked_up = nullptr;
    if (d.name != "." && d.name != "..") {
      // The fds the lookup took close when it is done, not with the whole listing
      // (a page of entries would hold one or more each: host/fd_slot.hpp).
      const std::size_t fds = FdScope::mark();
      if (auto e = ovl.lookup(dir, d.name); e) {
        p = entry_param(ovl, *e);
        looked_up = e->node;
      }
      FdScope::release_to(fds);
    }
    if (!looked_up) p.attr = st;
    len = fuse_add_direntry_plus(req, buf.get() + used, size - used, d.name.c_str(), &p, next);
    if (len > size - used) {
      if (looked_up) ovl.forget(looked_up, 1);  // not handed to the kernel after all
      return false;
    }
    used += len;
    return true;
  });
  if (!s) {
    fuse_reply_err(req, s.error());
    return;
  }
  fuse_reply_buf(req, buf.get(), used);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  do_readdir(req, ino, size, off, fi, false);
}

void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    fuse_file_info* fi) {
  do_readdir(req, ino, size, off, fi, true);
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  delete dh_of(fi);
  fuse_reply_err(req, 0);
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
  reply_status(req, ovl_of(req).wb_fsyncdir(dh_of(fi), datasync != 0));
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  auto st = ovl_of(req).statfs();
  if (!st) {
    fuse_reply_err(req, st.error());
    return;
  }
  fuse_reply_statfs(req, &*st);
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value,
                 size_t size, int flags) {
  Requester who(req);
  reply_status(req, ovl_of(req).setxattr(node_of(req, ino), name, value, size, flags,
                                         cred_of(req)));
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  std::unique_ptr<char[]> buf(size ? new char[size] : nullptr);
  auto n = ovl_of(req).getxattr(node_of(req, ino), name, buf.get(), size);
  if (!n) fuse_reply_err(req, n.error());
  else if (size == 0) fuse_reply_xattr(req, *n);
  else fuse_reply_buf(req, buf.get(), *n);
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  std::unique_ptr<char[]> buf(size ? new char[size] : nullptr);
  auto n = ovl_of(req).listxattr(node_of(req, ino), buf.get(), size, cred_of(req));
  if (!n) fuse_reply_err(req, n.error());
  else if (size == 0) fuse_reply_xattr(req, *n);
  else fuse_reply_buf(req, buf.get(), *n);
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  Requester who(req);
  reply_status(req, ovl_of(req).removexattr(node_of(req, ino), name));
}

void op_fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len,
                  fuse_file_info* fi) {
  reply_status(req, ovl_of(req).fallocate(fh_of(fi), mode, off, len, cred_of(req)));
}

void op_lseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  auto r = ovl_of(req).lseek(fh_of(fi), off, whence);
  if (!r) fuse_reply_err(req, r.error());
  else fuse_reply_lseek(req, *r);
}

// The ovlfs ioctls (include/ovlfs/ioctl.h), on any file or directory of the mount.
// Restricted FUSE ioctls: the kernel copies _IOC_SIZE(cmd) bytes out for _IOR.
void op_ioctl(fuse_req_t req, fuse_ino_t, unsigned int cmd, void*, fuse_file_info* fi,
              unsigned flags, const void*, size_t, size_t out_bufsz) {
  Overlay& ovl = ovl_of(req);
  if (flags & FUSE_IOCTL_COMPAT) {
    fuse_reply_err(req, ENOTTY);
    return;
  }
  WbOpen* ofd = (flags & FUSE_IOCTL_DIR) ? dh_of(fi)->wb.get() : fh_of(fi)->wb.get();
  switch (cmd) {
    case OVLFS_IOC_SYNCFS: {
      Status s = ovl.syncfs(ofd);
      if (!s) fuse_reply_err(req, s.error());
      else fuse_reply_ioctl(req, 0, nullptr, 0);
      return;
    }
    case OVLFS_IOC_STATUS: {
      if (out_bufsz < sizeof(ovlfs_status)) {
        fuse_reply_err(req, EINVAL);
        return;
      }
      ovlfs_status st{};
      ovl.wb_status(st);
      st.pid = static_cast<__s32>(::getpid());
      if (session_of(req).ring->active()) st.flags |= OVLFS_STATUS_IO_URING;
      if (session_of(req).pt.active()) st.flags |= OVLFS_STATUS_PASSTHROUGH;
      if (sched_idle_allowed()) st.flags |= OVLFS_STATUS_SCHED_IDLE_ALLOWED;
      if (sched_idle_now()) st.flags |= OVLFS_STATUS_SCHED_IDLE;
      fuse_reply_ioctl(req, 0, &st, sizeof st);
      return;
    }
    default:
      fuse_reply_err(req, ENOTTY);
  }
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.readlink = op_readlink;
  ops.mknod = op_mknod;
  ops.mkdir = op_mkdir;
  ops.symlink = op_symlink;
  ops.link = op_link;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.rename = op_rename;
  ops.open = op_open;
  ops.create = op_create;
  ops.read = op_read;
  ops.write = op_write;
  // No flush: the kernel then sends none (close(2) returns 0, as the contract says),
  // saving a round trip per close.
  ops.release = op_release;
  ops.fsync = op_fsync;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.readdirplus = op_readdirplus;
  ops.releasedir = op_releasedir;
  ops.fsyncdir = op_fsyncdir;
  ops.statfs = op_statfs;
  ops.setxattr = op_setxattr;
  ops.getxattr = op_getxattr;
  ops.listxattr = op_listxattr;
  ops.removexattr = op_removexattr;
  ops.fallocate = op_fallocate;
  ops.lseek = op_lseek;
  ops.ioctl = op_ioctl;
  return ops;
}();

// The adapter's housekeeping thread, never inside a request.
//
// Fds are not its concern: nodes keep fds only while in use, a sixteenth of the
// process's limit in all, 8,192 at most (overlay/fds.cc), whatever the kernel
// holds; the writeback checks of files written and closed an eighth, a quarter
// when their thread falls behind (overlay/wb.hpp). The rest is for open files
// (and the checks of those open for writing).
//
// Memory. What the daemon frees stays in glibc's heaps: only free memory at the
// top of the main heap goes back to the system by itself, and a heap of another
// arena shrinks only from its top too, so the nodes of one big walk, once the
// kernel forgets them, leave the heaps full of free holes that the next walk (on
// other threads, in other arenas) does not reuse. The serving threads therefore
// share few arenas (main.cc), and once the kernel has forgotten nodes
// (kTrimForgets since the last look: memory pressure, drop_caches) and pauses
// (kTrimQuiet without a FORGET), this thread looks at the heaps (mallinfo2, at
// most once per kTrimEvery) and, when they hold kTrimFree or more of free memory,
// calls malloc_trim(0), which gives every free page of every arena back
// (madvise): about 5 ms for the 50 MB of 100,000 nodes. Both hold each arena's
// lock while they walk it, which is why they run here and never in a request.
class Reclaimer {
 public:
  static constexpr std::uint64_t kTrimForgets = 256;
  static constexpr auto kTrimQuiet = std::chrono::milliseconds(100);
  static constexpr auto kTrimEvery = std::chrono::seconds(1);
  static constexpr auto kTrimWait = std::chrono::seconds(2);
  static constexpr std::size_t kTrimFree = 1 << 20;

  explicit Reclaimer(Overlay& ovl) {
    struct rlimit rl;
    std::size_t limit = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    ovl.set_node_fd_bound(std::clamp<std::size_t>(limit / 16, 16, 8192));
    ovl.set_fd_budget(std::max<std::size_t>(limit / 8, 16));
    thread_ = std::thread([this] { run(); });
  }
  Reclaimer(const Reclaimer&) = delete;
  Reclaimer& operator=(const Reclaimer&) = delete;
  ~Reclaimer() {
    {
      MutexLock g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // From a request: the kernel forgot n nodes (FORGET, BATCH_FORGET).
  void forgotten(std::uint64_t n) {
    const std::uint64_t now = forgets_.fetch_add(n, std::memory_order_relaxed) + n;
    if (now - trimmed_at_.load(std::memory_order_relaxed) >= kTrimForgets) wake(trim_);  // cheap when pending
  }

 private:
  // From a request. Never waits for the work itself: mu_ is held only around the
  // thread's look at its flags, so taking it here just orders this wake-up after
  // that look.
  void wake(std::atomic<bool>& flag) {
    if (flag.exchange(true, std::memory_order_acq_rel)) return;
    { MutexLock g(mu_); }
    cv_.notify_one();
  }

  void run() {
    using Clock = std::chrono::steady_clock;
    UniqueLock lk(mu_);
    std::optional<Clock::time_point> trim_due;  // a trim is due: look at the heaps then
    Clock::time_point trim_began{};
    std::uint64_t trim_seen = 0;
    for (;;) {
      // A due trim at trim_due; else this thread sleeps until woken.
      std::optional<Clock::time_point> until;
      if (!trim_due && trim_.load(std::memory_order_acquire)) {
        trim_began = Clock::now();
        trim_seen = forgets_.load(std::memory_order_relaxed);
        trim_due = std::max(trim_began + kTrimQuiet, last_look_ + kTrimEvery);
      }
      if (trim_due && (!until || *trim_due < *until)) until = trim_due;
      auto woken = [&] {
        return stop_ || (!trim_due && trim_.load(std::memory_order_acquire));
      };
      if (until)
        cv_.wait_until(lk, *until, woken);
      else
        cv_.wait(lk, woken);
      if (stop_) break;


      if (!trim_due || Clock::now() < *trim_due) continue;
      // Trim once the forgetting pauses for kTrimQuiet (or after kTrimWait: it
      // may trickle on), if the heaps hold kTrimFree of free memory.
      const auto now = Clock::now();
      if (const std::uint64_t f = forgets_.load(std::memory_order_relaxed);
          f != trim_seen && now - trim_began < kTrimWait) {
        trim_seen = f;
        trim_due = now + kTrimQuiet;
        continue;
      }
      trim_due.reset();
      // Cleared before the count is read: a FORGET counted after this read finds
      // the flag clear and wakes this thread again.
      trim_.store(false, std::memory_order_seq_cst);
      trimmed_at_.store(forgets_.load(std::memory_order_seq_cst), std::memory_order_relaxed);
      last_look_ = now;
      lk.unlock();
      if (::mallinfo2().fordblks >= kTrimFree) (void)::malloc_trim(0);
      lk.lock();
    }
  }

  Mutex<LockRank::kReclaim> mu_;
  CondVar cv_;
  bool stop_ = false;                 // GUARDED_BY(mu_)
  std::atomic<bool> trim_{false};     // a memory trim is due
  std::atomic<std::uint64_t> forgets_{0};     // nodes the kernel forgot
  std::atomic<std::uint64_t> trimmed_at_{0};  // forgets_ at the last look at the heaps
  std::chrono::steady_clock::time_point last_look_{};  // at the heaps; this thread's only
  std::thread thread_;
};

void note_forgotten(fuse_req_t req, std::uint64_t n) {
  if (Reclaimer* r = session_of(req).reclaimer.load(std::memory_order_acquire)) r->forgotten(n);
}

// SIGHUP, SIGINT and SIGTERM end the session, as libfuse's handlers do, and also
// wake the loop's thread (loop.hpp), which sleeps without a timeout; SIGPIPE is
// ignored. SA_RESTART: a thread that takes one (any thread may) sees no EINTR.
std::atomic<fuse_session*> g_signal_session{nullptr};
constexpr int kEndSignals[] = {SIGHUP, SIGINT, SIGTERM};

void on_end_signal(int) {
  if (fuse_session* se = g_signal_session.load()) fuse_session_exit(se);
  loop_wake();
}

class SignalHandlers {
 public:
  explicit SignalHandlers(fuse_session* se) {
    g_signal_session.store(se);
    struct sigaction sa {};
    sa.sa_handler = on_end_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (std::size_t i = 0; i < std::size(kEndSignals); ++i)
      ok_ = ::sigaction(kEndSignals[i], &sa, &old_[i]) == 0 && ok_;
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    ok_ = ::sigaction(SIGPIPE, &ign, &old_pipe_) == 0 && ok_;
  }
  ~SignalHandlers() {
    for (std::size_t i = 0; i < std::size(kEndSignals); ++i)
      (void)::sigaction(kEndSignals[i], &old_[i], nullptr);
    (void)::sigaction(SIGPIPE, &old_pipe_, nullptr);
    g_signal_session.store(nullptr);
  }
  SignalHandlers(const SignalHandlers&) = delete;
  SignalHandlers& operator=(const SignalHandlers&) = delete;
  bool ok() const { return ok_; }

 private:
  bool ok_ = true;
  struct sigaction old_[std::size(kEndSignals)] {};
  struct sigaction old_pipe_ {};
};

// Runs f (which starts threads) with every signal blocked, so that the threads
// it starts take none: the loop's thread takes them.
template <class F>
decltype(auto) without_signals(F&& f) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  struct Restore {
    sigset_t* old;
    ~Restore() { pthread_sigmask(SIG_SETMASK, old, nullptr); }
  } restore{&old};
  return std::forward<F>(f)();
}

// The mount flags libfuse 3.14 cannot pass (nodiratime, nosymfollow), set on the
// new mount; "" or why not (then nothing is served: a mount that should not follow
// symlinks must not appear to work).
std::string set_mount_attrs(const Config& cfg, const std::string& mountpoint) {
  struct mount_attr attr {};
  if (cfg.nodiratime) attr.attr_set |= MOUNT_ATTR_NODIRATIME;
  if (cfg.nosymfollow) attr.attr_set |= MOUNT_ATTR_NOSYMFOLLOW;
  if (!attr.attr_set) return "";
  if (::syscall(SYS_mount_setattr, AT_FDCWD, mountpoint.c_str(), 0, &attr, sizeof attr) == 0)
    return "";
  return std::string("cannot set ") + (cfg.nosymfollow ? "nosymfollow" : "nodiratime") +
         " on '" + mountpoint + "': " + std::strerror(errno);
}

// libfuse's messages, to stderr as libfuse writes them, but one: it reports a
// failed read of /dev/fuse, and an aborted connection (ECONNABORTED, as a lazy
// unmount can end one) is the end of the session to the request loop, not an
// error (loop.cc).
void log_libfuse(enum fuse_log_level, const char* fmt, va_list ap) {
  char line[1024];
  std::vsnprintf(line, sizeof line, fmt, ap);
  if (std::strstr(line, "reading device") && std::strstr(line, std::strerror(ECONNABORTED)))
    return;
  std::fputs(line, stderr);
}

// fusermount3 takes allow_other from a user only with `user_allow_other` in
// /etc/fuse.conf.
bool users_may_allow_other() {
  std::ifstream conf("/etc/fuse.conf");
  for (std::string line; std::getline(conf, line);) {
    const auto b = line.find_first_not_of(" \t");
    if (b != std::string::npos && line.compare(b, 16, "user_allow_other") == 0) return true;
  }
  return false;
}

}  // namespace

int fuse_serve(Overlay& ovl, const ServeOptions& opts) {
  std::string o = "fsname=" + opts.source + ",subtype=ovlfs,default_permissions";
  // Every user reaches the mount, as with the kernel's overlayfs; a user's mount
  // (through fusermount3) only where /etc/fuse.conf lets users allow that.
  if (::geteuid() == 0 || users_may_allow_other()) o += ",allow_other";
  // Device nodes and set-user-ID files of the layers work as in the kernel's
  // overlayfs when root mounts; nodev/nosuid in the options come later and win.
  if (::geteuid() == 0) o += ",dev,suid";
  if (!ovl.writable()) o += ",ro";
  for (const std::string& g : ovl.config().fuse_opts) o += "," + g;
  std::vector<std::string> args = {"ovlfs", "-o", o};
  if (opts.debug) args.emplace_back("-d");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  fuse_args fargs = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  fuse_set_log_func(log_libfuse);
  Session session{ovl, {}, nullptr};
  fuse_session* se = fuse_session_new(&fargs, &kOps, sizeof kOps, &session);
  if (!se) {
    std::fprintf(stderr, "ovlfs: cannot create the FUSE session\n");
    ovl.wb_finish();  // never served: the volatile record ends clean
    return 1;
  }
  session.ring = std::make_unique<Uring>(se, ovl.config().io_uring, opts.mountpoint);
  if (ovl.config().io_uring) {
    // The kernel offers io_uring at INIT, which the mount sends.
    if (std::string note = Uring::enable_in_kernel(); !note.empty())
      std::fprintf(stderr, "ovlfs: %s\n", note.c_str());
  }
  ovl.set_attr_changed([se, &ovl](Node* n) {
    (void)fuse_lowlevel_notify_inval_inode(se, ino_of(ovl, n), -1, 0);
  });
  int status = 1;
  std::optional<SignalHandlers> signals(std::in_place, se);
  if (!signals->ok()) {
    std::fprintf(stderr, "ovlfs: cannot install signal handlers\n");
  } else if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0) {
    std::fprintf(stderr, "ovlfs: cannot mount on '%s'\n", opts.mountpoint.c_str());
  } else if (std::string why = set_mount_attrs(ovl.config(), opts.mountpoint); !why.empty()) {
    std::fprintf(stderr, "ovlfs: %s\n", why.c_str());
    fuse_session_unmount(se);
  } else {
    static const fuse_custom_io io = {
        [](int fd, iovec* iov, int n, void* ud) {
          auto* s = static_cast<Session*>(ud);
          if (auto r = s->ring->reply(iov, n)) return *r;  // answers a request from a ring
          return s->pt.writev(fd, iov, n);
        },
        [](int fd, void* buf, size_t len, void* ud) {
          // The loop may cancel a reader in read(2) (loop.hpp): never inside
          // sched_tick, which may hold a lock and read /proc.
          int old;
          pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
          sched_tick();  // sched.hpp
          pthread_setcancelstate(old, nullptr);
          return static_cast<Session*>(ud)->pt.read(fd, buf, len);
        },
        nullptr, nullptr};
    session.pt.set_init_hook(session.ring.get());
    session.pt.install(se, io, ovl.passthrough_allowed());
    fuse_daemonize(opts.foreground ? 1 : 0);
    // After the fork (the session led is the daemon's own), before any thread.
    const SchedChoice sched = choose_sched(ovl.config().sched, read_sched_facts());
    if (std::string e = allow_sched_idle(sched); !e.empty())
      std::fprintf(stderr, "ovlfs: threads stay as started: %s\n", e.c_str());
    else if (opts.debug)
      std::fprintf(stderr, "ovlfs: SCHED_IDLE while CPUs idle: %s (%s)\n", sched.idle ? "yes" : "no",
                   sched.why.c_str());
    fd_table::reserve(kFdTableStart);  // still one thread: no grace period to wait for
    without_signals([&] { ovl.wb_start(); });  // a thread: only after fuse_daemonize's fork
    std::unique_ptr<Reclaimer> reclaim;  // a thread too
    without_signals([&] { reclaim = std::make_unique<Reclaimer>(ovl); });
    session.reclaimer.store(reclaim.get(), std::memory_order_release);
    status = run_loop(se, 64, 8) == 0 ? 0 : 1;  // loop.hpp
    // The rings' threads end however the transport ended (uring.hpp), and the
    // reclaimer's thread with them: nothing serves a request or writes a
    // notification to the session's fd after this, so closing it races with
    // nothing (and its number is never reused under a writer).
    session.ring->stop();
    session.reclaimer.store(nullptr, std::memory_order_release);
    reclaim.reset();
    // Unmounted already, unless a signal ended the session (then lazily here).
    fuse_session_unmount(se);
  }
  // Served or not: writes the dirty upper data back and records how the mount
  // ended (a volatile workdir is reusable only after a clean end).
  ovl.wb_finish();
  signals.reset();  // before the session they name goes
  fuse_session_destroy(se);
  return status;
}

}  // namespace ovlfs
