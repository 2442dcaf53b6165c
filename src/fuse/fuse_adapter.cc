// The FUSE adapter: one function per low-level operation, each a translation of
// the request into an Overlay call and of its result into exactly one reply.
#define FUSE_USE_VERSION 312
#include "fuse/fuse_adapter.hpp"
#include "fuse/loop.hpp"

#include <fuse_lowlevel.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "fuse/passthrough.hpp"
#include "fuse/sched.hpp"
#include "fuse/uring.hpp"
#include "host/fd_table.hpp"
#include "ovlfs/ioctl.h"

namespace ovlfs {
namespace {

// Attributes and names change only through this mount, and the kernel drops what
// each change makes stale (the daemon tells it when copy-up changes an inode's
// attributes, and which entries to drop to stay under its fd limit). Changes
// made by hand in the layers while mounted are not supported, as in the kernel's
// overlayfs, so entries and attributes are kept for a day: an entry that expired
// costs a lookup, and an open or permission check of a file whose attributes
// expired a getattr.
constexpr double kTimeout = 86400.0;

// The fd table the daemon starts with (8 KiB of the kernel's memory); it grows
// ahead of need from there (host/fd_table.hpp).
constexpr int kFdTableStart = 1024;

// The state of one mount's FUSE session: the overlay it serves and the transport.
struct Session {
  Overlay& ovl;
  Passthrough pt;
  std::unique_ptr<Uring> ring;  // FUSE over io_uring (uring.hpp); made with the session
};

// An open file as the kernel holds it: the overlay's handle and its io mode.
struct OpenFile {
  std::unique_ptr<FileHandle> fh;
  Node* node;
  int backing = -1;  // >= 0: the kernel passes reads and writes through to it
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

Cred cred_of(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  return Cred{c->uid, c->gid};
}

fuse_entry_param entry_param(Overlay& ovl, const Entry& e) {
  fuse_entry_param p{};
  p.ino = ino_of(ovl, e.node);
  p.attr = e.attr;
  p.attr_timeout = kTimeout;
  p.entry_timeout = ovl.short_lived(e.node) ? 0 : kTimeout;
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

void reply_attr(fuse_req_t req, const Result<struct stat>& st) {
  if (!st) {
    fuse_reply_err(req, st.error());
    return;
  }
  fuse_reply_attr(req, &*st, kTimeout);
}

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
  // Writes must fail at once when the upper refuses them (ENOSPC, EIO): no
  // writeback cache in the kernel between the writer and the upper.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  conn->max_write = 1 << 20;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Overlay& ovl = ovl_of(req);
  auto e = ovl.lookup(node_of(req, parent), name);
  if (!e && e.error() == ENOENT) {
    fuse_entry_param p{};  // a negative entry, cached like a positive one
    p.entry_timeout = kTimeout;
    fuse_reply_entry(req, &p);
    return;
  }
  reply_entry(req, e);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  ovl_of(req).forget(node_of(req, ino), nlookup);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i)
    ovl_of(req).forget(node_of(req, forgets[i].ino), forgets[i].nlookup);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  reply_attr(req, ovl_of(req).getattr(node_of(req, ino)));
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
  reply_attr(req, ovl_of(req).setattr(node_of(req, ino), sa, fi ? fh_of(fi) : nullptr));
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  auto r = ovl_of(req).readlink(node_of(req, ino));
  if (!r) {
    fuse_reply_err(req, r.error());
    return;
  }
  fuse_reply_readlink(req, r->c_str());
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  reply_entry(req, ovl_of(req).mknod(node_of(req, parent), name, mode, rdev, cred_of(req)));
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  reply_entry(req, ovl_of(req).mkdir(node_of(req, parent), name, mode, cred_of(req)));
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  reply_entry(req, ovl_of(req).symlink(node_of(req, parent), name, target, cred_of(req)));
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  reply_entry(req, ovl_of(req).link(node_of(req, ino), node_of(req, newparent), newname));
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, ovl_of(req).unlink(node_of(req, parent), name));
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, ovl_of(req).rmdir(node_of(req, parent), name));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned int flags) {
  reply_status(req, ovl_of(req).rename(node_of(req, parent), name, node_of(req, newparent),
                                       newname, flags));
}

// Hands an opened file to the kernel: passthrough to the upper copy when the
// kernel's io-mode rules allow it (see passthrough.hpp), else cached.
std::unique_ptr<OpenFile> open_file(fuse_req_t req, Node* node, std::unique_ptr<FileHandle> fh) {
  Session& s = session_of(req);
  auto of = std::make_unique<OpenFile>();
  of->node = node;
  of->fh = std::move(fh);
  bool eligible = s.ovl.passthrough_allowed() && S_ISREG(node->type) && node->has_upper();
  Fd opened;  // a backing fd of its own, if one was needed: the kernel keeps its file
  of->backing = s.pt.begin_open(node, eligible,
                                [&] { return s.ovl.open_backing(node, of->fh.get(), opened); });
  return of;
}

