// Writeback errors: how an upper filesystem's writeback error reaches every
// overlay mount on it (SPEC.md section 2).
//
// The words (all errseq, include/ovlfs/errseq.hpp, 64-bit layout):
//
//   U's word       one per upper filesystem U, in a page of shared memory
//                  (/dev/shm/ovlfs-wb-<major>.<minor>-<uuid>), shared by every
//                  ovlfs process on the host that uses U. Every upper error any of
//                  them finds is set() here at once. Keyed by U's device AND its
//                  UUID, so a loop device re-made with a new filesystem starts clean;
//                  the page records the boot it belongs to. The last process to
//                  detach removes a page that never held an error.
//   mount cursor   each mount peek()s U's word when it mounts: the mount reports
//                  only errors after that, and the peek hides nothing from anyone
//                  (an error nobody has seen yet stays unseen for U's other
//                  watchers). A volatile mount's fsync and syncfs compare against it
//                  with check(): they report on every call, for ever.
//   mount's syncfs cursor
//                  the same value, advanced by check_and_advance() by a
//                  non-volatile syncfs: the first caller in each mount hears of
//                  each error once.
//   ofd's syncfs cursor
//                  each open file or directory: sample()d at open (so an error
//                  nobody has seen yet is reported to it too), but never before
//                  the mount; advanced by its own syncfs.
//   file word      one per upper file per process (WbInode::err): errors found
//                  in that file. Each open file description has a cursor on it,
//                  sample()d at open: a non-volatile fsync reports each of the
//                  file's errors once per open file description.
//
// Finding errors. The kernel keeps its own errseq per file (and per filesystem)
// and reports each error once to each struct file that asks. To turn "found" into
// "happened once", each upper file has ONE detector fd per process (WbInode::det),
// opened before ovlfs writes to it and kept until its data is written back; every
// file-level check goes through it: the writeback thread's sync_file_range, and
// a non-volatile fsync. So each kernel error of a file is set() once.
// syncfs(U) (non-volatile only) reports errors of the whole filesystem, which a
// file-level check may also have found (in this process or another); a syncfs
// result is set() only if nothing was recorded on U since this mount's previous
// syncfs (the first: ever), and a file-level result is not set() into U's word
// (only into the file word) when a syncfs result was recorded since that file's
// previous check. Two different errors that close together coalesce, as errseq
// coalesces errors nobody looked at in between.
// Not every error a file check finds is U's: a direct write that cannot drop
// cached pages sets EIO in its file's errseq only (WbInode::direct). Such a file's
// error goes into U's word only when U's superblock has one too: a non-volatile
// mount asks syncfs(U); a volatile one keeps it the file's (record_file_error).
//
// Volatile mounts never fsync, fdatasync or syncfs the upper. Every mount runs a
// writeback thread that, every writeback_interval ms, calls
// sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER) on the upper files written since
// its last pass and on every upper file open for writing (FUSE passthrough writes
// reach the upper without the daemon seeing them), no journal commit, no cache
// flush, so an upper error is found within about one interval. The same pass runs
// at unmount.
//
// A write(2) that fails at once (ENOSPC, EDQUOT, EIO from the upper's pwrite) is
// returned to the writer and recorded nowhere: it is not a writeback error.
//
// Lock order (base/lock.hpp, outermost first): Writeback::sync_mu_,
// Writeback::pass_mu_, WbInode::mu, WbOpen::mu, then the leaves nodes_mu_,
// dirty_mu_, thread_mu_.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/lock.hpp"
#include "host/host.hpp"
#include "ovlfs/errseq.hpp"
#include "overlay/ovl_entry.hpp"
#include "overlay/params.hpp"

struct ovlfs_status;

