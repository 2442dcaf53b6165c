// Mounting: opening and checking the layers, preparing the work directory;
// statfs and syncfs of the whole overlay.
#include <fcntl.h>
#include <linux/mount.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/sysmacros.h>
#include <sys/vfs.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <thread>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"
#include "overlay/wb.hpp"

namespace ovlfs {
namespace {

std::string describe(const std::string& what, const std::string& path, int err) {
  return what + " '" + path + "': " + std::strerror(err);
}

constexpr long kExt4Magic = 0xEF53;  // ext2, ext3 and ext4 alike
constexpr long kXfsMagic = 0x58465342;
constexpr long kBtrfsMagic = 0x9123683E;

// Whether the filesystem of `fd` (on device `dev`) logs its metadata in order: data
// written back and waited for before a rename is on disk whenever that rename is.
// True for xfs and btrfs, and for an ext4 with a journal (listed in /proc/fs/jbd2
// as <device>-<inode>); anything unknown or unreadable is false.
bool logs_metadata_in_order(Host& host, int fd, dev_t dev) {
  auto sfs = host.fstatfs(fd);
  if (!sfs) return false;
  const long type = static_cast<long>(sfs->f_type);
  if (type == kXfsMagic || type == kBtrfsMagic) return true;
  if (type != kExt4Magic) return false;
  const std::string uevent = "/sys/dev/block/" + std::to_string(major(dev)) + ":" +
                             std::to_string(minor(dev)) + "/uevent";
  auto f = host.openat(AT_FDCWD, uevent.c_str(), O_RDONLY);
  if (!f) return false;
  char buf[1024];
  auto n = host.pread(f->get(), buf, sizeof buf - 1, 0);
  if (!n) return false;
  std::string_view text(buf, *n);
  std::string devname;
  for (std::size_t pos = 0; pos < text.size();) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (line.starts_with("DEVNAME=")) devname = line.substr(8);
    pos = end + 1;
  }
  if (devname.empty() || devname.find('/') != std::string::npos) return false;
  auto jbd2 = host.openat(AT_FDCWD, "/proc/fs/jbd2", O_RDONLY | O_DIRECTORY);
  if (!jbd2) return false;
  auto ents = host.read_dir(jbd2->get());
  if (!ents) return false;
  for (const HostDirent& e : *ents)
    if (e.name.size() > devname.size() + 1 && e.name.starts_with(devname) &&
        e.name[devname.size()] == '-')
      return true;
  return false;
}

// The process, other than this one, that holds a flock of the directory (dev, ino),
// from its fds' fdinfo (whose "lock:" lines show the locks taken through each
// fd's open file description), or 0. /proc/locks names the process that took the
// lock, which for a daemonized mount is the mount command that has since exited.
pid_t flock_holder(Host& host, dev_t dev, ino_t ino) {
  char key[64];
  std::snprintf(key, sizeof key, " %02x:%02x:%" PRIu64 " ", major(dev), minor(dev),
                static_cast<std::uint64_t>(ino));
  auto proc = host.openat(AT_FDCWD, "/proc", O_RDONLY | O_DIRECTORY);
  if (!proc) return 0;
  auto pids = host.read_dir(proc->get());
  if (!pids) return 0;
  const pid_t self = ::getpid();
  for (const HostDirent& p : *pids) {
    if (p.name.empty() || p.name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(p.name));
    if (pid == self) continue;
    auto fdinfo = host.openat(proc->get(), (p.name + "/fdinfo").c_str(), O_RDONLY | O_DIRECTORY);
    if (!fdinfo) continue;
    auto fds = host.read_dir(fdinfo->get());
    if (!fds) continue;
    for (const HostDirent& f : *fds) {
      if (f.name == "." || f.name == "..") continue;
      auto info = host.openat(fdinfo->get(), f.name.c_str(), O_RDONLY);
      if (!info) continue;
      char buf[4096];
      auto n = host.pread(info->get(), buf, sizeof buf - 1, 0);
      if (!n) continue;
      std::string_view text(buf, *n);
      for (std::size_t at = text.find("lock:"); at != std::string_view::npos;
           at = text.find("lock:", at + 5)) {
        std::string_view line = text.substr(at, text.find('\n', at) - at);
        if (line.find("FLOCK") != std::string_view::npos &&
            line.find("WRITE") != std::string_view::npos && line.find(key) != std::string_view::npos)
          return pid;
      }
    }
  }
  return 0;
}

}  // namespace

