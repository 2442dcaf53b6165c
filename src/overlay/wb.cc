// Writeback errors (SPEC 2): U's shared record, the per-file and per-open cursors,
// the writeback thread, the volatile marker. The design is in overlay/wb.hpp.
#include "overlay/wb.hpp"

#include <fcntl.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "host/forwarding_host.hpp"
#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"
#include "ovlfs/ioctl.h"

namespace ovlfs {
namespace {

constexpr char kWbMagic[16] = "ovlfs-wb-1";
constexpr std::size_t kPageSize = 4096;
static_assert(sizeof(WbSharedPage) <= kPageSize);
static_assert(alignof(WbSharedPage) >= errseq64_ref::required_alignment);

// Names of the volatile marker, as the kernel's overlayfs makes it, and ovlfs's
// record beside it.
constexpr const char* kIncompat = "incompat";
constexpr const char* kVolatile = "volatile";
constexpr const char* kDirty = "dirty";
constexpr const char* kRecord = "ovlfs";
constexpr const char* kRecordTmp = ".ovlfs.tmp";
constexpr const char* kRecordHeader = "ovlfs-volatile-record 1";

// Whether an errno from a sync call is an error of the data (to record), rather
// than one of the call itself.
bool is_data_error(int err) { return err != EBADF && err != EINVAL && err != EINTR && err != ENOSYS; }

std::string errno_name(int err) {
  if (err == 0) return "0";
  if (const char* n = strerrorname_np(err)) return n;
  return std::to_string(err);
}

}  // namespace

// --- U's shared record ------------------------------------------------------------

std::string upper_record_name(dev_t dev, const unsigned char* uuid, std::uint64_t fsid,
                              std::uint32_t owner) {
  char buf[96];
  int n = owner ? std::snprintf(buf, sizeof buf, "ovlfs-wb-u%u-%u.%u-", owner, major(dev), minor(dev))
                : std::snprintf(buf, sizeof buf, "ovlfs-wb-%u.%u-", major(dev), minor(dev));
  if (uuid) {
    for (int i = 0; i < 16; ++i) n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "%02x", uuid[i]);
  } else {
    std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "fsid%016" PRIx64, fsid);
  }
  return buf;
}

// Liveness: every attached process holds a read OFD lock on its record's first
// byte for as long as it is attached (the kernel drops it when the process dies,
// however it dies). A record that nobody holds and that never held an error tells
// nothing: whoever finds it so removes it (the last process to detach, and every
// attach sweeps the others). Initialisation and removal are serialised by flock.

// Removes record `name` (in shmdir) if nobody is attached and it never held an
// error; returns whether it did. Context: best effort, never blocks.
static bool remove_if_unused(Host& host, int shmdir, const char* name) {
  auto fd = host.openat(shmdir, name, O_RDWR | O_NOFOLLOW | O_NONBLOCK);
  if (!fd) return false;
  if (!host.flock(fd->get(), LOCK_EX | LOCK_NB)) return false;  // being set up
  bool removed = false;
  if (host.ofd_lock(fd->get(), F_WRLCK)) {  // no live process holds it
    WbSharedPage page{};
    auto st = host.fstatat(fd->get(), "", AT_EMPTY_PATH);
    auto n = host.pread(fd->get(), &page, sizeof page, 0);
    const bool valid = n && *n == sizeof page && std::memcmp(page.magic, kWbMagic, sizeof kWbMagic) == 0;
    if (st && st->st_nlink > 0 && (!valid || (page.count == 0 && page.errseq == 0)))
      removed = host.unlinkat(shmdir, name, 0).has_value();
    (void)host.ofd_lock(fd->get(), F_UNLCK);
  }
  (void)host.flock(fd->get(), LOCK_UN);
  return removed;
}

// Sweeps records that their processes left behind (killed ones cannot remove
// theirs). Bounded: a few entries per attach.
static void sweep_unused(Host& host, int shmdir, const std::string& keep) {
  auto ents = host.read_dir(shmdir);
  if (!ents) return;
  int tried = 0;
  for (const HostDirent& e : *ents) {
    if (!e.name.starts_with("ovlfs-wb-") || e.name == keep || e.type != DT_REG) continue;
    if (++tried > 32) break;
    (void)remove_if_unused(host, shmdir, e.name.c_str());
  }
}

