// The overlay's objects: layers, nodes (overlay inodes), open handles.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include "base/lock.hpp"
#include <string>
#include <vector>

#include "host/fd.hpp"
#include "host/fd_slot.hpp"

namespace ovlfs {

class Overlay;
struct WbInode;  // overlay/wb.hpp: writeback-error state of one upper file
struct WbOpen;   // overlay/wb.hpp: writeback-error cursors of one open file or dir

// One layer directory: the upper (index 0 when there is one) or a lower.
struct Layer {
  int index = 0;
  bool is_upper = false;
  std::string path;  // as given on the command line, for messages
  Fd root;           // O_PATH | O_DIRECTORY
  Fd handles;        // O_RDONLY | O_DIRECTORY: the mount fd open_by_handle_at needs
  dev_t dev = 0;
  unsigned fsid = 0;  // which host filesystem among the layers' (for st_ino)
  bool has_uuid = false;
  unsigned char uuid[16] = {};
  // On an id-mapped mount: its owners already show the mount's ids, so
  // uidmapping=/gidmapping= are not applied to them again (container storage
  // 1.43 hands a mount program id-mapped lowers and the mapping both).
  bool idmapped = false;
};

// A layer's directory that takes part in a merged directory: open while in use
// (Overlay::lower_dir_fd), found again by its path in the layer.
struct LowerDir {
  int layer;
  mutable FdSlot fd;  // O_PATH | O_DIRECTORY, while in use
  std::string path;  // from the layer's root ("" for the root), components only
  dev_t dev = 0;     // what the path must lead to
  ino_t ino = 0;
};

// The identity of a node in the node table. Upper objects are keyed by their real
// inode (so upper hard links share one node); lower-only objects also by the node
// of the directory they were found in, and by name when the lower inode has more
// than one link, because copy-up breaks lower hard links apart (as the kernel's
// overlayfs does without its index feature).
struct NodeKey {
  dev_t dev = 0;
  ino_t ino = 0;
  std::uintptr_t parent = 0;
  std::size_t name_hash = 0;
  bool operator==(const NodeKey&) const = default;
};

struct NodeKeyHash {
  std::size_t operator()(const NodeKey& k) const noexcept {
    std::size_t h = std::hash<std::uint64_t>()(k.ino);
    h ^= std::hash<std::uint64_t>()(k.dev) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h ^= std::hash<std::uint64_t>()(k.parent) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h ^ k.name_hash;
  }
};

// An overlay inode: one object of the merged tree, its real objects in the layers,
// and how many times the kernel holds it (the FUSE lookup count).
//
// Locking: `mu` guards the fields marked GUARDED_BY(mu), and is held only to read
// or change them: no two nodes' locks at once, nothing but leaves under it (the
// order of every lock is in base/lock.hpp). `copy_mu` serialises copy-up. The
// upper fd is published once (at creation or copy-up) with release and read with
// acquire, so the fast paths read it without the lock.
struct Node : std::enable_shared_from_this<Node> {
  Node(Overlay& o, mode_t t, std::uint64_t i) : ovl(o), type(t), ino(i) {}
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node();

  Overlay& ovl;
  const mode_t type;        // S_IFMT bits
  // The overlay's st_ino: unique across layers, kept by copy-up; changes only when
  // copy-up breaks a lower hard link apart (as in the kernel's overlayfs).
  std::atomic<std::uint64_t> ino;

  bool is_dir() const { return S_ISDIR(type); }
  bool has_upper() const { return has_upper_.load(std::memory_order_acquire); }
  // Publishes the upper object (once): pairs with the acquire in has_upper().
  void set_upper(Fd fd, dev_t at_dev, ino_t at_ino);

  // The real objects' fds (O_PATH), open until the calling thread's request ends
  // (host/fd_slot.hpp). A node keeps them only while it is in use: the overlay
  // closes those of nodes not used lately to stay under its bound, and they are
  // opened again here, from the parent's upper by name or along the lower path,
  // each checked to be the same object. -1 (errno set) if that fails (ESTALE: the
  // object is not where it was).
  // The upper object; -1 if there is none.
  int upper_fd() const;
  // The real object that answers for this node: the upper, else the top lower.
  int real_fd() const;
  // The top lower object of a non-dir.
  int lower_fd() const;
  // Opens that lower object afresh with `flags` (O_NOFOLLOW always): for a node
  // found by name (lower_at >= 0) only.
  Result<Fd> open_lower(int flags) const;

  // Fixed at creation.
  int lower_layer = -1;
  nlink_t lower_nlink = 0;
  std::vector<LowerDir> lowers;  // dirs: the lower dirs merged under the upper, top first

  // Held across the whole copy-up of this node (copy_up.cc), so that one copy
  // is made; its other fields stay reachable under `mu` meanwhile.
  Mutex<LockRank::kCopyUp> copy_mu;
  Mutex<LockRank::kNode> mu;
  std::shared_ptr<Node> parent;  // GUARDED_BY(mu): where it was last seen...
  std::string name;              // GUARDED_BY(mu): ...under which name
  bool opaque = false;           // GUARDED_BY(mu)
  bool has_origin = false;       // GUARDED_BY(mu): the upper object records a lower origin
  std::string redirect;          // GUARDED_BY(mu): the upper dir's redirect, if any
  bool unhashed = false;         // GUARDED_BY(table): no longer in the node table
  NodeKey key;                   // GUARDED_BY(table)