// One mount per workdir at a time: ovlfs holds an exclusive flock of the workdir
// (an open file description of it) from before it reads the workdir's state (the
// leftovers it clears, the volatile record it judges) until it has written its
// data back and recorded how it ended (wb_finish) — for the ovlfs program, until
// the process exits (hold_workdir_lock_until_exit), so also past the fds that
// nodes still held by the kernel keep open until then. The fd is O_CLOEXEC and is
// taken before the daemon forks: the daemon inherits the open file description,
// and the lock lives exactly as long as the daemon.
//
// A daemon outlives its unmount for as long as its final writeback takes (0.4 to
// 1.8 s with 1 GiB dirty on a loop ext4 here), so a mount of the same workdir right
// after an unmount (a container restarted) finds the lock held: it waits for it,
// polling, up to workdir_wait seconds (default 30), and then refuses with one line
// that names the workdir and the process holding it. The kernel's overlayfs marks
// the upper and work directories in use while mounted (one kernel, no waiting): a
// second mount on them is refused (EBUSY) with index=on, else only warned about;
// its unmount is synchronous, so it has no daemon still leaving. fuse-overlayfs
// takes no lock at all.
static std::expected<void, std::string> lock_workdir(Host& host, Fd& workdir, const Config& cfg) {
  auto fd = host.openat(workdir.get(), ".", O_RDONLY | O_DIRECTORY);
  if (!fd) return std::unexpected(describe("cannot open workdir", cfg.workdir, fd.error()));
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::seconds(cfg.workdir_wait_s);
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    auto r = host.flock(fd->get(), LOCK_EX | LOCK_NB);
    if (r) break;
    if (r.error() == ENOLCK || r.error() == EINVAL || r.error() == EOPNOTSUPP)
      break;  // a filesystem without flock: no exclusion
    if (r.error() != EWOULDBLOCK)
      return std::unexpected(describe("cannot lock workdir", cfg.workdir, r.error()));
    if (Clock::now() >= deadline) {
      std::string who = "another process";
      if (auto st = host.fstatat(fd->get(), "", AT_EMPTY_PATH); st)
        if (pid_t pid = flock_holder(host, st->st_dev, st->st_ino))
          who = "process " + std::to_string(pid);
      return std::unexpected("workdir '" + cfg.workdir + "' is in use by another mount (" + who +
                             " holds its lock; waited " + std::to_string(cfg.workdir_wait_s) +
                             " s for it to end)");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(20));
  }
  // The lock belongs to the open file description: kept by workdir_ (released with
  // the Overlay), and by a duplicate never closed when it must last until exit.
  if (cfg.hold_workdir_lock_until_exit)
    if (auto keep = host.dup(fd->get()); keep) (void)keep->release();
  workdir = std::move(*fd);
  return {};
}

Overlay::~Overlay() {
  // Children hold their parents; the root holds nothing of theirs. Dropping the
  // root last keeps Node destructors' unhash() calls inside a live Overlay.
  root_.reset();
}