std::expected<std::unique_ptr<UpperRecord>, std::string> UpperRecord::attach(
    Host& host, const std::string& name) {
  auto fail_msg = [&](const char* what, int err) {
    return std::unexpected(std::string("upper error record /dev/shm/") + name + ": " + what +
                           ": " + std::strerror(err));
  };
  auto boot = host.boot_id();
  if (!boot) return fail_msg("cannot read the boot id", boot.error());
  auto dir = host.shm_dir();
  if (!dir) return fail_msg("cannot open /dev/shm", dir.error());
  sweep_unused(host, dir->get(), name);
  // Initialisation is serialised by the flock; the words need nothing more (they
  // work from zero and only through atomics).
  Result<Fd> fd = fail(EAGAIN);
  Result<struct stat> st = fail(EAGAIN);
  // /dev/shm is everyone's (sticky, world-writable): a record is used only if it
  // is this process's user's own, a regular file that nobody else may read or
  // write (0600), so that nobody can read another's record or forge its errors.
  // One that another user made under the name is removed when root can (root's
  // names are predictable: a user could otherwise keep root from mounting), and
  // refused otherwise. Opened first without O_CREAT: with fs.protected_regular,
  // an O_CREAT open of another user's file in a sticky directory fails.
  const uid_t me = host.euid();
  // Root of the host (not of a user namespace, whose unlink in the sticky
  // /dev/shm fails like any user's).
  const bool host_root = me == 0 && host.record_owner() == 0;
  for (int tries = 0;; ++tries) {
    if (tries == 100) return fail_msg("keeps being removed", EAGAIN);
    fd = host.openat(dir->get(), name.c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK);
    if (!fd && fd.error() == ENOENT)
      fd = host.openat(dir->get(), name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (!fd && fd.error() == EEXIST) continue;  // made meanwhile: open that one
    if (!fd) return fail_msg("cannot open", fd.error());
    st = host.fstatat(fd->get(), "", AT_EMPTY_PATH);
    if (!st) return fail_msg("cannot stat", st.error());
    if (!S_ISREG(st->st_mode) || st->st_uid != me || (st->st_mode & 077)) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", st->st_mode & 07777);
      // In a user namespace, an owner it does not map shows as the overflow id.
      const bool unmapped = host.record_owner() != me && st->st_uid == kOverflowId;
      const std::string whose =
          unmapped ? "a user this user namespace does not map (uid " +
                         std::to_string(st->st_uid) + " here)"
                   : "uid " + std::to_string(st->st_uid);
      const std::string why = "upper error record /dev/shm/" + name + " belongs to " + whose +
                              " (mode " + mode + "), not to this user: refusing it";
      if (!host_root) return std::unexpected(why + "; remove it");
      fd->reset();
      if (auto r = host.unlinkat(dir->get(), name.c_str(), 0); !r && r.error() != ENOENT)
        return std::unexpected(why + " (cannot remove it: " + std::strerror(r.error()) + ")");
      continue;
    }
    if (auto r = host.flock(fd->get(), LOCK_EX); !r) return fail_msg("cannot lock", r.error());
    // Removed as unused after we opened it: open it anew.
    if (auto again = host.fstatat(fd->get(), "", AT_EMPTY_PATH); again && again->st_nlink > 0)
      break;
  }
  if (static_cast<std::size_t>(st->st_size) < kPageSize)
    if (auto r = host.ftruncate(fd->get(), kPageSize); !r) return fail_msg("cannot size", r.error());
  auto map = host.mmap_shared(fd->get(), kPageSize);
  if (!map) return fail_msg("cannot map", map.error());
  auto* page = static_cast<WbSharedPage*>(*map);
  const bool fresh = std::memcmp(page->magic, kWbMagic, sizeof kWbMagic) != 0;
  const bool old_boot = !fresh && std::strncmp(page->boot_id, boot->c_str(), sizeof page->boot_id) != 0;
  if (fresh || old_boot) {
    // Nobody else uses the page: every attach takes the flock and sees no magic
    // (fresh), or belongs to an earlier boot (impossible for /dev/shm, which a boot
    // empties; handled anyway).
    std::memset(static_cast<void*>(page), 0, kPageSize);
    std::snprintf(page->boot_id, sizeof page->boot_id, "%s", boot->c_str());
    std::snprintf(page->name, sizeof page->name, "%s", name.c_str());
    std::memcpy(page->magic, kWbMagic, sizeof kWbMagic);
  } else if (std::strncmp(page->name, name.c_str(), sizeof page->name) != 0) {
    host.munmap(page, kPageSize);
    return std::unexpected("upper error record /dev/shm/" + name + " names another record");
  }
  // Attached from now on. Cannot conflict: a remover takes its write lock only
  // while holding the flock, which is ours now.
  if (auto r = host.ofd_lock(fd->get(), F_RDLCK); !r) {
    host.munmap(page, kPageSize);
    return fail_msg("cannot lock", r.error());
  }
  std::atomic_ref<std::uint64_t>(page->attached).fetch_add(1, std::memory_order_relaxed);
  (void)host.flock(fd->get(), LOCK_UN);
  return std::unique_ptr<UpperRecord>(
      new UpperRecord(host, std::move(*dir), std::move(*fd), page, name));
}