namespace ovlfs {

// --- U's shared record --------------------------------------------------------------

// The page in shared memory. Created zero-filled; `magic` is written last, under
// the file's flock, once the rest of the header is in place. After that every field
// below is touched only through std::atomic_ref.
struct WbSharedPage {
  char magic[16];    // kWbMagic once initialised
  char boot_id[48];  // the boot it belongs to
  char name[80];     // its own name, to check the mapping
  alignas(8) std::uint64_t errseq;     // U's word
  alignas(8) std::uint64_t sb_errseq;  // errors recorded from a syncfs(U) result
  alignas(8) std::uint64_t count;      // errors recorded
  alignas(8) std::int64_t time_sec;    // when the latest was recorded
  alignas(8) std::int64_t time_nsec;
  alignas(8) std::uint64_t attached;   // processes attached (informative: a killed
                                       // one never detaches; liveness is OFD locks)
};

// One process's view of U's record.
class UpperRecord {
 public:
  // Attaches to the record named `name`, creating it (or renewing one left from an
  // earlier boot) if needed. Returns a one-line message on failure.
  // A record that no live process holds and that never held an error is removed
  // (by the last process to detach, or by the next attach of any record), so a
  // host that makes and drops many filesystems keeps no record of the clean ones;
  // a record with an error stays for the rest of the boot.
  static std::expected<std::unique_ptr<UpperRecord>, std::string> attach(
      Host& host, const std::string& name);
  ~UpperRecord();
  UpperRecord(const UpperRecord&) = delete;
  UpperRecord& operator=(const UpperRecord&) = delete;

  errseq64_ref word() const { return errseq64_ref(page_->errseq); }
  errseq64_ref sb_word() const { return errseq64_ref(page_->sb_errseq); }

  // Records upper error `err`: the time, U's word, the count; `from_syncfs`: also
  // the word of errors recorded from a syncfs(U) result.
  void record(int err, bool from_syncfs);

  // U's word as it is now (for status and the volatile record; not a cursor).
  std::uint64_t value() const {
    return std::atomic_ref<std::uint64_t>(page_->errseq).load(std::memory_order_acquire);
  }
  std::uint64_t count() const;
  struct timespec time() const;
  const std::string& name() const { return name_; }

 private:
  UpperRecord(Host& host, Fd dir, Fd fd, WbSharedPage* page, std::string name)
      : host_(host), dir_(std::move(dir)), fd_(std::move(fd)), page_(page),
        name_(std::move(name)) {}

  Host& host_;
  Fd dir_;  // /dev/shm
  Fd fd_;   // the record: read OFD lock held while attached (see wb.cc)
  WbSharedPage* page_;
  std::string name_;
};

// The name of U's record: "ovlfs-wb-<major>.<minor>-<uuid in hex>", or
// "...-fsid<f_fsid in hex>" for a filesystem without a UUID; a user's records
// (owner != 0) are "ovlfs-wb-u<owner>-...": one per (user, upper filesystem).
std::string upper_record_name(dev_t dev, const unsigned char* uuid, std::uint64_t fsid,
                              std::uint32_t owner = 0);

// --- per upper file, per open file -----------------------------------------------------

class Writeback;

// The writeback-error state of one upper file in this process (Node::wb).
struct WbInode {
  Mutex<LockRank::kWbInode> mu;
  Fd det;                      // GUARDED_BY(mu): the detector fd (O_RDONLY), or closed
  std::uint64_t sb_window = 0; // GUARDED_BY(mu): U's sb word, peeked before the last check
  errseq64 err;                // this file's errors, as found through det
  std::atomic<bool> dirty{false};  // written since the last pass; queued while set
  std::atomic<int> opens{0};       // open file descriptions using it
  // Open for writing: checked on every pass while it is, and once after, because
  // writes may reach the upper without the daemon seeing them (FUSE passthrough).
  std::atomic<int> writers{0};     // changed under Writeback::dirty_mu_
  std::atomic<bool> watched{false};  // in Writeback::watched_; changed under dirty_mu_
  // Its last name is gone: the detector closes as soon as nothing has it open,
  // dirty or not (note_removed).
  std::atomic<bool> removed{false};
  // Opened for writing with O_DIRECT at least once. A direct write that cannot drop
  // the cached pages it overwrites (a shared mapping dirtying them meanwhile) makes
  // the kernel put EIO in this file's errseq only, not in U's superblock
  // (dio_warn_stale_pagecache): an error of this file, not of U. Such a file's
  // errors are U's only when U's superblock has one too (record_file_error).
  std::atomic<bool> direct{false};
  Writeback* owner = nullptr;  // fixed at creation

  // Open detectors of the whole mount (shared: the count outlives any one mount
  // object), for the fd budget; set with det.
  std::shared_ptr<std::atomic<std::size_t>> det_count;  // GUARDED_BY(mu)