std::expected<std::unique_ptr<Overlay>, std::string> Overlay::mount(Host& host, Config cfg) {
  if (auto c = check_config(cfg); !c) return std::unexpected(c.error());
  std::unique_ptr<Overlay> ovl(new Overlay(host, std::move(cfg)));
  if (auto r = ovl->open_layers(); !r) return std::unexpected(r.error());
  if (ovl->has_upper_) {
    if (auto r = lock_workdir(host, ovl->workdir_, ovl->cfg_); !r) return std::unexpected(r.error());
    // Writeback errors: attach to the upper's shared record before the workdir,
    // whose volatile marker is judged against it.
    const Layer& up = ovl->layers_[0];
    ovl->wb_ = std::make_shared<Writeback>(host, ovl->cfg_);
    if (auto r = ovl->wb_->attach(up.root.get(), up.dev, up.has_uuid, up.uuid); !r)
      return std::unexpected(r.error());
    if (auto r = ovl->prepare_workdir(); !r) return std::unexpected(r.error());
    if (auto r = ovl->init_uuid(); !r) return std::unexpected(r.error());
    ovl->copy_up_ordered_ = logs_metadata_in_order(host, up.root.get(), up.dev);
  }

  // The root: the upper root merged over every lower root.
  Layer& top = ovl->layers_[0];
  auto st = host.fstatat(top.root.get(), "", kStatFd);
  if (!st) return std::unexpected(describe("cannot stat layer", top.path, st.error()));
  auto root = std::make_shared<Node>(*ovl, S_IFDIR, ovl->map_ino(st->st_dev, st->st_ino));
  for (const Layer& l : ovl->layers_) {
    auto fd = host.openat(l.root.get(), ".", O_PATH | O_DIRECTORY);
    if (!fd) return std::unexpected(describe("cannot open layer", l.path, fd.error()));
    auto lst = host.fstatat(fd->get(), "", kStatFd);
    if (!lst) return std::unexpected(describe("cannot stat layer", l.path, lst.error()));
    if (l.is_upper) {
      root->set_upper(std::move(*fd), lst->st_dev, lst->st_ino);
    } else {
      root->lowers.push_back(LowerDir{l.index, FdSlot(std::move(*fd)), "", lst->st_dev,
                                      lst->st_ino});
    }
  }
  ovl->rehash(root.get(), NodeKey{st->st_dev, st->st_ino, 0, 0});
  ovl->root_ = std::move(root);
  return ovl;
}

// The directory `fd` and its ancestors up to the root of the namespace, as
// (st_dev, st_ino), itself first (at most 4096 of them).
static std::vector<std::pair<dev_t, ino_t>> ancestry(Host& host, int fd) {
  std::vector<std::pair<dev_t, ino_t>> chain;
  auto cur = host.openat(fd, ".", O_PATH | O_DIRECTORY);
  while (cur && chain.size() < 4096) {
    auto st = host.fstatat(cur->get(), "", AT_EMPTY_PATH);
    if (!st) break;
    if (!chain.empty() && chain.back() == std::pair{st->st_dev, st->st_ino}) break;  // "/"
    chain.emplace_back(st->st_dev, st->st_ino);
    cur = host.openat(cur->get(), "..", O_PATH | O_DIRECTORY);
  }
  return chain;
}

// Is the directory `fd` the directory (dev, ino), or below it?
static bool is_within(Host& host, int fd, dev_t dev, ino_t ino) {
  auto chain = ancestry(host, fd);
  return std::find(chain.begin(), chain.end(), std::pair{dev, ino}) != chain.end();
}

