// Merged directory listings: every layer's names once, whiteouts (of both formats)
// hidden, each with the st_ino that stat gives for it.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <unordered_set>

#include "overlay/internal.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs {

// Lists a directory's merged entries (without "." and ".."). With stop_at_first,
// returns after the first visible entry: enough to tell whether it is empty.
Result<std::vector<DirEntry>> Overlay::read_merged(Node* node, bool stop_at_first) {
  std::vector<DirEntry> out;
  std::unordered_set<std::string> seen;
  struct Source {
    int fd;
    dev_t dev;
    bool upper;
  };
  std::vector<Source> sources;
  if (node->has_upper()) sources.push_back({node->upper_fd(), layers_[0].dev, true});
  for (const LowerDir& ld : node->lowers)
    sources.push_back({dir_fd(*node, ld), layers_[ld.layer].dev, false});
  for (const Source& src : sources)
    if (src.fd < 0) return fail(errno);
  const bool many = sources.size() > 1;
  bool impure = false;
  if (node->has_upper() && !many) {
    auto v = get_ovl_xattr(node->upper_fd(), kXattrImpure);
    impure = v.has_value();
  }

  // AUFS whiteouts (".wh.NAME") hide NAME in the sources after their own, as
  // lookup_real does (a name and its whiteout in one layer: the name shows).
  std::vector<std::string> hidden;
  for (const Source& src : sources) {
    auto ents = host_.read_dir(src.fd);
    if (!ents) return fail(ents.error());
    for (std::string& h : hidden) seen.insert(std::move(h));
    hidden.clear();
    for (HostDirent& e : *ents) {
      if (e.name == "." || e.name == "..") continue;
      if (is_aufs_name(e.name)) {
        if (many) hidden.push_back(e.name.substr(kAufsPrefix.size()));
        continue;
      }
      if (many && !seen.insert(e.name).second) continue;
      if (e.type == DT_CHR || e.type == DT_UNKNOWN) {
        auto st = host_.fstatat(src.fd, e.name.c_str(), AT_SYMLINK_NOFOLLOW);
        if (!st) {
          if (st.error() == ENOENT) continue;  // removed meanwhile
          return fail(st.error());
        }
        if (is_whiteout(*st)) continue;
        e.type = static_cast<unsigned char>(IFTODT(st->st_mode));
        e.ino = st->st_ino;
      }
      std::uint64_t ino = map_ino(src.dev, e.ino);
      if (src.upper && (many || impure)) {
        // A copied-up object keeps its origin's number (see node_get).
        auto fd = host_.openat(src.fd, e.name.c_str(), kPathFlags);
        if (fd) {
          auto o = origin_of(fd->get());
          if (o && (e.type == DT_DIR || o->nlink == 1)) {
            ino = map_ino(o->dev, o->ino);
          } else if (!o && o.error() != ENODATA && e.type == DT_DIR) {
            // As lookup does (node_get): the top lower directory of that name.
            for (const Source& low : sources) {
              if (low.upper) continue;
              auto lst = host_.fstatat(low.fd, e.name.c_str(), AT_SYMLINK_NOFOLLOW);
              if (lst && S_ISDIR(lst->st_mode)) {
                ino = map_ino(lst->st_dev, lst->st_ino);
                break;
              }
              if (lst) break;
            }
          }
        }
      }
      out.push_back(DirEntry{std::move(e.name), ino, e.type});
      if (stop_at_first) return out;
    }
  }
  return out;
}

Result<std::unique_ptr<DirHandle>> Overlay::opendir(Node* node) {
  if (!node->is_dir()) return fail(ENOTDIR);
  auto dh = std::make_unique<DirHandle>();
  dh->node = node->shared_from_this();
  return dh;
}

Status Overlay::readdir(DirHandle* dh, off_t off,
                        const std::function<bool(const DirEntry&, off_t next)>& emit) {
  MutexLock g(dh->mu);
  Node* node = dh->node.get();
  const std::uint64_t version = node->dir_version.load(std::memory_order_relaxed);
  if (!dh->loaded || (off == 0 && dh->version != version)) {
    auto ents = read_merged(node);
    if (!ents) return fail(ents.error());
    std::uint64_t pino = node->ino;
    {
      MutexLock ng(node->mu);
      if (node->parent) pino = node->parent->ino;
    }
    ents->insert(ents->begin(), {DirEntry{".", node->ino, DT_DIR}, DirEntry{"..", pino, DT_DIR}});
    dh->entries = std::move(*ents);
    dh->version = version;
    dh->loaded = true;
  }
  for (std::size_t i = static_cast<std::size_t>(off); i < dh->entries.size(); ++i)
    if (!emit(dh->entries[i], static_cast<off_t>(i + 1))) break;
  return {};
}

Status Overlay::fsyncdir(DirHandle* dh, bool datasync) {
  Node* node = dh->node.get();
  if (!node->has_upper() || cfg_.is_volatile) return {};
  const int ufd = node->upper_fd();
  if (ufd < 0) return fail(errno);
  auto fd = host_.openat(ufd, ".", O_RDONLY | O_DIRECTORY);
  if (!fd) return fail(fd.error());
  return datasync ? host_.fdatasync(fd->get()) : host_.fsync(fd->get());
}

}  // namespace ovlfs