void close_file(fuse_req_t req, std::unique_ptr<OpenFile> of) {
  session_of(req).pt.end_open(of->node, of->backing);
  (void)ovl_of(req).release(of->fh.get());
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Node* node = node_of(req, ino);
  auto fh = ovl_of(req).open(node, fi->flags, cred_of(req));
  if (!fh) {
    fuse_reply_err(req, fh.error());
    return;
  }
  auto of = open_file(req, node, std::move(*fh));
  // keep_cache: contents change only through this mount.
  if (session_of(req).pt.reply_open(req, reinterpret_cast<uint64_t>(of.get()), true,
                                    of->backing) == -ENOENT) {
    close_file(req, std::move(of));  // interrupted
    return;
  }
  (void)of.release();  // now owned by the kernel's open file; freed in op_release
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  Overlay& ovl = ovl_of(req);
  auto r = ovl.create(node_of(req, parent), name, mode, fi->flags, cred_of(req));
  if (!r) {
    fuse_reply_err(req, r.error());
    return;
  }
  fuse_entry_param p = entry_param(ovl, r->first);
  auto of = open_file(req, r->first.node, std::move(r->second));
  if (session_of(req).pt.reply_create(req, p, reinterpret_cast<uint64_t>(of.get()), true,
                                      of->backing) == -ENOENT) {
    close_file(req, std::move(of));
    ovl.forget(r->first.node, 1);
    return;
  }
  (void)of.release();
}

void op_read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  thread_local std::unique_ptr<char[]> buf;
  thread_local size_t cap = 0;
  if (cap < size) {
    buf = std::make_unique_for_overwrite<char[]>(size);
    cap = size;
  }
  auto n = ovl_of(req).read(fh_of(fi), buf.get(), size, off);
  if (!n) {
    fuse_reply_err(req, n.error());
    return;
  }
  fuse_reply_buf(req, buf.get(), *n);
}

void op_write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
              fuse_file_info* fi) {
  auto n = ovl_of(req).write(fh_of(fi), buf, size, off);
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
      if (auto e = ovl.lookup(dir, d.name); e) {
        p = entry_param(ovl, *e);
        looked_up = e->node;
      }
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
  reply_status(req, ovl_of(req).setxattr(node_of(req, ino), name, value, size, flags));
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
  reply_status(req, ovl_of(req).removexattr(node_of(req, ino), name));
}

void op_fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len,
                  fuse_file_info* fi) {
  reply_status(req, ovl_of(req).fallocate(fh_of(fi), mode, off, len));
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

// Keeps the nodes the kernel holds under the process's fd limit (each node holds
// fds of its real objects, and the kernel keeps entries until memory runs short).
// Past a quarter of the limit it asks the kernel to drop cached entries of files, from
// its own thread, never inside a request (the kernel locks the directory for
// that); the kernel evicts each inode whose entry goes and forgets it, and the
// node closes its fds. A later access is one more lookup.
class Reclaimer {
 public:
  Reclaimer(Overlay& ovl, fuse_session* se) : ovl_(ovl), se_(se) {
    struct rlimit rl;
    std::size_t limit = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    // Each file node holds about one fd, and a file just written one more (its
    // writeback check's): nodes get a quarter of the fds, checks another.
    high_ = limit / 4;
    low_ = limit / 8;
    ovl.set_fd_budget(limit / 4);
    ovl.set_short_lived_after(low_);
    ovl.set_reclaim_trigger(high_, [this] { wake(); });
    thread_ = std::thread([this] { run(); });
  }
  Reclaimer(const Reclaimer&) = delete;
  Reclaimer& operator=(const Reclaimer&) = delete;
  ~Reclaimer() {
    ovl_.set_reclaim_trigger(SIZE_MAX, nullptr);  // the loop has ended: no caller
    ovl_.set_short_lived_after(SIZE_MAX);
    {
      std::lock_guard g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // From a request: a node took the count past the threshold. Never blocks on the
  // reclaim itself (that waits for directory locks the request may hold).
  void wake() {
    if (!pending_.exchange(true, std::memory_order_acq_rel)) cv_.notify_one();
  }

 private:
  void run() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait_for(lk, std::chrono::milliseconds(50),
                   [&] { return stop_ || pending_.load(std::memory_order_acquire); });
      if (stop_) break;
      pending_.store(false, std::memory_order_release);
      const std::size_t n = ovl_.node_count();
      if (n <= high_) continue;
      lk.unlock();
      for (auto& [parent, name] : ovl_.reclaim_candidates(n - low_))
        (void)fuse_lowlevel_notify_inval_entry(se_, ino_of(ovl_, parent.get()), name.c_str(),
                                               name.size());
      lk.lock();
    }
  }

  Overlay& ovl_;
  fuse_session* se_;
  std::size_t high_, low_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::atomic<bool> pending_{false};  // woken since the last round
  std::thread thread_;
};

}  // namespace

int fuse_serve(Overlay& ovl, const ServeOptions& opts) {
  std::string o = "fsname=" + opts.source + ",subtype=ovlfs,default_permissions,allow_other";
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
  if (fuse_set_signal_handlers(se) != 0) {
    std::fprintf(stderr, "ovlfs: cannot install signal handlers\n");
  } else if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0) {
    std::fprintf(stderr, "ovlfs: cannot mount on '%s'\n", opts.mountpoint.c_str());
  } else {
    static const fuse_custom_io io = {
        [](int fd, iovec* iov, int n, void* ud) {
          auto* s = static_cast<Session*>(ud);
          if (auto r = s->ring->reply(iov, n)) return *r;  // answers a request from a ring
          return s->pt.writev(fd, iov, n);
        },
        [](int fd, void* buf, size_t len, void* ud) {
          sched_tick();  // sched.hpp
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
    ovl.wb_start();  // a thread: only after fuse_daemonize's fork
    {
      Reclaimer reclaim(ovl, se);  // a thread too
      status = run_loop(se, 64, 8) == 0 ? 0 : 1;  // loop.hpp
    }
    fuse_session_unmount(se);
    session.ring->stop();  // after the unmount: its threads end with the connection
  }
  // Served or not: writes the dirty upper data back and records how the mount
  // ended (a volatile workdir is reusable only after a clean end).
  ovl.wb_finish();
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return status;
}

}  // namespace ovlfs