// The upper and the workdir are reached through a private clone of their mount
// whose atime flags are the overlay's own (cfg_.atime), as the kernel's overlayfs
// clones the upper's mount and clears its atime flags: reads move the upper files'
// atime as the overlay's relatime, strictatime or noatime says, whatever the
// upper's mount says, passthrough reads included (the kernel opens their backing
// files on the clone). The clone is of the deepest directory that holds both (a
// rename between them must stay within one mount); the upper and the workdir found
// again in it must be the same directories. Best effort: where the clone cannot be
// made (a user namespace that does not own the upper's mount, an older kernel),
// the upper's own mount decides, as it would without this.
void Overlay::clone_upper_mount() {
  auto path_of = [&](int fd) -> std::string {
    auto p = host_.readlinkat(AT_FDCWD, ("/proc/self/fd/" + std::to_string(fd)).c_str());
    return p && !p->empty() && p->front() == '/' ? *p : std::string();
  };
  const std::string up = path_of(layers_[0].root.get()), wp = path_of(workdir_.get());
  if (up.empty() || wp.empty()) return;
  // The longest common prefix that ends at a component boundary.
  std::size_t cut = 0;
  for (std::size_t i = 0; i < up.size() && i < wp.size() && up[i] == wp[i]; ++i)
    if (up[i] == '/') cut = i;
  const std::string base = cut == 0 ? "/" : up.substr(0, cut);
  auto dir = host_.openat(AT_FDCWD, base.c_str(), O_PATH | O_DIRECTORY);
  if (!dir) return;
  std::uint64_t set = MOUNT_ATTR_RELATIME;
  if (cfg_.atime == Config::Atime::strictatime) set = MOUNT_ATTR_STRICTATIME;
  if (cfg_.atime == Config::Atime::noatime) set = MOUNT_ATTR_NOATIME;
  auto clone = host_.clone_mount(dir->get(), set, MOUNT_ATTR__ATIME);
  if (!clone) return;
  auto again = [&](const std::string& path, int was) -> Result<Fd> {
    auto fd = host_.openat(clone->get(), path.c_str() + cut + 1, O_PATH | O_DIRECTORY | O_NOFOLLOW);
    if (!fd) return fd;
    auto a = host_.fstatat(fd->get(), "", AT_EMPTY_PATH);
    auto b = host_.fstatat(was, "", AT_EMPTY_PATH);
    if (!a || !b || a->st_dev != b->st_dev || a->st_ino != b->st_ino) return fail(ESTALE);
    return fd;
  };
  auto u = again(up, layers_[0].root.get());
  auto w = again(wp, workdir_.get());
  if (!u || !w) return;
  layers_[0].root = std::move(*u);
  workdir_ = std::move(*w);
}

