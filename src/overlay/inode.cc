// Attributes: st_ino across layers, getattr, setattr, readlink, copy-up origins.
#include <fcntl.h>
#include <sys/stat.h>

#include <charconv>
#include <cstdio>
#include <cstring>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {

// st_ino: the real inode number when every layer is on one host filesystem (as the
// kernel's overlayfs does); otherwise the filesystem's index among the layers'
// goes in the top 8 bits, so equal numbers from different filesystems stay apart.
// (A real inode number that already uses those bits could collide; no Linux
// filesystem in common use hands out such numbers.)
std::uint64_t Overlay::map_ino(dev_t dev, ino_t ino) const {
  if (fs_devs_.size() <= 1) return ino;
  for (std::size_t i = 0; i < fs_devs_.size(); ++i)
    if (fs_devs_[i] == dev) return static_cast<std::uint64_t>(ino) ^ (std::uint64_t(i) << 56);
  return ino;
}

namespace {
thread_local pid_t tl_requester = 0;
}  // namespace

void Overlay::set_requester(pid_t tid) { tl_requester = tid; }

// Noted before the attributes are read: a change of the directory either comes
// after this (and sees a reader) or before the read (which then sees it).
void Overlay::note_attr_read(Node* node) {
  if (!node->is_dir()) return;
  const std::uint64_t me = tl_requester > 0 ? static_cast<std::uint64_t>(tl_requester)
                                            : Node::kAttrReadersMany;
  std::uint64_t v = node->attr_readers.load();
  while (v != me && v != Node::kAttrReadersMany &&
         !node->attr_readers.compare_exchange_weak(v, v == 0 ? me : Node::kAttrReadersMany)) {
  }
}

void Overlay::dir_changed(Node* dir, bool kernel_knows) {
  if (!dir || !attr_changed_) return;
  const std::uint64_t v = dir->attr_readers.exchange(0);
  if (v == 0) return;
  if (kernel_knows && tl_requester > 0 && v == static_cast<std::uint64_t>(tl_requester)) return;
  attr_changed_(dir);
}

Result<struct stat> Overlay::stat_node(Node* node) {
  note_attr_read(node);
  // A node whose object cannot be reached again (its name was removed while its
  // fd was closed) fails with ESTALE: the kernel's path walk then looks it up again.
  const int fd = node->real_fd();
  if (fd < 0) return fail(errno);
  auto st = host_.fstatat(fd, "", kStatFd);
  if (!st) return st;
  st->st_ino = node->ino.load(std::memory_order_relaxed);
  if (node->merged()) st->st_nlink = 1;  // a merged dir's link count is unknowable
  return st;
}

Cred Overlay::host_cred(uid_t uid, gid_t gid) const {
  return Cred{id_to_disk(cfg_.uid_map, uid), id_to_disk(cfg_.gid_map, gid)};
}

// "uid:gid:mode" (octal), or with ":type..." after it as newer container storage
// writes it; the type is the inode's own, whatever the value says. Layer content:
// a value that does not parse is ignored.
bool Overlay::read_override(int fd, struct stat& st) {
  char buf[64];
  auto n = host_.fgetxattr(fd, cfg_.override_xattr.c_str(), buf, sizeof buf);
  if (!n) return false;
  std::string_view v(buf, *n);
  std::uint32_t f[3];
  for (int i = 0; i < 3; ++i) {
    auto colon = v.find(':');
    std::string_view num = v.substr(0, colon);
    if (i == 2 && num.size() > 1 && num[0] == '0') num.remove_prefix(1);
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), f[i], i == 2 ? 8 : 10);
    if (num.empty() || ec != std::errc() || p != num.data() + num.size()) return false;
    if (i < 2 && colon == std::string_view::npos) return false;
    v = colon == std::string_view::npos ? std::string_view() : v.substr(colon + 1);
  }
  if (f[2] > 07777) return false;
  st.st_uid = f[0];
  st.st_gid = f[1];
  st.st_mode = (st.st_mode & S_IFMT) | f[2];
  return true;
}

Status Overlay::write_override(int fd, uid_t uid, gid_t gid, mode_t mode) {
  char buf[64];
  int len = std::snprintf(buf, sizeof buf, "%u:%u:0%o", uid, gid, mode & 07777);
  return host_.fsetxattr(fd, cfg_.override_xattr.c_str(), buf, static_cast<std::size_t>(len), 0);
}

void Overlay::to_client(Node* node, struct stat& st) {
  // Only then the real object is opened (a lower file only looked up holds no fd).
  if (uses_override(st.st_mode)) (void)read_override(node->real_fd(), st);
  // Owners of a lower on an id-mapped mount show the mount's ids already.
  const bool mapped = !node->has_upper() && node->lower_layer >= 0 &&
                      layers_[node->lower_layer].idmapped;
  if (!mapped) {
    st.st_uid = id_to_mount(cfg_.uid_map, st.st_uid);
    st.st_gid = id_to_mount(cfg_.gid_map, st.st_gid);
  }
  if (cfg_.squash_uid) st.st_uid = *cfg_.squash_uid;
  if (cfg_.squash_gid) st.st_gid = *cfg_.squash_gid;
  if (cfg_.static_nlink && S_ISDIR(st.st_mode)) st.st_nlink = 1;
}

Result<struct stat> Overlay::getattr(Node* node) {
  auto st = stat_node(node);
  if (st) to_client(node, *st);
  return st;
}