  WbInode() = default;
  WbInode(const WbInode&) = delete;
  WbInode& operator=(const WbInode&) = delete;
  ~WbInode() {
    if (det && det_count) det_count->fetch_sub(1);
  }

  // Closes the detector once nothing can write and everything was checked, or
  // once nothing has a removed file open (after a last check).
  // Context: not with mu held.
  void close_if_idle();
};

// The cursors of one open file description (FileHandle::wb, DirHandle::wb).
struct WbOpen {
  WbOpen() = default;
  WbOpen(const WbOpen&) = delete;
  WbOpen& operator=(const WbOpen&) = delete;
  ~WbOpen();

  Mutex<LockRank::kWbOpen> mu;
  std::shared_ptr<WbInode> inode;  // GUARDED_BY(mu): the upper file (null: none yet)
  std::uint64_t file_since = 0;    // GUARDED_BY(mu): cursor on inode->err
  std::uint64_t sync_since = 0;    // GUARDED_BY(mu): cursor on U's word, for syncfs
  Writeback* writer = nullptr;     // set at open for a writer: who watches the file
};

// --- per mount ----------------------------------------------------------------------------

class Writeback {
 public:
  Writeback(Host& host, const Config& cfg) : host_(host), cfg_(cfg) {}
  ~Writeback();
  Writeback(const Writeback&) = delete;
  Writeback& operator=(const Writeback&) = delete;

  // Mount: attaches to U's record (upper_root: U's upper directory, O_PATH) and
  // takes the mount's cursor. Returns a one-line message on failure.
  std::expected<void, std::string> attach(int upper_root, dev_t dev, bool has_uuid,
                                          const unsigned char uuid[16]);

  // Mount: the workdir's volatile marker. Refuses a workdir that a volatile mount
  // used unless SPEC 2's conditions hold (the message names the one that failed);
  // on a volatile mount, writes the kernel's marker and ovlfs's record.
  std::expected<void, std::string> prepare_workdir(int workfd, const std::string& workpath);

  // Open: the cursors of a new open file (the upper file's state when on_upper;
  // a writer's detector is opened now, before it writes) or directory.
  // `real_fd`: the opener's own fd of the upper file, if it has one; a new detector
  // then shares its open file description (the same kernel cursor, sampled at the
  // same open) instead of opening the file again. `direct`: a writer opened with
  // O_DIRECT (WbInode::direct).
  Result<std::shared_ptr<WbOpen>> open_file(Node& node, bool on_upper, bool writer,
                                            int real_fd = -1, bool direct = false);
  std::shared_ptr<WbOpen> open_dir();

  // A successful write through `ofd`: queue its file for the next pass.
  void note_write(WbOpen& ofd);
  // A regular file was just copied up (for whatever change): its copied data is
  // written back and checked like written data. Context: no lock of node held but
  // the node's own. `real_fd`: an fd of the copy the detector may share (-1: none).
  void note_copy_up(Node& node, int real_fd = -1);

  // The last name of an upper file is gone. If nothing has it open, what writeback
  // already found in it is checked now and its detector closed, so that its space
  // is free when the unlink returns; data still dirty in it is never written back
  // (the kernel drops it with the file, as under the kernel's overlayfs).
  // While the file is open, the last release closes the detector instead.
  void note_removed(Node& node);
  // fsync/fdatasync of an upper file in a non-volatile mount: syncs it through the
  // detector, then reports each of the file's errors once to `ofd`.
  Status fsync_file(Node& node, WbOpen& ofd, bool datasync);
  // fsync in a volatile mount: the latest upper error since the mount, every call.
  Status fsync_volatile() const;
  // Records the result of a fsync of an upper directory (non-volatile).
  Status fsync_dir_result(Status r);
  // syncfs of the mount through `ofd` (may be null).
  Status syncfs(WbOpen* ofd);

  // The errno of the latest upper error since the mount, 0 if none.
  int mount_errno() const;
  // errors=remount-ro and an upper error since the mount.
  bool read_only() const;

  // The writeback thread (started once serving) and the end of the mount.
  void start();
  void finish(int workfd);
  // One writeback pass over the files written since the last (tests call it).
  void pass();

  void status(ovlfs_status& st) const;
  const UpperRecord* record() const { return rec_.get(); }

