// FUSE passthrough on libfuse 3.14: see passthrough.hpp.
#include "fuse/passthrough.hpp"

#include <fstream>
#include <string>

#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "fuse/proto.hpp"

namespace ovlfs {
namespace {

using fuse_proto::InHeader;
using fuse_proto::OutHeader;

// <linux/fuse.h>, protocol 7.40: only what this module reads or writes.
constexpr std::uint32_t kOpInit = 26;
constexpr std::uint32_t kInitExt = 1u << 30;            // flags: flags2 is valid
constexpr std::uint32_t kPassthrough2 = 1u << (37 - 32);  // flags2: FUSE_PASSTHROUGH
constexpr std::uint32_t kNoExport2 = 1u << (38 - 32);     // flags2: FUSE_NO_EXPORT_SUPPORT
constexpr std::uint32_t kOpenPassthrough = 1u << 7;      // FOPEN_PASSTHROUGH
constexpr std::uint32_t kOpenKeepCache = 1u << 1;        // FOPEN_KEEP_CACHE

struct InitIn {
  std::uint32_t major, minor, max_readahead, flags, flags2, unused[11];
};
struct InitOut {
  std::uint32_t major, minor, max_readahead, flags;
  std::uint16_t max_background, congestion_threshold;
  std::uint32_t max_write, time_gran;
  std::uint16_t max_pages, map_alignment;
  std::uint32_t flags2, max_stack_depth;
  std::uint32_t unused[6];
};
struct Attr {
  std::uint64_t ino, size, blocks, atime, mtime, ctime;
  std::uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct EntryOut {
  std::uint64_t nodeid, generation, entry_valid, attr_valid;
  std::uint32_t entry_valid_nsec, attr_valid_nsec;
  Attr attr;
};
struct OpenOut {
  std::uint64_t fh;
  std::uint32_t open_flags;
  std::int32_t backing_id;
};
struct BackingMap {
  std::int32_t fd;
  std::uint32_t flags;
  std::uint64_t padding;
};
static_assert(sizeof(InitIn) == 64 && sizeof(InitOut) == 64);
static_assert(sizeof(Attr) == 88 && sizeof(EntryOut) == 128 && sizeof(OpenOut) == 16);

constexpr unsigned long kBackingOpen = _IOW(229, 1, BackingMap);
constexpr unsigned long kBackingClose = _IOW(229, 2, std::uint32_t);

// The stack depth of filesystems a backing file may sit on: an upper on a plain
// filesystem (depth 0) needs 1; a kernel overlay may still be mounted on ovlfs.
constexpr std::uint32_t kMaxStackDepth = 1;

void split_timeout(double t, std::uint64_t& sec, std::uint32_t& nsec) {
  sec = static_cast<std::uint64_t>(t);
  nsec = static_cast<std::uint32_t>((t - static_cast<double>(sec)) * 1e9);
}

Attr to_attr(const struct stat& st) {
  Attr a{};
  a.ino = st.st_ino;
  a.size = static_cast<std::uint64_t>(st.st_size);
  a.blocks = static_cast<std::uint64_t>(st.st_blocks);
  a.atime = static_cast<std::uint64_t>(st.st_atim.tv_sec);
  a.mtime = static_cast<std::uint64_t>(st.st_mtim.tv_sec);
  a.ctime = static_cast<std::uint64_t>(st.st_ctim.tv_sec);
  a.atimensec = static_cast<std::uint32_t>(st.st_atim.tv_nsec);
  a.mtimensec = static_cast<std::uint32_t>(st.st_mtim.tv_nsec);
  a.ctimensec = static_cast<std::uint32_t>(st.st_ctim.tv_nsec);
  a.mode = st.st_mode;
  a.nlink = static_cast<std::uint32_t>(st.st_nlink);
  a.uid = st.st_uid;
  a.gid = st.st_gid;
  a.rdev = static_cast<std::uint32_t>(st.st_rdev);
  a.blksize = static_cast<std::uint32_t>(st.st_blksize);
  return a;
}

}  // namespace

bool Passthrough::permitted() {
  // The initial user namespace maps every id to itself.
  std::ifstream map("/proc/self/uid_map");
  std::uint64_t inside = 1, outside = 1, count = 0;
  if (!(map >> inside >> outside >> count) || inside != 0 || outside != 0 || count != 4294967295u)
    return false;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("CapEff:")) {
      const std::uint64_t caps = std::stoull(line.substr(7), nullptr, 16);
      return caps & (std::uint64_t{1} << 21);  // CAP_SYS_ADMIN
    }
  return false;
}

void Passthrough::install(fuse_session* se, const fuse_custom_io& io, bool allowed) {
  allowed_ = allowed && permitted();
  devfd_ = fuse_session_fd(se);
  if (fuse_session_custom_io(se, &io, devfd_) != 0) allowed_ = false;
}

// Reads one request; notes what the kernel's INIT offers.
ssize_t Passthrough::read(int fd, void* buf, size_t len) {
  ssize_t n = ::read(fd, buf, len);
  // A connection aborted (an unmount can end one so) ends the session as an
  // unmounted one does: libfuse perror()s any other error ("fuse: reading device:
  // Software caused connection abort") on the daemon's stderr.
  if (n < 0 && errno == ECONNABORTED) errno = ENODEV;
  if (n >= static_cast<ssize_t>(sizeof(InHeader) + sizeof(InitIn))) {
    InHeader h;
    std::memcpy(&h, buf, sizeof h);
    if (h.opcode == kOpInit) {
      InitIn in;
      std::memcpy(&in, static_cast<char*>(buf) + sizeof h, sizeof in);
      init_unique_ = h.unique;
      init_seen_ = true;
      init_flags2_ = (in.flags & kInitExt) ? in.flags2 : 0;
      offered_ = allowed_ && (init_flags2_ & kPassthrough2);
    }
  }
  return n;
}

// Writes one reply; accepts in the INIT reply what was offered and is wanted.
ssize_t Passthrough::writev(int fd, struct iovec* iov, int count) {
  bool init = false;
  if (init_seen_ && count >= 2 && iov[0].iov_len == sizeof(OutHeader) &&
      iov[1].iov_len >= sizeof(InitOut)) {
    OutHeader h;
    std::memcpy(&h, iov[0].iov_base, sizeof h);
    if (h.unique == init_unique_ && h.error == 0) {
      init = true;
      init_seen_ = false;
      InitOut out;
      std::memcpy(&out, iov[1].iov_base, sizeof out);
      // No file handles: a node id names a node only while the kernel holds it, so
      // a handle could not be opened once the kernel forgot it (ESTALE). The kernel
      // then refuses to make one (name_to_handle_at: EOPNOTSUPP), as its overlayfs
      // does without nfs_export; fanotify's handles (AT_HANDLE_FID) still work.
      std::uint32_t accept = init_flags2_ & kNoExport2;
      if (offered_) {
        accept |= kPassthrough2;
        out.max_stack_depth = kMaxStackDepth;
      }
      if (hook_) {
        constexpr std::uint32_t kMaxPages = 1u << 22;  // flags: max_pages is valid
        accept |= init_flags2_ & hook_->init_reply(init_flags2_, out.max_write,
                                                   (out.flags & kMaxPages) ? out.max_pages : 0);
      }
      if (accept) {
        out.flags |= kInitExt;
        out.flags2 |= accept;
      }
      std::memcpy(iov[1].iov_base, &out, sizeof out);
      active_ = offered_;
    }
  }
  ssize_t n = ::writev(fd, iov, count);
  if (init && hook_) hook_->init_replied(n >= 0);
  return n;
}

int Passthrough::begin_open(Node* node, bool eligible,
                            const std::function<Result<int>()>& backing) {
  MutexLock g(mu_);
  State& s = nodes_[node];
  if (s.passthrough > 0) {  // the inode is in passthrough mode: so is this open
    ++s.passthrough;
    return s.backing;
  }
  if (!active_ || !eligible || s.cached > 0) {
    ++s.cached;
    return -1;
  }
  auto fd = backing();
  BackingMap map{};
  int id = -1;
  if (fd) {
    map.fd = *fd;
    id = ::ioctl(devfd_, kBackingOpen, &map);
  }
  if (id < 0) {  // the kernel refused (e.g. stacking too deep): a cached open
    ++s.cached;
    return -1;
  }
  s.backing = id;
  s.passthrough = 1;
  return id;
}

void Passthrough::end_open(Node* node, int backing_id) {
  MutexLock g(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return;
  State& s = it->second;
  if (backing_id >= 0) {
    if (s.passthrough > 0 && --s.passthrough == 0) {
      std::uint32_t id = static_cast<std::uint32_t>(s.backing);
      (void)::ioctl(devfd_, kBackingClose, &id);
      s.backing = -1;
    }
  } else if (s.cached > 0) {
    --s.cached;
  }
  if (s.passthrough == 0 && s.cached == 0) nodes_.erase(it);
}

int Passthrough::reply_open(fuse_req_t req, std::uint64_t fh, bool keep_cache, int backing_id) {
  OpenOut out{};
  out.fh = fh;
  if (backing_id >= 0) {
    out.open_flags = kOpenPassthrough;
    out.backing_id = backing_id;
  } else if (keep_cache) {
    out.open_flags = kOpenKeepCache;
  }
  return fuse_reply_buf(req, reinterpret_cast<const char*>(&out), sizeof out);
}

int Passthrough::reply_create(fuse_req_t req, const fuse_entry_param& e, std::uint64_t fh,
                              bool keep_cache, int backing_id) {
  struct {
    EntryOut entry;
    OpenOut open;
  } out{};
  static_assert(sizeof out == sizeof(EntryOut) + sizeof(OpenOut));
  out.entry.nodeid = e.ino;
  out.entry.generation = e.generation;
  split_timeout(e.entry_timeout, out.entry.entry_valid, out.entry.entry_valid_nsec);
  split_timeout(e.attr_timeout, out.entry.attr_valid, out.entry.attr_valid_nsec);
  out.entry.attr = to_attr(e.attr);
  out.open.fh = fh;
  if (backing_id >= 0) {
    out.open.open_flags = kOpenPassthrough;
    out.open.backing_id = backing_id;
  } else if (keep_cache) {
    out.open.open_flags = kOpenKeepCache;
  }
  return fuse_reply_buf(req, reinterpret_cast<const char*>(&out), sizeof out);
}

}  // namespace ovlfs