Result<struct stat> Overlay::setattr(Node* node, const SetAttr& sa_in, FileHandle* fh,
                                     const Cred& cred) {
  OVL_TRY(check_writable());
  OVL_TRY(copy_up(node));
  const int ufd = node->upper_fd();
  if (ufd < 0) return fail(errno);
  SetAttr sa = sa_in;
  if (sa.size) {
    if (node->is_dir()) return fail(EISDIR);
    int fd = -1;
    if (fh) {
      MutexLock g(fh->mu);
      if (fh->on_upper && (fh->flags & O_ACCMODE) != O_RDONLY) fd = fh->fd.get();
    }
    if (S_ISREG(node->type) && !uses_override(node->type)) {
      // truncate(2) clears set-id bits as a write does (file.cc, setid_kill).
      auto st = host_.fstatat(ufd, "", kStatFd);
      if (!st) return fail(st.error());
      if (sa.mode) st->st_mode = (st->st_mode & S_IFMT) | (sa.st.st_mode & 07777);
      if (mode_t kill = setid_kill(*st, cred)) {
        sa.mode = true;
        sa.st.st_mode = st->st_mode & 07777 & ~kill;
      }
    }
    OVL_TRY(host_.ftruncate(fd >= 0 ? fd : ufd, sa.st.st_size));
  }
  // A setattr that changes nothing is a chown with both ids -1 (the kernel sends
  // its ctime change only with a writeback cache): the upper's ctime moves, as
  // the kernel's overlayfs passes the same change on to it.
  const bool nothing = !sa.size && !sa.uid && !sa.gid && !sa.mode && !sa.atime && !sa.mtime;
  const uid_t uid = id_to_disk(cfg_.uid_map, sa.st.st_uid);
  const gid_t gid = id_to_disk(cfg_.gid_map, sa.st.st_gid);
  if (uses_override(node->type) && (sa.uid || sa.gid || sa.mode)) {
    // Owner and mode live in the override xattr (xattr_permissions=).
    auto st = host_.fstatat(ufd, "", kStatFd);
    if (!st) return fail(st.error());
    (void)read_override(ufd, *st);
    OVL_TRY(write_override(ufd, sa.uid ? uid : st->st_uid, sa.gid ? gid : st->st_gid,
                           sa.mode ? sa.st.st_mode : st->st_mode));
  } else {
    if (sa.uid || sa.gid || nothing)
      OVL_TRY(host_.fchown(ufd, sa.uid ? uid : static_cast<uid_t>(-1),
                           sa.gid ? gid : static_cast<gid_t>(-1)));
    if (sa.mode) OVL_TRY(host_.fchmod(ufd, sa.st.st_mode & 07777));
  }
  if (sa.atime || sa.mtime) {
    struct timespec ts[2];
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_nsec = UTIME_OMIT;
    if (sa.atime) ts[0] = sa.atime_now ? timespec{0, UTIME_NOW} : sa.st.st_atim;
    if (sa.mtime) ts[1] = sa.mtime_now ? timespec{0, UTIME_NOW} : sa.st.st_mtim;
    OVL_TRY(host_.futimens(ufd, ts));
  }
  return getattr(node);
}

Result<std::string> Overlay::readlink(Node* node) {
  if (!S_ISLNK(node->type)) return fail(EINVAL);
  const int fd = node->real_fd();
  if (fd < 0) return fail(errno);
  return host_.readlinkat(fd, "");
}

// The lower object an upper object was copied up from, by the file handle in its
// origin xattr (the kernel's struct ovl_fb). Decoded handles are cached: lower
// layers do not change while mounted.
Result<Overlay::Origin> Overlay::origin_of(int upperfd) {
  auto v = get_ovl_xattr(upperfd, kXattrOrigin);
  if (!v) return fail(v.error());
  const std::string& fb = *v;
  // version 0, magic 0xfb, len, flags, type, uuid[16], fid[]
  constexpr std::size_t kHdr = 21;
  if (fb.size() < kHdr || fb[0] != 0 || static_cast<unsigned char>(fb[1]) != 0xfb ||
      static_cast<unsigned char>(fb[2]) != fb.size() || fb.size() - kHdr > MAX_HANDLE_SZ)
    return fail(EIO);
  {
    MutexLock g(origin_mu_);
    if (auto it = origins_.find(fb); it != origins_.end()) return it->second;
  }
  const auto* uuid = reinterpret_cast<const unsigned char*>(fb.data() + 5);
  static const unsigned char null_uuid[16] = {};
  alignas(struct file_handle) unsigned char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  auto* fh = reinterpret_cast<struct file_handle*>(buf);
  fh->handle_bytes = static_cast<unsigned>(fb.size() - kHdr);
  fh->handle_type = static_cast<unsigned char>(fb[4]);
  std::memcpy(fh->f_handle, fb.data() + kHdr, fh->handle_bytes);
  for (const Layer& l : layers_) {
    if (l.is_upper || !l.handles) continue;
    bool match = l.has_uuid ? std::memcmp(l.uuid, uuid, 16) == 0
                            : std::memcmp(null_uuid, uuid, 16) == 0;
    if (!match) continue;
    auto fd = host_.open_by_handle(l.handles.get(), fh, O_PATH);
    if (!fd) continue;
    auto st = host_.fstatat(fd->get(), "", kStatFd);
    if (!st) continue;
    Origin o{st->st_dev, st->st_ino, st->st_nlink};
    MutexLock g(origin_mu_);
    origins_.emplace(fb, o);
    return o;
  }
  return fail(ESTALE);
}

}  // namespace ovlfs
