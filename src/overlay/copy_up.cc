// Copy-up: making the upper copy of a lower object before it changes.
//
// Atomic: the copy is built in the work directory (data, xattrs, origin, owner,
// mode, times) and put into place last, so a crash never leaves a half-copied object
// visible. A regular file is built unnamed (O_TMPFILE) and linked into place, where
// the upper allows: no work directory entry to add and remove, and nothing left
// behind by a crash. Other objects are built under a temporary name and renamed.
// Data goes by reflink (FICLONE) when the filesystems allow, else by
// copy_file_range, else by read and write; a sparse file's holes stay holes.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"
#include "overlay/wb.hpp"

namespace ovlfs {

Status Overlay::copy_up(Node* node, Fd* data_fd) {
  if (node->has_upper()) return {};
  OVL_TRY(check_writable());
  if (wb_ && S_ISREG(node->type)) wb_->relieve();  // a copy is checked like written data
  // The ancestors first, top down: each round copies up the highest one that is
  // still only lower, found by walking up (no recursion: a layer's tree may be
  // deeper than any stack).
  for (;;) {
    if (node->has_upper()) return {};
    Node* n = node;
    NodeRef held;  // keeps n alive while it is an ancestor
    NodeRef parent;
    std::string name;
    for (;;) {
      {
        MutexLock g(n->mu);
        parent = n->parent;
        name = n->name;
      }
      // Only the root has no parent, and it is upper.
      if (!parent) return fail(EIO);
      if (parent->has_upper()) break;
      held = parent;
      n = held.get();
    }
    bool changed = false;
    {
      // Held across the copy: a second copy-up of n waits here, then finds it
      // upper. A rename of n copies it up first, so it waits here too, and n
      // stays where the copy is linked. n's other fields stay reachable.
      MutexLock c(n->copy_mu);
      if (n->has_upper()) continue;
      {
        MutexLock g(n->mu);
        if (n->parent != parent || n->name != name) continue;  // moved meanwhile
      }
      OVL_TRY(copy_up_locked(n, parent.get(), name, n == node ? data_fd : nullptr, &changed));
    }
    // Told with no lock held: the kernel's invalidation may wait for requests.
    if (changed && attr_changed_) attr_changed_(n);
    dir_changed(parent.get(), false);  // the kernel asked about n, not its parent
  }
}

Status Overlay::copy_up_data(int srcfd, int dstfd, const struct stat& st, int layer) {
  const off_t size = st.st_size;
  if (size == 0) return {};
  const std::uint64_t bit = std::uint64_t{1} << std::min(layer, 63);
  if (!(no_clone_.load(std::memory_order_relaxed) & bit)) {
    Status c = host_.clone_file(dstfd, srcfd);
    if (c) return {};
    // Not supported between these filesystems (EXDEV: not the same one).
    if (c.error() == EOPNOTSUPP || c.error() == ENOTTY || c.error() == EXDEV ||
        c.error() == EINVAL || c.error() == ENOSYS)
      no_clone_.fetch_or(bit, std::memory_order_relaxed);
  }
  // A file with fewer blocks than its size needs has holes: it is copied extent by
  // extent (SEEK_DATA, SEEK_HOLE), so that the holes stay holes, as in the kernel's
  // overlayfs; a lower layer's sparse file of a terabyte must not fill the upper.
  if (static_cast<off_t>(st.st_blocks) * 512 < size) {
    off_t pos = 0;
    while (pos < size) {
      auto data = host_.lseek(srcfd, pos, SEEK_DATA);
      if (!data) {
        if (data.error() == ENXIO) break;  // only a hole from pos on
        if (pos == 0 && (data.error() == EINVAL || data.error() == EOPNOTSUPP)) {
          // No SEEK_DATA on that filesystem: the whole file, holes as zeros.
          return copy_range(srcfd, dstfd, 0, size);
        }
        return fail(data.error());
      }
      if (*data >= size) break;
      auto hole = host_.lseek(srcfd, *data, SEEK_HOLE);
      if (!hole) return fail(hole.error());
      const off_t end = std::min(*hole, size);
      OVL_TRY(copy_range(srcfd, dstfd, *data, end - *data));
      pos = end;
    }
    return host_.ftruncate(dstfd, size);  // the size, past a hole at the end
  }
  return copy_range(srcfd, dstfd, 0, size);
}

// Copies len bytes at off of srcfd to the same offset of dstfd: copy_file_range,
// else (another filesystem, or one without it) read and write.
Status Overlay::copy_range(int srcfd, int dstfd, off_t off, off_t len) {
  const off_t end = off + len;
  off_t in = off, out = off;
  bool cfr = true;
  while (in < end) {
    if (cfr) {
      auto n = host_.copy_file_range(srcfd, &in, dstfd, &out, static_cast<std::size_t>(end - in));
      if (n && *n > 0) continue;
      if (n && *n == 0) break;  // the source shrank
      if (in != off || (n.error() != EXDEV && n.error() != EINVAL && n.error() != ENOSYS &&
                        n.error() != EOPNOTSUPP))
        return fail(n.error());
      cfr = false;
    }
    static constexpr std::size_t kChunk = 1 << 20;
    auto buf = std::make_unique_for_overwrite<char[]>(kChunk);
    while (in < end) {
      auto n = host_.pread(srcfd, buf.get(), std::min<std::size_t>(kChunk, end - in), in);
      if (!n) return fail(n.error());
      if (*n == 0) break;
      for (std::size_t done = 0; done < *n;) {
        auto w = host_.pwrite(dstfd, buf.get() + done, *n - done, in + static_cast<off_t>(done), 0);
        if (!w) return fail(w.error());
        done += *w;
      }
      in += static_cast<off_t>(*n);
    }
    break;
  }
  return {};
}

Status Overlay::copy_xattrs(int srcfd, int dstfd, bool* caps) {
  // Most objects have few or no xattrs: one call into a small buffer, sized only
  // when that is too short.
  std::string list(1024, '\0');
  auto n = host_.flistxattr(srcfd, list.data(), list.size());
  while (!n && n.error() == ERANGE) {
    auto need = host_.flistxattr(srcfd, nullptr, 0);
    if (!need) return fail(need.error());
    list.resize(*need);
    n = host_.flistxattr(srcfd, list.data(), list.size());
  }
  if (!n) return n.error() == ENOTSUP ? Status{} : fail(n.error());
  list.resize(*n);
  std::string value;
  for (std::size_t pos = 0; pos < list.size();) {
    const char* name = list.data() + pos;
    pos += std::strlen(name) + 1;
    if (is_private_xattr(name)) continue;
    if (caps && name == kXattrCaps) *caps = true;
    auto vsize = host_.fgetxattr(srcfd, name, nullptr, 0);
    if (!vsize) return fail(vsize.error());
    value.resize(*vsize);
    auto got = host_.fgetxattr(srcfd, name, value.data(), value.size());
    if (!got) return fail(got.error());
    auto set = host_.fsetxattr(dstfd, name, value.data(), *got, 0);
    // Attributes the upper cannot hold (a namespace it does not support) are
    // skipped, as the kernel's overlayfs skips them.
    if (!set && set.error() != EOPNOTSUPP && set.error() != EPERM) return set;
  }
  return {};
}

// Records where an upper object came from, as the kernel's overlayfs does: the
// lower's file handle in a struct ovl_fb (version 0, magic 0xfb, len, flags, type,
// the filesystem's uuid, the handle).
Status Overlay::set_origin(int lowerfd, int layer, int upperfd) {
  alignas(struct file_handle) unsigned char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  auto* fh = reinterpret_cast<struct file_handle*>(buf);
  fh->handle_bytes = MAX_HANDLE_SZ;
  int mount_id;
  OVL_TRY(host_.name_to_handle(lowerfd, fh, &mount_id));
  std::string fb(21 + fh->handle_bytes, '\0');
  fb[0] = 0;
  fb[1] = static_cast<char>(0xfb);
  fb[2] = static_cast<char>(fb.size());
  fb[3] = 0;  // little-endian handle
  fb[4] = static_cast<char>(fh->handle_type);
  if (layers_[layer].has_uuid) std::memcpy(fb.data() + 5, layers_[layer].uuid, 16);
  std::memcpy(fb.data() + 21, fh->f_handle, fh->handle_bytes);
  OVL_TRY(set_ovl_xattr(upperfd, kXattrOrigin, fb));
  // Known without decoding the handle again, which a user cannot do
  // (open_by_handle_at wants CAP_DAC_READ_SEARCH of the initial namespace): the
  // copy keeps its number in readdir and stat alike for as long as this mount lives.
  if (auto st = host_.fstatat(lowerfd, "", kStatFd); st) {
    MutexLock g(origin_mu_);
    origins_.emplace(fb, Origin{st->st_dev, st->st_ino, st->st_nlink});
  }
  return {};
}

Status Overlay::copy_up_locked(Node* node, Node* parent, const std::string& name,
                               Fd* data_fd, bool* attr_changed) {
  const int pu = parent->upper_fd();
  if (pu < 0) return fail(errno);
  // A regular file not opened yet is opened for reading right away: the copy
  // needs that, and an O_PATH fd besides would be one more open.
  Fd direct;
  if (S_ISREG(node->type) && node->lower_at >= 0) {
    auto d = node->open_lower(O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (!d) return fail(d.error());
    direct = std::move(*d);
  }
  const int src = node->is_dir() ? dir_fd(*node, node->lowers.front())
                  : direct       ? direct.get()
                                 : node->lower_fd();
  if (src < 0) return fail(errno);
  const int layer = node->is_dir() ? node->lowers.front().layer : node->lower_layer;
  auto st = host_.fstatat(src, "", kStatFd);
  if (!st) return fail(st.error());
  // Copy-up is not a change of the parent: its times are put back afterwards.
  auto pst = host_.fstatat(pu, "", kStatFd);
  if (!pst) return fail(pst.error());
  // A regular file is built unnamed where the upper allows (tmpfile_), anything
  // else under the temporary name `tmp`, in the work directory.
  const bool named = !(S_ISREG(st->st_mode) && tmpfile_);
  const std::string tmp = named ? temp_name() : std::string();
  const char* t = tmp.c_str();

  Fd tfd;
  struct stat ust {};  // the copy's, once made
  Fd in, out;  // a regular file's: the lower for reading, the copy read-write
  bool caps = false;  // whether it has a security.capability
  bool origin = false;  // an origin xattr was written
  int rmflag = 0;
  switch (st->st_mode & S_IFMT) {
    case S_IFREG: {
      // Created with its final permission bits (the daemon's umask is 0) where no
      // one else can reach it: no chmod afterwards when it has no set-id bits and
      // the owner is already right.
      const mode_t perm = work_private_ ? st->st_mode & 0777 : 0600;
      auto o = named ? host_.openat(work_.get(), t, O_CREAT | O_EXCL | O_RDWR, perm)
                     : host_.openat(work_.get(), ".", O_TMPFILE | O_RDWR, perm);
      if (!o) return fail(o.error());
      out = std::move(*o);
      Status data = [&]() -> Status {
        if (direct) {
          in = std::move(direct);  // src stays open: it is in's fd
        } else {
          auto i = host_.reopen(src, O_RDONLY);
          if (!i) return fail(i.error());
          in = std::move(*i);
        }
        return copy_up_data(in.get(), out.get(), *st, layer);
      }();
      if (!data) {
        if (named) (void)host_.unlinkat(work_.get(), t, 0);
        return data;
      }
      break;
    }
    case S_IFDIR:
      OVL_TRY(host_.mkdirat(work_.get(), t, 0700));
      rmflag = AT_REMOVEDIR;
      break;
    case S_IFLNK: {
      auto target = host_.readlinkat(src, "");
      if (!target) return fail(target.error());
      OVL_TRY(host_.symlinkat(target->c_str(), work_.get(), t));
      break;
    }
    default:
      OVL_TRY(host_.mknodat(work_.get(), t, st->st_mode & S_IFMT, st->st_rdev));
      break;
  }
  Status s = [&]() -> Status {
    if (named) {
      auto fd = host_.openat(work_.get(), t, kPathFlags);
      if (!fd) return fail(fd.error());
      tfd = std::move(*fd);
    }
    // Metadata through the open files where there are some: the fd calls then
    // reach them directly, not through /proc paths.
    const int from = in ? in.get() : src;
    const int to = out ? out.get() : tfd.get();
    // The new object's own attributes: what differs from the lower's is set below.
    // Its inode number stays through the link or rename.
    auto nst = host_.fstatat(to, "", kStatFd);
    if (!nst) return fail(nst.error());
    ust = *nst;
    // Owner first: a chown clears the set-id bits, so the mode goes on after it,
    // and it removes a security.capability, so the xattrs go on after both.
    // A lower on an id-mapped mount shows the mount's ids: the upper keeps the
    // ids on disk.
    uid_t uid = st->st_uid;
    gid_t gid = st->st_gid;
    if (layers_[layer].idmapped) {
      uid = id_to_disk(cfg_.uid_map, uid);
      gid = id_to_disk(cfg_.gid_map, gid);
    }
    bool chown = nst->st_uid != uid || nst->st_gid != gid;
    if (chown) OVL_TRY(host_.fchown(to, uid, gid));
    if (!S_ISLNK(st->st_mode) && ((nst->st_mode & 07777) != (st->st_mode & 07777) ||
                                  (chown && (st->st_mode & 06000))))
      OVL_TRY(host_.fchmod(to, st->st_mode & 07777));
    OVL_TRY(copy_xattrs(from, to, &caps));
    // No origin for a lower hard link broken apart: its number is its own now.
    if (node->is_dir() || node->lower_nlink <= 1) origin = set_origin(src, layer, to).has_value();
    struct timespec ts[2] = {st->st_atim, st->st_mtim};
    OVL_TRY(host_.futimens(to, ts));
    // The whole copy on disk before it is visible (a volatile mount never syncs):
    // on an upper that logs its metadata in order, the data written back and
    // waited for is enough, since the rename commits with or after the copy's
    // block allocation and size; elsewhere an fsync.
    if (out && !cfg_.is_volatile) {
      if (copy_up_ordered_)
        OVL_TRY(host_.sync_file_range(out.get(), 0, 0, kWriteAndWait));
      else
        OVL_TRY(host_.fsync(out.get()));
    }
    if (named) return host_.renameat2(work_.get(), t, pu, name.c_str(), RENAME_NOREPLACE);
    // Like the rename, the link fails if the name exists.
    OVL_TRY(host_.linkat(out.get(), "", pu, name.c_str(), AT_EMPTY_PATH));
    auto fd = host_.openat(pu, name.c_str(), kPathFlags);
    if (!fd) {
      (void)host_.unlinkat(pu, name.c_str(), 0);  // undone: the object stays lower
      return fail(fd.error());
    }
    tfd = std::move(*fd);
    return {};
  }();
  if (!s) {
    if (named) (void)host_.unlinkat(work_.get(), t, rmflag);
    return s;
  }

  mark_impure(parent);  // it may now hold entries that are not pure upper
  struct timespec pts[2] = {pst->st_atim, pst->st_mtim};
  (void)host_.futimens(pu, pts);

  // Attributes the kernel may hold that copy-up changes: a directory becomes
  // merged (link count 1); a lower hard link is broken apart (its own st_ino).
  bool changed = node->is_dir();
  if (!node->is_dir() && node->lower_nlink > 1) {
    node->ino.store(map_ino(ust.st_dev, ust.st_ino), std::memory_order_relaxed);
    changed = true;
  }
  if (origin) {
    MutexLock g(node->mu);
    node->has_origin = true;
  }
  // Known before the upper is visible: a setxattr of it waits for has_upper().
  if (!caps) node->no_caps.store(true, std::memory_order_release);
  node->set_upper(std::move(tfd), ust.st_dev, ust.st_ino);
  rehash(node, NodeKey{ust.st_dev, ust.st_ino, 0, 0});
  // The copied data's writeback is checked like written data (its detector shares
  // the copy's open file).
  if (wb_) wb_->note_copy_up(*node, out ? out.get() : -1);
  if (data_fd && out) *data_fd = std::move(out);
  *attr_changed = changed;
  return {};
}

}  // namespace ovlfs