std::expected<void, std::string> Overlay::open_layers() {
  auto open_dir = [&](const std::string& what, const std::string& path)
      -> std::expected<std::pair<Fd, struct stat>, std::string> {
    auto fd = host_.openat(AT_FDCWD, path.c_str(), O_PATH | O_DIRECTORY);
    if (!fd) return std::unexpected(describe(what, path, fd.error()));
    auto st = host_.fstatat(fd->get(), "", AT_EMPTY_PATH);
    if (!st) return std::unexpected(describe(what, path, st.error()));
    return std::pair{std::move(*fd), *st};
  };

  std::vector<std::pair<std::string, struct stat>> seen;
  has_upper_ = !cfg_.upperdir.empty();
  if (has_upper_) {
    auto u = open_dir("upperdir", cfg_.upperdir);
    if (!u) return std::unexpected(u.error());
    auto w = open_dir("workdir", cfg_.workdir);
    if (!w) return std::unexpected(w.error());
    if (u->second.st_dev != w->second.st_dev)
      return std::unexpected("workdir '" + cfg_.workdir + "' is not on the same filesystem as upperdir '" +
                             cfg_.upperdir + "'");
    if (is_within(host_, w->first.get(), u->second.st_dev, u->second.st_ino) ||
        is_within(host_, u->first.get(), w->second.st_dev, w->second.st_ino))
      return std::unexpected("workdir '" + cfg_.workdir + "' and upperdir '" + cfg_.upperdir +
                             "' must be separate subtrees");
    Layer l;
    l.index = 0;
    l.is_upper = true;
    l.path = cfg_.upperdir;
    l.root = std::move(u->first);
    l.dev = u->second.st_dev;
    layers_.push_back(std::move(l));
    seen.emplace_back("upperdir '" + cfg_.upperdir + "'", u->second);
    workdir_ = std::move(w->first);
  }
  for (const std::string& path : cfg_.lowerdirs) {
    auto d = open_dir("lowerdir", path);
    if (!d) return std::unexpected(d.error());
    if (has_upper_) {
      const Layer& up = layers_[0];
      auto ust = host_.fstatat(up.root.get(), "", AT_EMPTY_PATH);
      auto wst = host_.fstatat(workdir_.get(), "", AT_EMPTY_PATH);
      // As the kernel's overlayfs: a lower inside the upper or the workdir is
      // refused; the upper or the workdir inside a lower is mounted, and a lookup
      // that reaches it through the lower fails with ELOOP (traps_).
      if (ust && is_within(host_, d->first.get(), ust->st_dev, ust->st_ino))
        return std::unexpected("lowerdir '" + path + "' is inside upperdir '" + cfg_.upperdir +
                               "'; they must be separate subtrees");
      if (wst && is_within(host_, d->first.get(), wst->st_dev, wst->st_ino))
        return std::unexpected("lowerdir '" + path + "' is inside workdir '" + cfg_.workdir +
                               "'; they must be separate subtrees");
      if (ust && is_within(host_, up.root.get(), d->second.st_dev, d->second.st_ino))
        traps_.emplace_back(ust->st_dev, ust->st_ino);
      if (wst && is_within(host_, workdir_.get(), d->second.st_dev, d->second.st_ino))
        traps_.emplace_back(wst->st_dev, wst->st_ino);
    }
    Layer l;
    l.index = static_cast<int>(layers_.size());
    l.path = path;
    l.root = std::move(d->first);
    l.dev = d->second.st_dev;
    layers_.push_back(std::move(l));
  }
  // No lower layer may be another, or lie inside another (as the kernel's overlayfs
  // refuses): one walk up from each, against the others' roots.
  const std::size_t first_lower = has_upper_ ? 1 : 0;
  std::vector<std::vector<std::pair<dev_t, ino_t>>> chains;  // a lower's root first
  for (std::size_t i = first_lower; i < layers_.size(); i++)
    chains.push_back(ancestry(host_, layers_[i].root.get()));
  for (std::size_t i = 0; i < chains.size(); i++) {
    for (const auto& a : chains[i]) {
      for (std::size_t j = 0; j < chains.size(); j++) {
        if (j == i || chains[j].empty() || chains[j].front() != a) continue;
        const Layer& inner = layers_[first_lower + i];
        const Layer& outer = layers_[first_lower + j];
        const bool same = chains[i].front() == a;
        if (same && outer.path == inner.path)
          return std::unexpected("lowerdir '" + inner.path + "' is given twice");
        if (same)
          return std::unexpected("lowerdir '" + outer.path + "' and lowerdir '" + inner.path +
                                 "' are the same directory; give each layer once");
        return std::unexpected("lowerdir '" + inner.path + "' is inside lowerdir '" +
                               outer.path + "'; layers must be separate subtrees");
      }
    }
  }
  if (has_upper_) clone_upper_mount();
  for (Layer& l : layers_) {
    if (auto rd = host_.openat(l.root.get(), ".", O_RDONLY | O_DIRECTORY); rd)
      l.handles = std::move(*rd);
    unsigned i = 0;
    while (i < fs_devs_.size() && fs_devs_[i] != l.dev) ++i;
    if (i == fs_devs_.size()) fs_devs_.push_back(l.dev);
    l.fsid = i;
    l.has_uuid = host_.fs_uuid(l.root.get(), l.uuid).has_value();
    if (!l.is_upper && (!cfg_.uid_map.empty() || !cfg_.gid_map.empty()))
      l.idmapped = host_.idmapped_mount(l.root.get()).value_or(false);
    // A lower's atime never moves, as under the kernel's overlayfs (its clones of
    // the lowers' mounts are noatime): its reads go through a noatime clone of its
    // mount. Best effort, as clone_upper_mount.
    if (!l.is_upper)
      if (auto c = host_.clone_mount(l.root.get(), MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME); c)
        l.root = std::move(*c);
  }
  return {};
}