 private:
  std::shared_ptr<WbInode> inode_of(Node& node);
  // `real_fd`: an open file of it to share (dup), else `path_fd` (its upper, O_PATH,
  // taken before wi.mu: finding it may take node locks) is opened for reading.
  Status open_detector_locked(WbInode& wi, Node& node, int real_fd,
                              int path_fd = -1);  // REQUIRES(wi.mu)
  Status check_locked(WbInode& wi, bool sync, bool datasync, bool write);  // REQUIRES(wi.mu)
  void record_file_error(WbInode& wi, int err, std::uint64_t sb_window);
  void pass_locked();  // REQUIRES(pass_mu_)
  void close_removed_locked(WbInode& wi);  // REQUIRES(wi.mu)
  friend struct WbInode;
  std::uint64_t new_sync_cursor();
  void run();
  std::string record_text(const char* state) const;
  Status write_record(int voldir, const char* state);
  std::expected<void, std::string> check_reuse(int voldir) const;

  Host& host_;
  const Config& cfg_;
  std::unique_ptr<UpperRecord> rec_;
  Fd sbfd_;                    // U's upper dir, O_RDONLY: syncfs (non-volatile)
  std::string boot_id_;
  dev_t dev_ = 0;
  bool has_uuid_ = false;
  unsigned char uuid_[16] = {};
  std::uint64_t mount_cursor_ = 0;  // U's word peeked at mount; never changes
  std::uint64_t mount_count_ = 0;   // U's error count at mount
  bool reused_ = false;             // the workdir came from a safely ended volatile mount
  Fd voldir_;                       // volatile: work/incompat/volatile, where the record is
  bool served_ = false;             // start() or finish() ran: the record is theirs

  Mutex<LockRank::kWbSync> sync_mu_;  // one syncfs of the mount at a time
  std::uint64_t sync_since_ = 0;   // GUARDED_BY(sync_mu_): the mount's syncfs cursor
  std::uint64_t sb_window_ = 0;    // GUARDED_BY(sync_mu_): U's word before the last syncfs(U)

  Mutex<LockRank::kWbPass> pass_mu_;  // one writeback pass at a time

  Mutex<LockRank::kWbNodes> nodes_mu_;  // guards Node::wb

  friend struct WbOpen;
  void unwatch_writer(WbInode& wi);

  Mutex<LockRank::kWbDirty> dirty_mu_;
  std::vector<std::shared_ptr<WbInode>> dirty_;    // GUARDED_BY(dirty_mu_): written
  std::vector<std::shared_ptr<WbInode>> watched_;  // GUARDED_BY(dirty_mu_): open for writing
  std::atomic<std::uint64_t> pending_{0};        // inodes with dirty set

  std::atomic<std::uint64_t> passes_{0};
  std::atomic<std::uint64_t> file_errors_{0};
  std::atomic<std::uint64_t> local_errors_{0};  // of those, kept as their file's only
  // A syncfs(U) of this mount found an error and its pass runs (record_file_error).
  std::atomic<bool> sb_found_{false};

  Mutex<LockRank::kWbThread> thread_mu_;
  CondVar thread_cv_;
  bool stop_ = false;     // GUARDED_BY(thread_mu_)
  bool hurry_ = false;    // GUARDED_BY(thread_mu_): a pass now, not at the interval

  // Detectors are fds: past this many open, a pass runs at once (it closes the
  // detectors of files it finds clean), so a burst of writes cannot exhaust the
  // process's fds. Set from the fd limit by the adapter.
  std::shared_ptr<std::atomic<std::size_t>> dets_ =
      std::make_shared<std::atomic<std::size_t>>(0);
  std::atomic<std::size_t> det_budget_{SIZE_MAX};
  // Files open for writing now (their detectors stay open whatever a pass finds).
  std::atomic<std::size_t> open_writers_{0};

 public:
  void set_fd_budget(std::size_t fds) { det_budget_.store(fds, std::memory_order_relaxed); }
  // Before an open that may add a detector, with no lock held: past twice the
  // budget beyond the files open for writing, the writeback thread is behind (a
  // busy machine), and this request runs a pass itself first, which closes the
  // detectors of files it finds clean: the count stays bounded at any pace.
  void relieve();

 private:
  std::thread thread_;
};

}  // namespace ovlfs
