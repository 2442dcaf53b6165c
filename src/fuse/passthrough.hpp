// FUSE passthrough (Linux 6.9+) for libfuse 3.14, which has no API for it.
//
// With passthrough, the kernel reads and writes an open file's backing file (here:
// the upper copy) itself, with no request to the daemon and no second page cache:
// data moves at the speed of the upper filesystem. libfuse 3.14 neither negotiates
// it nor lets a reply carry a backing id, so this module does both on the raw
// protocol: it installs libfuse's custom I/O on the /dev/fuse fd, sets
// FUSE_PASSTHROUGH and max_stack_depth in the INIT reply when the kernel offers
// them, registers backing files with FUSE_DEV_IOC_BACKING_OPEN, and writes the
// open and create replies itself (struct layouts of <linux/fuse.h>, protocol 7.40).
//
// The kernel's rules, which decide when an open may pass through: all passthrough
// opens of one inode share one backing file, and an inode is either in passthrough
// mode or in cached mode, never both (a wrong open fails with EIO). So an open
// passes through only when its data lives in the upper (a lower file may be copied
// up under a reader) and the inode has no cached open; once an inode has a
// passthrough open, every open of it passes through to the same backing file.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <functional>
#include <unordered_map>

#include "base/lock.hpp"
#include "host/fd.hpp"
#include "host/result.hpp"

namespace ovlfs {

struct Node;

// Told of the INIT exchange, which Passthrough sees on the raw protocol: how
// another part of the transport (io_uring, uring.hpp) takes part in it.
class InitHook {
 public:
  virtual ~InitHook() = default;
  // The INIT reply is about to be written: returns the flags2 bits to accept, of
  // `offered` (the INIT request's flags2). `max_write`, `max_pages` (0: the
  // kernel's default) are the reply's.
  virtual std::uint32_t init_reply(std::uint32_t offered, std::uint32_t max_write,
                                   std::uint32_t max_pages) = 0;
  // It was written (`ok`) or failed.
  virtual void init_replied(bool ok) = 0;
};

class Passthrough {
 public:
  // Takes over the session's I/O (after fuse_session_mount) with `io`, whose
  // functions forward to read() and writev() below. `allowed`: the mount's options
  // permit passthrough at all.
  void install(fuse_session* se, const fuse_custom_io& io, bool allowed);

  // Whether this process may give the kernel backing files: the kernel asks
  // CAP_SYS_ADMIN in the initial user namespace (a user, or root of a user
  // namespace, serves every read and write itself).
  static bool permitted();

  // Takes part in INIT from now on (before install).
  void set_init_hook(InitHook* hook) { hook_ = hook; }

  // The session's I/O: one request read, one reply written.
  ssize_t read(int fd, void* buf, size_t len);
  ssize_t writev(int fd, struct iovec* iov, int count);

  // Whether the kernel agreed to passthrough (known once INIT has been answered).
  bool active() const { return active_; }

  // Chooses the io mode of a new open of `node`: a backing id to reply with
  // (passthrough), or -1 (cached). `eligible`: the node's data is in the upper;
  // `backing` gives the fd of the file to pass through to, valid for the call.
  // Every call is paired with end_open.
  int begin_open(Node* node, bool eligible, const std::function<Result<int>()>& backing);
  void end_open(Node* node, int backing_id);

  // The open and create replies, with FOPEN_PASSTHROUGH when backing_id >= 0.
  // Return what fuse_reply_* returns (-ENOENT: the request was interrupted).
  int reply_open(fuse_req_t req, std::uint64_t fh, bool keep_cache, int backing_id);
  int reply_create(fuse_req_t req, const fuse_entry_param& e, std::uint64_t fh,
                   bool keep_cache, int backing_id);

 private:
  struct State {
    int backing = -1;
    unsigned passthrough = 0;  // open files passing through to `backing`
    unsigned cached = 0;       // open files in cached mode
  };

  int devfd_ = -1;
  bool allowed_ = false;
  bool offered_ = false;       // the kernel's INIT offered FUSE_PASSTHROUGH
  bool active_ = false;        // and the reply accepted it
  bool init_seen_ = false;     // INIT was read; its reply not yet written
  std::uint32_t init_flags2_ = 0;  // the INIT request's flags2 (0 without FUSE_INIT_EXT)
  std::uint64_t init_unique_ = 0;
  InitHook* hook_ = nullptr;
  // Held while it asks the overlay for a backing file (base/lock.hpp).
  Mutex<LockRank::kPassthrough> mu_;
  std::unordered_map<Node*, State> nodes_;  // GUARDED_BY(mu_)
};

}  // namespace ovlfs