UpperRecord::~UpperRecord() {
  std::atomic_ref<std::uint64_t>(page_->attached).fetch_sub(1, std::memory_order_relaxed);
  host_.munmap(page_, kPageSize);
  (void)host_.ofd_lock(fd_.get(), F_UNLCK);
  fd_.reset();
  // The last one out removes a record that never held an error.
  (void)remove_if_unused(host_, dir_.get(), name_.c_str());
}

void UpperRecord::record(int err, bool from_syncfs) {
  // The time first: a watcher that sees the error (acquire, pairing with set()'s
  // release) sees when it was recorded. Relaxed: set() orders them.
  const struct timespec ts = host_.now();
  std::atomic_ref<std::int64_t>(page_->time_sec).store(ts.tv_sec, std::memory_order_relaxed);
  std::atomic_ref<std::int64_t>(page_->time_nsec).store(ts.tv_nsec, std::memory_order_relaxed);
  if (from_syncfs) sb_word().set(err);
  word().set(err);
  std::atomic_ref<std::uint64_t>(page_->count).fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t UpperRecord::count() const {
  return std::atomic_ref<std::uint64_t>(page_->count).load(std::memory_order_relaxed);
}

struct timespec UpperRecord::time() const {
  struct timespec ts {};
  ts.tv_sec = std::atomic_ref<std::int64_t>(page_->time_sec).load(std::memory_order_relaxed);
  ts.tv_nsec = std::atomic_ref<std::int64_t>(page_->time_nsec).load(std::memory_order_relaxed);
  return ts;
}

// --- per upper file, per open file ---------------------------------------------------

void WbInode::close_if_idle() {
  MutexLock g(mu);
  if (removed.load() && opens.load() == 0 && owner) {
    owner->close_removed_locked(*this);
    return;
  }
  if (opens.load() == 0 && !dirty.load() && !watched.load() && det) {
    det.reset();
    if (det_count) det_count->fetch_sub(1);
  }
}

WbOpen::~WbOpen() {
  if (!inode) return;
  if (writer) writer->unwatch_writer(*inode);
  inode->opens.fetch_sub(1);
  inode->close_if_idle();
}

// The last writer gone, the file stays watched until the next pass has checked it.
void Writeback::unwatch_writer(WbInode& wi) {
  MutexLock g(dirty_mu_);
  if (wi.writers.fetch_sub(1) == 1) open_writers_.fetch_sub(1, std::memory_order_relaxed);
}

// --- per mount: attaching -------------------------------------------------------------

Writeback::~Writeback() {
  {
    MutexLock g(thread_mu_);
    stop_ = true;
  }
  thread_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // A volatile mount that never served (the mount failed after its record was
  // written) wrote nothing: its record ends clean.
  if (voldir_ && !served_) (void)write_record(voldir_.get(), "clean");
}

std::expected<void, std::string> Writeback::attach(int upper_root, dev_t dev, bool has_uuid,
                                                   const unsigned char uuid[16]) {
  dev_ = dev;
  // An all-zero UUID (some filesystems answer FS_IOC_GETFSUUID so) tells nothing.
  static constexpr unsigned char kZero[16] = {};
  has_uuid_ = has_uuid && std::memcmp(uuid, kZero, 16) != 0;
  if (has_uuid_) std::memcpy(uuid_, uuid, 16);
  has_uuid = has_uuid_;
  std::uint64_t fsid = 0;
  if (!has_uuid) {
    auto sfs = host_.fstatfs(upper_root);
    if (!sfs) return std::unexpected(std::string("cannot statfs the upper: ") + std::strerror(sfs.error()));
    std::memcpy(&fsid, &sfs->f_fsid, sizeof fsid);
  }
  auto boot = host_.boot_id();
  if (!boot) return std::unexpected(std::string("cannot read the boot id: ") + std::strerror(boot.error()));
  boot_id_ = *boot;
  auto rec = UpperRecord::attach(
      host_, upper_record_name(dev, has_uuid ? uuid : nullptr, fsid, host_.record_owner()));
  if (!rec) return std::unexpected(rec.error());
  rec_ = std::move(*rec);
  // The syncfs fd is opened now, so that the kernel's cursor for it starts here.
  auto sb = host_.openat(upper_root, ".", O_RDONLY | O_DIRECTORY);
  if (!sb) return std::unexpected(std::string("cannot open the upper: ") + std::strerror(sb.error()));
  sbfd_ = std::move(*sb);
  // peek, not sample: errors from before the mount are not this mount's, and an
  // error nobody has seen stays unseen for everyone else.
  mount_count_ = rec_->count();
  mount_cursor_ = rec_->word().peek();
  sync_since_ = mount_cursor_;
  return {};
}

// --- per mount: errors ------------------------------------------------------------------

int Writeback::mount_errno() const { return rec_ ? rec_->word().check(mount_cursor_) : 0; }

bool Writeback::read_only() const {
  return cfg_.errors == ErrorsMode::remount_ro && mount_errno() != 0;
}

std::shared_ptr<WbInode> Writeback::inode_of(Node& node) {
  MutexLock g(nodes_mu_);
  if (!node.wb) {
    node.wb = std::make_shared<WbInode>();
    node.wb->owner = this;
  }
  return node.wb;
}

Status Writeback::open_detector_locked(WbInode& wi, Node& node, int real_fd, int path_fd) {
  if (wi.det) return {};
  if (!node.has_upper()) return fail(EIO);
  if (real_fd < 0 && path_fd < 0) return fail(errno ? errno : EIO);
  auto fd = real_fd >= 0 ? host_.dup(real_fd) : host_.reopen(path_fd, O_RDONLY);
  if (!fd) return fail(fd.error());
  wi.det = std::move(*fd);
  wi.det_count = dets_;
  if (dets_->fetch_add(1) + 1 > det_budget_.load(std::memory_order_relaxed)) {
    {
      MutexLock g(thread_mu_);
      hurry_ = true;
    }
    thread_cv_.notify_all();
  }
  // The kernel's cursor for det starts here: errors after now, and an earlier
  // one nobody has seen. A syncfs result recorded before now is not this file's.
  wi.sb_window = rec_->sb_word().peek();
  return {};
}

// Checks the file through its detector: sync_file_range (write and wait), or
// fsync/fdatasync (`sync`). Records what it finds; returns the call's result.
Status Writeback::check_locked(WbInode& wi, bool sync, bool datasync, bool write) {
  const std::uint64_t window = wi.sb_window;
  wi.sb_window = rec_->sb_word().peek();
  Status r;
  if (sync) r = datasync ? host_.fdatasync(wi.det.get()) : host_.fsync(wi.det.get());
  else r = host_.sync_file_range(wi.det.get(), 0, 0, write ? kWriteAndWait : SYNC_FILE_RANGE_WAIT_AFTER);
  if (!r && is_data_error(r.error())) record_file_error(wi, r.error(), window);
  return r;
}

void Writeback::record_file_error(WbInode& wi, int err, std::uint64_t sb_window) {
  wi.err.set(err);
  file_errors_.fetch_add(1, std::memory_order_relaxed);
  // A syncfs(U) result recorded since this file's previous check may be this very
  // error, found at the filesystem level first: then it is on U already.
  if (rec_->sb_word().check(sb_window) != 0) return;
  if (!wi.direct.load(std::memory_order_relaxed)) {
    // Writeback failed (mapping_set_error): the kernel put it in U's superblock too.
    rec_->record(err, false);
    return;
  }
  // Possibly this file's own (WbInode::direct). U's superblock tells: a syncfs(U)
  // reports an error recorded there since the previous one on sbfd_ (every such
  // result is recorded on U, so one found now is new). A volatile mount calls no
  // syncfs (SPEC 2): there the error stays this file's, as the kernel's volatile
  // overlayfs, which watches only U's superblock, would not report it either; an
  // error of U's own is still found through every other file, and by any syncfs(U).
  if (cfg_.is_volatile) {
    local_errors_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // A syncfs of this mount just took U's superblock error (it records it after its
  // pass, which is checking this file now): U has one.
  if (sb_found_.load(std::memory_order_relaxed)) {
    rec_->record(err, false);
    return;
  }
  Status r = host_.syncfs(sbfd_.get());
  if (!r && is_data_error(r.error())) rec_->record(r.error(), true);
  else local_errors_.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t Writeback::new_sync_cursor() {
  // sample(): an error nobody has reported yet is reported to this ofd too. But
  // not one from before the mount: then start where the mount started.
  std::uint64_t s = rec_->word().sample();
  if (s == 0 && rec_->word().check(mount_cursor_) == 0) s = mount_cursor_;
  return s;
}

Result<std::shared_ptr<WbOpen>> Writeback::open_file(Node& node, bool on_upper, bool writer,
                                                     int real_fd, bool direct) {
  auto o = std::make_shared<WbOpen>();
  o->sync_since = new_sync_cursor();
  if (on_upper) {
    auto wi = inode_of(node);
    if (writer) {
      if (direct) wi->direct.store(true, std::memory_order_relaxed);
      // The detector exists before the first write, so the kernel reports every
      // error of what this ofd writes to it, whoever else looks.
      {
        MutexLock g(wi->mu);
        OVL_TRY(open_detector_locked(*wi, node, real_fd));
      }
      MutexLock g(dirty_mu_);
      if (wi->writers.fetch_add(1) == 0) open_writers_.fetch_add(1, std::memory_order_relaxed);
      if (!wi->watched.exchange(true)) watched_.push_back(wi);
      o->writer = this;
    }
    wi->opens.fetch_add(1);
    o->file_since = wi->err.sample();
    o->inode = std::move(wi);
  }
  return o;
}

std::shared_ptr<WbOpen> Writeback::open_dir() {
  auto o = std::make_shared<WbOpen>();
  o->sync_since = new_sync_cursor();
  return o;
}

void Writeback::note_write(WbOpen& ofd) {
  WbInode* wi = ofd.inode.get();  // set at open for every writer, never changed after
  if (!wi) return;
  // Lock-free when already queued: one exchange per write.
  if (wi->dirty.exchange(true)) return;
  pending_.fetch_add(1);
  MutexLock g(dirty_mu_);
  dirty_.push_back(ofd.inode);
}

void Writeback::note_copy_up(Node& node, int real_fd) {
  if (!S_ISREG(node.type) || !node.has_upper()) return;
  auto wi = inode_of(node);
  {
    MutexLock g(wi->mu);
    if (!open_detector_locked(*wi, node, real_fd)) return;  // checked at its next fsync
  }
  if (wi->dirty.exchange(true)) return;
  pending_.fetch_add(1);
  MutexLock g(dirty_mu_);
  dirty_.push_back(std::move(wi));
}

void Writeback::note_removed(Node& node) {
  std::shared_ptr<WbInode> wi;
  {
    MutexLock g(nodes_mu_);
    wi = node.wb;
  }
  if (!wi) return;
  MutexLock g(wi->mu);
  wi->removed.store(true);
  if (wi->opens.load() != 0) return;  // the last release closes it
  close_removed_locked(*wi);
}

void Writeback::close_removed_locked(WbInode& wi) {
  if (!wi.det) return;
  // WAIT_AFTER only: the errors of writeback already done or under way.
  (void)check_locked(wi, false, false, false);
  wi.det.reset();
  if (wi.det_count) wi.det_count->fetch_sub(1);
}

Status Writeback::fsync_volatile() const {
  if (int e = mount_errno()) return fail(e);
  return {};
}

Status Writeback::fsync_file(Node& node, WbOpen& ofd, bool datasync) {
  std::shared_ptr<WbInode> wi;
  {
    MutexLock g(ofd.mu);
    if (!ofd.inode) {
      // Opened on the lower file, and copied up since: from now on the upper's.
      ofd.inode = inode_of(node);
      ofd.inode->opens.fetch_add(1);
      ofd.file_since = ofd.inode->err.sample();
    }
    wi = ofd.inode;
  }
  Status r;
  // Taken before wi->mu: finding it again may take node locks (overlay/fds.cc).
  const int path_fd = node.upper_fd();
  {
    MutexLock g(wi->mu);
    OVL_TRY(open_detector_locked(*wi, node, -1, path_fd));
    r = check_locked(*wi, true, datasync, false);
  }
  if (!r && !is_data_error(r.error())) return r;
  int e;
  {
    MutexLock g(ofd.mu);
    e = wi->err.check_and_advance(ofd.file_since);
  }
  wi->close_if_idle();
  if (e) return fail(e);
  return {};
}

Status Writeback::fsync_dir_result(Status r) {
  // A directory's fsync reports errors of its metadata: recorded on U, at most
  // once (the fd is fresh: the kernel reports only an error nobody has seen).
  if (!r && is_data_error(r.error())) rec_->record(r.error(), true);
  return r;
}

Status Writeback::syncfs(WbOpen* ofd) {
  if (cfg_.is_volatile) {
    if (mount_errno()) return fail(EIO);
    return {};
  }
  MutexLock g(sync_mu_);
  const std::uint64_t window = sb_window_;
  sb_window_ = rec_->word().peek();
  Status r = host_.syncfs(sbfd_.get());
  // This mount's own files first: their errors are found exactly, per file.
  if (!r && is_data_error(r.error())) sb_found_.store(true, std::memory_order_relaxed);
  pass();
  sb_found_.store(false, std::memory_order_relaxed);
  if (!r && is_data_error(r.error())) {
    // Found at the filesystem level: new only if nothing was recorded on U since
    // the previous syncfs(U) (before the first: ever).
    if (rec_->word().check(window) == 0) rec_->record(r.error(), true);
  } else if (!r) {
    return r;
  }
  // Both cursors advance: the mount's first caller and this ofd each hear once.
  int e = rec_->word().check_and_advance(sync_since_);
  if (ofd) {
    MutexLock og(ofd->mu);
    if (int oe = rec_->word().check_and_advance(ofd->sync_since); !e) e = oe;
  }
  if (e) return fail(e);
  return {};
}

// --- the writeback thread --------------------------------------------------------------

// Checks every file written since the last pass, and every file open for writing.
void Writeback::pass() {
  MutexLock pg(pass_mu_);
  pass_locked();
}

void Writeback::pass_locked() {
  std::vector<std::shared_ptr<WbInode>> todo;
  {
    MutexLock g(dirty_mu_);
    todo.swap(dirty_);
    for (auto& wi : todo) {
      // Cleared before the check: a write from now on queues the file again.
      wi->dirty.store(false);
      pending_.fetch_sub(1);
    }
    todo.insert(todo.end(), watched_.begin(), watched_.end());
  }
  std::sort(todo.begin(), todo.end());
  todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
  // The writeback of every file is started first, then each is checked (write and
  // wait): the device gets all the writes at once. One file at a time, a pass over
  // thousands of small files waited for each write in turn while their detectors
  // stayed open. A start that fails is the file's check (as the write step of the
  // check would have failed the same way); its error is recorded now.
  std::vector<char> checked(todo.size(), 0);
  for (std::size_t i = 0; i < todo.size(); ++i) {
    WbInode& wi = *todo[i];
    MutexLock g(wi.mu);
    if (!wi.det) continue;
    const std::uint64_t window = wi.sb_window;
    Status r = host_.sync_file_range(wi.det.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
    if (!r && is_data_error(r.error())) {
      wi.sb_window = rec_->sb_word().peek();
      record_file_error(wi, r.error(), window);
      checked[i] = 1;
    }
  }
  for (std::size_t i = 0; i < todo.size(); ++i) {
    WbInode& wi = *todo[i];
    {
      MutexLock g(wi.mu);
      if (wi.det && !checked[i]) (void)check_locked(wi, false, false, true);
    }
    {
      // Its last writer gone, the file was just checked after it: no longer watched
      // (it leaves watched_ below), and its detector closes now if nothing else
      // needs it, not at the end of the pass.
      MutexLock g(dirty_mu_);
      if (wi.watched.load() && wi.writers.load() == 0) wi.watched.store(false);
    }
    wi.close_if_idle();
  }
  {
    MutexLock g(dirty_mu_);
    std::erase_if(watched_, [](const std::shared_ptr<WbInode>& wi) { return !wi->watched.load(); });
  }
  passes_.fetch_add(1, std::memory_order_relaxed);
}

void Writeback::relieve() {
  const std::size_t budget = det_budget_.load(std::memory_order_relaxed);
  if (budget > SIZE_MAX / 4) return;
  auto over = [&] {
    return dets_->load(std::memory_order_relaxed) >
           2 * budget + open_writers_.load(std::memory_order_relaxed);
  };
  if (!over()) return;
  // A pass under way (the thread's, or another request's) closes detectors as it
  // goes: wait for it, and run one only if the count is still over.
  MutexLock pg(pass_mu_);
  if (over()) pass_locked();
}

void Writeback::run() {
  UniqueLock lk(thread_mu_);
  const auto interval = std::chrono::milliseconds(cfg_.writeback_ms);
  while (!stop_) {
    if (thread_cv_.wait_for(lk, interval, [&] { return stop_ || hurry_; }) && stop_) break;
    hurry_ = false;
    lk.unlock();
    {
      FdScope scope;  // fds a pass takes from nodes (host/fd_slot.hpp)
      pass();
    }
    lk.lock();
  }
}

void Writeback::start() {
  served_ = true;
  if (!rec_ || thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void Writeback::finish(int workfd) {
  {
    MutexLock g(thread_mu_);
    stop_ = true;
  }
  thread_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  served_ = true;
  if (!rec_) return;
  pass();  // nothing writes any more: this writes back the rest
  if (!cfg_.is_volatile) return;
  const bool clean = mount_errno() == 0 && pending_.load() == 0;
  if (voldir_) {
    (void)write_record(voldir_.get(), clean ? "clean" : "error");
    return;
  }
  auto vol = host_.openat(workfd, "incompat/volatile", O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (vol) (void)write_record(vol->get(), clean ? "clean" : "error");
}

// --- the volatile marker and record ----------------------------------------------------

std::string Writeback::record_text(const char* state) const {
  // peek(): a later set() changes the word even with the same errno, so the next
  // mount can tell whether anything happened on U since.
  const std::uint64_t word = rec_->word().peek();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s\nboot_id %s\nupper %s\nstate %s\nerrseq %016" PRIx64 "\nerrno %s\n",
                kRecordHeader, boot_id_.c_str(), rec_->name().c_str(), state, word,
                errno_name(mount_errno()).c_str());
  return buf;
}

// Replaces the record atomically (a temporary file renamed over it). Never synced:
// after a crash the boot id differs, and that alone refuses the workdir.
Status Writeback::write_record(int voldir, const char* state) {
  const std::string text = record_text(state);
  (void)host_.unlinkat(voldir, kRecordTmp, 0);
  auto f = host_.openat(voldir, kRecordTmp, O_CREAT | O_EXCL | O_WRONLY, 0644);
  if (!f) return fail(f.error());
  for (std::size_t done = 0; done < text.size();) {
    auto n = host_.pwrite(f->get(), text.data() + done, text.size() - done,
                          static_cast<off_t>(done), 0);
    if (!n) return fail(n.error());
    done += *n;
  }
  OVL_TRY(f->close());
  return host_.renameat2(voldir, kRecordTmp, voldir, kRecord, 0);
}

std::expected<void, std::string> Writeback::check_reuse(int voldir) const {
  auto f = host_.openat(voldir, kRecord, O_RDONLY | O_NOFOLLOW);
  if (!f) {
    if (f.error() == ENOENT)
      return std::unexpected(std::string("it has no ovlfs record (work/incompat/volatile/") +
                             kRecord + "), so nothing shows that its data was written back "
                             "(the kernel's overlayfs makes such workdirs)");
    return std::unexpected(std::string("its ovlfs record cannot be read: ") + std::strerror(f.error()));
  }
  char buf[1024];
  auto n = host_.pread(f->get(), buf, sizeof buf - 1, 0);
  if (!n) return std::unexpected(std::string("its ovlfs record cannot be read: ") + std::strerror(n.error()));
  std::string text(buf, *n);
  auto field = [&](const char* key) -> std::string {
    const std::string k = std::string("\n") + key + " ";
    auto p = text.find(k);
    if (p == std::string::npos) return {};
    p += k.size();
    return text.substr(p, text.find('\n', p) - p);
  };
  if (!text.starts_with(kRecordHeader))
    return std::unexpected("its ovlfs record is not one this ovlfs understands");
  if (field("boot_id") != boot_id_)
    return std::unexpected("that mount was in an earlier boot (boot_id " + field("boot_id") +
                           "): data it had not written back may be lost");
  const std::string state = field("state");
  if (state == "error")
    return std::unexpected("that mount ended with an upper writeback error (" + field("errno") + ")");
  if (state != "clean")
    return std::unexpected("that mount did not end cleanly (it is still mounted, or its ovlfs "
                           "stopped before writing all its data back)");
  if (field("upper") != rec_->name())
    return std::unexpected("that mount used another upper filesystem (" + field("upper") +
                           ", now " + rec_->name() + ")");
  const std::uint64_t then = std::strtoull(field("errseq").c_str(), nullptr, 16);
  const std::uint64_t now = rec_->value();
  if (!errseq_rules<std::uint64_t>::same_error(now, then))
    return std::unexpected("the upper filesystem has had a writeback error since that mount "
                           "ended (" + errno_name(errseq64::errno_of(now)) + ")");
  return {};
}

// Opens (creating) work/incompat/volatile, as the kernel's overlayfs makes it.
static Result<Fd> make_volatile_dir(Host& host, int workfd) {
  Fd at;
  int dfd = workfd;
  for (const char* part : {kIncompat, kVolatile}) {
    if (auto r = host.mkdirat(dfd, part, 0755); !r && r.error() != EEXIST) return fail(r.error());
    auto d = host.openat(dfd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW);
    if (!d) return fail(d.error());
    at = std::move(*d);
    dfd = at.get();
  }
  if (auto r = host.mkdirat(dfd, kDirty, 0755); !r && r.error() != EEXIST) return fail(r.error());
  return at;
}

std::expected<void, std::string> Writeback::prepare_workdir(int workfd,
                                                            const std::string& workpath) {
  const std::string volpath = workpath + "/" + kIncompat + "/" + kVolatile;
  auto refuse = [&](const std::string& why) {
    return std::unexpected("cannot reuse workdir '" + cfg_.workdir +
                           "' of a volatile mount (EINVAL): " + why);
  };
  auto vol = host_.openat(workfd, "incompat/volatile", O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (vol) {
    if (auto r = check_reuse(vol->get()); !r) return refuse(r.error());
    reused_ = true;
  } else if (vol.error() != ENOENT) {
    return std::unexpected("cannot open '" + volpath + "': " + std::strerror(vol.error()));
  }

  if (cfg_.is_volatile) {
    // The kernel's marker (its overlayfs refuses this workdir from now on too) and
    // ovlfs's record: dirty until this mount ends cleanly.
    auto dir = make_volatile_dir(host_, workfd);
    if (!dir) return std::unexpected("cannot create '" + volpath + "/" + kDirty + "': " +
                                     std::strerror(dir.error()));
    if (auto r = write_record(dir->get(), "dirty"); !r)
      return std::unexpected("cannot write '" + volpath + "/" + kRecord + "': " +
                             std::strerror(r.error()));
    voldir_ = std::move(*dir);
    return {};
  }
  if (!reused_) return {};
  // A non-volatile mount promises durability from now on: make the earlier volatile
  // mount's data durable first (written back already; this commits it), then drop
  // the marker.
  Status r = host_.syncfs(sbfd_.get());
  sb_window_ = rec_->word().peek();
  if (!r && is_data_error(r.error())) {
    if (rec_->word().check(0) == 0) rec_->record(r.error(), true);
    return refuse("syncing the upper filesystem failed with " + errno_name(r.error()));
  }
  (void)host_.unlinkat(vol->get(), kRecord, 0);
  (void)host_.unlinkat(vol->get(), kDirty, AT_REMOVEDIR);
  auto inc = host_.openat(workfd, kIncompat, O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (inc) {
    if (auto d = host_.unlinkat(inc->get(), kVolatile, AT_REMOVEDIR); !d)
      return std::unexpected("cannot remove '" + volpath + "': " + std::strerror(d.error()));
    (void)host_.unlinkat(workfd, kIncompat, AT_REMOVEDIR);  // only if empty
  }
  return {};
}

void Writeback::status(ovlfs_status& st) const {
  st.flags |= OVLFS_STATUS_HAS_UPPER | OVLFS_STATUS_SHARED;
  if (cfg_.is_volatile) st.flags |= OVLFS_STATUS_VOLATILE;
  if (cfg_.errors == ErrorsMode::remount_ro) st.flags |= OVLFS_STATUS_REMOUNT_RO;
  if (has_uuid_) {
    st.flags |= OVLFS_STATUS_HAS_UUID;
    std::memcpy(st.upper_uuid, uuid_, 16);
  }
  st.upper_major = major(dev_);
  st.upper_minor = minor(dev_);
  st.writeback_ms = cfg_.writeback_ms;
  const std::uint64_t word = rec_->value();
  st.upper_errseq = word;
  st.upper_errors = rec_->count();
  st.upper_errno = errseq64::errno_of(word);
  const struct timespec t = rec_->time();
  st.upper_time_sec = t.tv_sec;
  st.upper_time_nsec = static_cast<__u32>(t.tv_nsec);
  st.mount_cursor = mount_cursor_;
  st.mount_errno = mount_errno();
  st.mount_errors = st.mount_errno ? rec_->count() - mount_count_ : 0;
  st.dirty_files = pending_.load();
  st.writeback_passes = passes_.load(std::memory_order_relaxed);
  st.file_errors = file_errors_.load(std::memory_order_relaxed);
  st.local_errors = local_errors_.load(std::memory_order_relaxed);
  std::snprintf(st.shm_name, sizeof st.shm_name, "%s", rec_->name().c_str());
}

// --- Overlay's entry points ----------------------------------------------------------

void Overlay::wb_start() {
  if (wb_) wb_->start();
}

void Overlay::wb_finish() {
  if (wb_) wb_->finish(work_.get());
}

void Overlay::wb_opendir(DirHandle* dh) {
  if (wb_) dh->wb = wb_->open_dir();
}

Status Overlay::wb_fsyncdir(DirHandle* dh, bool datasync) {
  if (!wb_) return {};
  if (cfg_.is_volatile) return wb_->fsync_volatile();
  return wb_->fsync_dir_result(fsyncdir(dh, datasync));
}

bool Overlay::wb_read_only() const { return wb_ && wb_->read_only(); }

void Overlay::wb_status(ovlfs_status& st) const {
  st.version = OVLFS_STATUS_VERSION;
  if (wb_) wb_->status(st);
  // Counted at the host-I/O boundary when the host counts (ovlfs mounts through a
  // CountingHost): what this daemon really asked of the upper.
  if (auto* f = dynamic_cast<const ForwardingHost*>(&host_)) {
    st.host_fsync = f->calls(HostOp::fsync);
    st.host_fdatasync = f->calls(HostOp::fdatasync);
    st.host_syncfs = f->calls(HostOp::syncfs);
    st.host_sync_file_range = f->calls(HostOp::sync_file_range);
  }
  if (!writable()) st.flags |= OVLFS_STATUS_READ_ONLY;
  if (cfg_.userxattr) st.flags |= OVLFS_STATUS_USERXATTR;
  if (aufs_whiteouts_) st.flags |= OVLFS_STATUS_AUFS_WHITEOUTS;
}

}  // namespace ovlfs