  // The upper dir is marked impure (holds entries with an origin): written once.
  std::atomic<bool> impure{false};

  // The real object is known to have no security.capability: the kernel asks for
  // it before every write to a file (to drop it), so the answer is kept. Set for a
  // file the overlay created and after a lookup of it found none; caps_gen, bumped
  // around every setxattr of it, keeps a racing lookup from caching a stale "none".
  std::atomic<bool> no_caps{false};
  std::atomic<std::uint32_t> caps_gen{0};

  // A directory's upper has a default ACL: 1, 0, or -1 when not known (looked up
  // at the first create in it; forgotten when that ACL is set or removed).
  std::atomic<signed char> default_acl{-1};

  // Bumped whenever the overlay adds or removes a name in this directory.
  std::atomic<std::uint64_t> dir_version{0};

  // A directory's attributes handed to the kernel since it last changed: by which
  // task (thread id), or kAttrReadersMany; 0: none (Overlay::dir_changed).
  static constexpr std::uint64_t kAttrReadersMany = ~std::uint64_t{0};
  std::atomic<std::uint64_t> attr_readers{0};

  // Open files of it passing through to its upper for reading and writing (the
  // FUSE adapter's count): a shared mapping of one changes the upper's times
  // unseen, so its attributes are not cached while any is open.
  std::atomic<std::uint32_t> pt_writers{0};

  // The kernel's lookup count; while non-zero, `pin` keeps the node alive.
  std::uint64_t nlookup = 0;     // GUARDED_BY(lookup_mu)
  std::shared_ptr<Node> pin;     // GUARDED_BY(lookup_mu)
  Mutex<LockRank::kNodeLookup> lookup_mu;

  // A directory whose listing merges layers (the kernel's OVL_TYPE_MERGE).
  bool merged() const {
    return is_dir() && (has_upper() ? !lowers.empty() : lowers.size() > 1);
  }

  // A lower non-dir found by name: lower_name in lower_dir's lowers[lower_at] (the
  // parent it was found in, kept alive for it). Fixed at creation.
  int lower_at = -1;
  std::shared_ptr<Node> lower_dir;
  std::string lower_name;

  // Whose upper fd stays open (fds.cc): the root's; a node's whose name was
  // removed while the kernel held it (any one name of several: the node may
  // know it by that one), which cannot be found again by name.
  std::atomic<bool> keep_fds{false};

  // Writeback-error state of the upper file (wb.cc), made on first open.
  std::shared_ptr<WbInode> wb;  // GUARDED_BY(Writeback::nodes_mu_)

 private:
  friend class Overlay;
  // An fd just put in a slot of this node: the overlay may close others.
  int opened(FdRef r) const;
  // Held this request: r's fd, and the node counts as used lately.
  int used(FdRef r) const {
    if (!used_.load(std::memory_order_relaxed)) used_.store(true, std::memory_order_relaxed);
    return FdScope::hold(std::move(r));
  }

  std::atomic<bool> has_upper_{false};
  dev_t upper_dev_ = 0;  // the upper object, as its slot must find it again
  ino_t upper_ino_ = 0;
  mutable FdSlot upper_;
  mutable FdSlot lower_;
  bool lower_fixed_ = false;  // lower_ was opened along a path: never closed
  mutable std::atomic<bool> used_{false};     // an fd of it was used since the last sweep
  mutable std::atomic<bool> in_ring_{false};  // listed for a sweep (Overlay::fd_ring_)
};

using NodeRef = std::shared_ptr<Node>;

// One merged directory entry, as readdir lists it.
struct DirEntry {
  std::string name;
  std::uint64_t ino;
  unsigned char type;  // DT_*
};

// An open directory: a snapshot of its merged entries, so offsets stay stable
// while the directory changes; refreshed when read again from offset 0.
struct DirHandle {
  NodeRef node;
  Mutex<LockRank::kDirHandle> mu;
  std::vector<DirEntry> entries;  // GUARDED_BY(mu)
  std::uint64_t version = 0;      // GUARDED_BY(mu)
  bool loaded = false;            // GUARDED_BY(mu)
  std::shared_ptr<WbOpen> wb;     // writeback-error cursors (wb.cc); set at open
};

// An open file: the real file it reads and writes.
struct FileHandle {
  NodeRef node;
  Mutex<LockRank::kFileHandle> mu;
  Fd fd;                 // GUARDED_BY(mu) for the switch to the upper after copy-up
  bool on_upper = false; // GUARDED_BY(mu)
  int flags = 0;
  bool rdwr = false;     // fd is open O_RDWR with no other status flags: it can back
                         // a passthrough open as it is
  Fd spare;              // GUARDED_BY(mu): the read-write fd of a copy-up this open
                         // made, until a passthrough open takes it as its backing
  Fd cached;             // GUARDED_BY(mu): an O_DIRECT open's fd without O_DIRECT, for
                         // the writeback of its page cache (Overlay::write)
  std::shared_ptr<WbOpen> wb;  // writeback-error cursors (wb.cc); set at open
  // Open for writing a file with a set-id bit: each write clears what the
  // writer's write would clear (Overlay::setid_kill); never passed through.
  bool watch_setid = false;
};

}  // namespace ovlfs