// Removes `name` in `dirfd` and everything below it.
static Status remove_tree(Host& host, int dirfd, const char* name, int depth = 0) {
  auto st = host.fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW);
  if (!st) return st.error() == ENOENT ? Status{} : fail(st.error());
  if (!S_ISDIR(st->st_mode)) return host.unlinkat(dirfd, name, 0);
  if (depth > 256) return fail(ELOOP);
  auto fd = host.openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (!fd) return fail(fd.error());
  auto ents = host.read_dir(fd->get());
  if (!ents) return fail(ents.error());
  for (const HostDirent& e : *ents)
    if (e.name != "." && e.name != "..") OVL_TRY(remove_tree(host, fd->get(), e.name.c_str(), depth + 1));
  return host.unlinkat(dirfd, name, AT_REMOVEDIR);
}

std::expected<void, std::string> Overlay::prepare_workdir() {
  const std::string workpath = cfg_.workdir + "/work";
  // Mode 0 as the kernel's overlayfs makes it, for root (which passes it by
  // CAP_DAC_OVERRIDE); a user's own daemon needs to search and write it.
  const uid_t me = host_.euid();
  const mode_t work_mode = me == 0 ? 0 : 0700;
  if (auto r = host_.mkdirat(workdir_.get(), "work", work_mode); !r && r.error() != EEXIST)
    return std::unexpected(describe("cannot create", workpath, r.error()));
  auto work = host_.openat(workdir_.get(), "work", O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (!work) return std::unexpected(describe("cannot open", workpath, work.error()));
  work_ = std::move(*work);
  // No one else can reach what is in it (as when this mount made it, mode 0): a
  // copy-up can build its copy with the final permission bits from the start.
  auto wst = host_.fstatat(work_.get(), "", kStatFd);
  if (!wst) return std::unexpected(describe("cannot stat", workpath, wst.error()));
  work_private_ = wst->st_uid == me && (wst->st_mode & 077) == 0;
  if (me != 0 && wst->st_uid == me && (wst->st_mode & 0700) != 0700)
    if (auto r = host_.fchmod(work_.get(), 0700); !r)
      return std::unexpected(describe("cannot make searchable", workpath, r.error()));

  // Leftovers of an interrupted copy-up or removal are never visible: clear them.
  auto ents = host_.read_dir(work_.get());
  if (!ents) return std::unexpected(describe("cannot read", workpath, ents.error()));
  for (const HostDirent& e : *ents) {
    if (e.name == "." || e.name == ".." || e.name == "incompat") continue;
    if (auto r = remove_tree(host_, work_.get(), e.name.c_str()); !r)
      return std::unexpected(describe("cannot clean", workpath + "/" + e.name, r.error()));
  }

  // The upper must hold the overlay's xattrs. The probe file is made unnamed and
  // linked where the upper allows, which copy-up then does too.
  const std::string probe = temp_name();
  auto f = host_.openat(work_.get(), ".", O_TMPFILE | O_WRONLY, 0600);
  if (f) {
    tmpfile_ = host_.linkat(f->get(), "", work_.get(), probe.c_str(), AT_EMPTY_PATH).has_value();
    if (!tmpfile_) f->reset();
  }
  if (!tmpfile_) f = host_.openat(work_.get(), probe.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
  if (!f) return std::unexpected(describe("cannot create files in", workpath, f.error()));
  int xerr = 0;
  if (auto x = set_ovl_xattr(f->get(), kXattrOpaque, "y"); !x) xerr = x.error();
  if (xerr == EPERM && !cfg_.userxattr) {
    // trusted.* needs CAP_SYS_ADMIN of the initial user namespace: a user, or root
    // of a user namespace, keeps the metadata in user.overlay.* (as `userxattr`;
    // container engines never pass it).
    cfg_.userxattr = true;
    xerr = 0;
    if (auto x = set_ovl_xattr(f->get(), kXattrOpaque, "y"); !x) {
      xerr = x.error();
      cfg_.userxattr = false;  // for the message
    }
  }
  f->reset();
  (void)host_.unlinkat(work_.get(), probe.c_str(), 0);
  if (xerr)
    return std::unexpected("upperdir '" + cfg_.upperdir + "' is on a filesystem without " +
                           (cfg_.userxattr ? "user" : "trusted") + ".* xattrs (" +
                           std::strerror(xerr) + ")");

  // Whiteouts are 0:0 character devices where the upper lets this process make
  // them (Linux 5.8+ lets anyone), else AUFS `.wh.` files (dir.cc).
  const std::string wh = temp_name();
  if (auto m = host_.mknodat(work_.get(), wh.c_str(), S_IFCHR, makedev(0, 0)); m)
    (void)host_.unlinkat(work_.get(), wh.c_str(), 0);
  else if (m.error() == EPERM || m.error() == EOPNOTSUPP)
    aufs_whiteouts_ = true;

  // A workdir that a volatile mount used may hold data that never reached the
  // disk: reused only when that mount ended safely (wb.cc). A volatile mount
  // leaves the kernel's marker and ovlfs's record.
  return wb_->prepare_workdir(work_.get(), workpath);
}

// The overlay's instance uuid, as the kernel keeps it (uuid=auto): read from the
// upper root, or made and stored at the first mount of a new overlay (an upper
// root not yet marked impure); an old overlay without one keeps none.
std::expected<void, std::string> Overlay::init_uuid() {
  if (cfg_.read_only) return {};
  const int root = layers_[0].root.get();
  unsigned char uuid[16];
  auto have = host_.fgetxattr(root, xattr_name("uuid").c_str(), uuid, sizeof uuid);
  if (have || have.error() != ENODATA) return {};
  if (host_.fgetxattr(root, xattr_name(kXattrImpure).c_str(), nullptr, 0)) return {};
  auto rnd = host_.openat(AT_FDCWD, "/dev/urandom", O_RDONLY);
  if (!rnd) return std::unexpected(describe("cannot open", "/dev/urandom", rnd.error()));
  auto n = host_.pread(rnd->get(), uuid, sizeof uuid, 0);
  if (!n || *n != sizeof uuid) return std::unexpected("cannot read /dev/urandom");
  uuid[6] = static_cast<unsigned char>((uuid[6] & 0x0f) | 0x40);  // version 4
  uuid[8] = static_cast<unsigned char>((uuid[8] & 0x3f) | 0x80);  // RFC 4122 variant
  if (auto st = host_.fsetxattr(root, xattr_name("uuid").c_str(), uuid, sizeof uuid, 0); !st)
    return std::unexpected(describe("cannot set the overlay uuid on", cfg_.upperdir, st.error()));
  return {};
}

Result<struct statvfs> Overlay::statfs() {
  auto st = host_.fstatfs(layers_[0].root.get());
  if (!st) return fail(st.error());
  struct statvfs v {};
  v.f_bsize = static_cast<unsigned long>(st->f_bsize);
  v.f_frsize = st->f_frsize ? static_cast<unsigned long>(st->f_frsize)
                            : static_cast<unsigned long>(st->f_bsize);
  v.f_blocks = st->f_blocks;
  v.f_bfree = st->f_bfree;
  v.f_bavail = st->f_bavail;
  v.f_files = st->f_files;
  v.f_ffree = st->f_ffree;
  v.f_favail = st->f_ffree;
  v.f_namemax = static_cast<unsigned long>(st->f_namelen);
  return v;
}

// syncfs of the mount: in a volatile mount, EIO on every call once the upper has
// had an error since the mount; otherwise syncs the upper and reports each error
// once per open file description and once to the mount's first caller (wb.cc).
Status Overlay::syncfs(WbOpen* ofd) {
  if (!wb_) return {};
  return wb_->syncfs(ofd);
}

}  // namespace ovlfs
