// The overlay filesystem: the operations the FUSE adapter calls, in overlay terms.
//
// Overlay holds no libfuse types and makes no syscalls of its own: every host call
// goes through the Host it was mounted with. Private members are grouped by the
// file that defines them, as in the kernel's overlayfs:
//   super.cc (mount, statfs, sync)    namei.cc (lookup)       inode.cc (attributes)
//   dir.cc (create, remove, rename)   copy_up.cc              readdir.cc
//   file.cc (open, read, write, fsync) xattrs.cc              util.cc
#pragma once

#include <sys/statvfs.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "host/host.hpp"
#include "overlay/ovl_entry.hpp"
#include "overlay/params.hpp"

struct ovlfs_status;  // ovlfs/ioctl.h

namespace ovlfs {

class Writeback;  // overlay/wb.hpp

// Who asks: the caller's credentials, for the owner of what it creates, and its
// umask, which applies to what it creates where the directory has no default ACL
// (as the upper's own filesystem decides for a process that creates there).
struct Cred {
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t umask = 0;
  pid_t pid = 0;  // the calling task (its groups and capabilities), 0: unknown
};

// An entry handed to the kernel: the node (its lookup count already raised) and
// its attributes.
struct Entry {
  Node* node;
  struct stat attr;
};

// What setattr changes (FUSE_SET_ATTR_* in overlay terms).
struct SetAttr {
  bool mode = false, uid = false, gid = false, size = false;
  bool atime = false, mtime = false, atime_now = false, mtime_now = false, ctime = false;
  struct stat st {};
};

class Overlay {
 public:
  // super.cc: opens and checks the layers, prepares the workdir.
  static std::expected<std::unique_ptr<Overlay>, std::string> mount(Host& host, Config cfg);
  ~Overlay();

  const Config& config() const { return cfg_; }
  Node* root() const { return root_.get(); }
  // False also once errors=remount-ro has met an upper writeback error (wb.cc).
  bool writable() const { return has_upper_ && !cfg_.read_only && !wb_read_only(); }

  // namei.cc
  Result<Entry> lookup(Node* parent, std::string_view name);
  void forget(Node* node, std::uint64_t n);

  // inode.cc
  // The caller's ids as the layers store them (uidmapping=, gidmapping=).
  Cred host_cred(uid_t uid, gid_t gid) const;
  Result<struct stat> getattr(Node* node);
  // `cred`: the caller, whose truncate clears set-id bits as the kernel's would.
  Result<struct stat> setattr(Node* node, const SetAttr& sa, FileHandle* fh,
                              const Cred& cred = {});
  Result<std::string> readlink(Node* node);

  // dir.cc
  Result<Entry> mknod(Node* parent, std::string_view name, mode_t mode, dev_t rdev,
                      const Cred& cred);
  Result<Entry> mkdir(Node* parent, std::string_view name, mode_t mode, const Cred& cred);
  Result<Entry> symlink(Node* parent, std::string_view name, const char* target,
                        const Cred& cred);
  Result<Entry> link(Node* node, Node* newparent, std::string_view newname);
  Status unlink(Node* parent, std::string_view name);
  Status rmdir(Node* parent, std::string_view name);
  Status rename(Node* parent, std::string_view name, Node* newparent,
                std::string_view newname, unsigned flags);

  // file.cc
  // `cred`: the caller's (an open that truncates clears set-id bits for it).
  Result<std::unique_ptr<FileHandle>> open(Node* node, int flags, const Cred& cred);
  Result<std::pair<Entry, std::unique_ptr<FileHandle>>> create(
      Node* parent, std::string_view name, mode_t mode, int flags, const Cred& cred);
  Result<std::size_t> read(FileHandle* fh, char* buf, std::size_t size, off_t off);
  // `cache_writeback`: the kernel writes back pages of its cache (not the caller's
  // own write, even on an O_DIRECT handle).
  Result<std::size_t> write(FileHandle* fh, const char* buf, std::size_t size, off_t off,
                            const Cred& cred = {}, bool cache_writeback = false);
  Status fsync(FileHandle* fh, bool datasync);
  Status release(FileHandle* fh);
  Status fallocate(FileHandle* fh, int mode, off_t off, off_t len, const Cred& cred = {});
  Result<off_t> lseek(FileHandle* fh, off_t off, int whence);
  // The upper file, opened for reading and writing, for the kernel to move a
  // file's data itself (FUSE passthrough); EINVAL when it has no upper copy.
  // The real file to back a passthrough open of `fh`: fh's own fd when it serves
  // as it is, else a new read-write one, kept open in `opened` for the caller.
  Result<int> open_backing(Node* node, FileHandle* fh, Fd& opened);
  // Whether file data may bypass the daemon: not when every write must be seen
  // (volatile writeback checks, errors=remount-ro) or the options say no.
  bool passthrough_allowed() const {
    return cfg_.passthrough && cfg_.errors != ErrorsMode::remount_ro;
  }

  // readdir.cc
  Result<std::unique_ptr<DirHandle>> opendir(Node* node);
  // Lists entries from offset `off` (0 = start) until `emit` returns false; the
  // offset of an entry is its index + 1.
  Status readdir(DirHandle* dh, off_t off,
                 const std::function<bool(const DirEntry&, off_t next)>& emit);
  Status fsyncdir(DirHandle* dh, bool datasync);

  // xattrs.cc
  // `cred`: the caller; an access ACL it sets clears set-group-ID as the kernel's would.
  Status setxattr(Node* node, const char* name, const void* value, std::size_t size,
                  int flags, const Cred& cred = {});
  Result<std::size_t> getxattr(Node* node, const char* name, void* value, std::size_t size);
  // Lists trusted.* names only to a caller that may read them (root).
  Result<std::size_t> listxattr(Node* node, char* list, std::size_t size, const Cred& cred);
  Status removexattr(Node* node, const char* name);

  // super.cc
  Result<struct statvfs> statfs();
  // syncfs of the mount (SPEC 2) through an open file or directory (its cursors).
  Status syncfs(WbOpen* ofd);

  // wb.cc: writeback errors (SPEC 2; the machinery is overlay/wb.hpp).
  // Starts the writeback thread: once serving, after daemonizing (fork).
  void wb_start();
  // The FUSE loop has ended: writes dirty upper data back, records a clean end.
  void wb_finish();
  // An open directory gets its own error cursors.
  void wb_opendir(DirHandle* dh);
  // fsync of an open directory, with the mount's error contract.
  Status wb_fsyncdir(DirHandle* dh, bool datasync);
  // What `ovlfs status` prints (the host-call counts are the caller's to fill).
  void wb_status(ovlfs_status& st) const;
  bool wb_read_only() const;
  Writeback* writeback() const { return wb_.get(); }

  // Called when the overlay changes a node's attributes behind the kernel's back
  // (copy-up of a directory or of a lower hard link), so the kernel drops what it
  // has cached. Set once, before serving.
  void set_attr_changed(std::function<void(Node*)> fn) { attr_changed_ = std::move(fn); }

  // The task (thread id) whose request the calling thread serves, 0 if unknown;
  // set by the adapter around each request that reads or changes a directory's
  // attributes.
  static void set_requester(pid_t tid);
  // After a change of a directory's upper object through the overlay (a name
  // added or removed in it, a copy-up into it), with no lock held. The kernel
  // caches a directory's attributes for timeout= seconds; it drops them itself
  // when a request that changed the directory succeeds (`kernel_knows`), but a
  // reply of them read before the change and still on its way to another task
  // would be cached after that, stale. So the kernel is told (attr_changed),
  // which also makes it refuse such a late reply, whenever anyone was served
  // the directory's attributes since its last change, unless the kernel knows
  // of this change and the only one served is this request's own task (which
  // waited for them before it asked for the change).
  void dir_changed(Node* dir, bool kernel_knows);
  // The attributes of `node` changed in a way the kernel cannot know of (an ACL
  // that changed its mode, a file that became writable through a mapping): it is
  // told to forget the ones it has.
  void attrs_changed(Node* node) {
    if (attr_changed_) attr_changed_(node);
  }

  // Node table (namei.cc), used by Node's destructor.
  void unhash(Node* node);

  // Fds of the nodes' real objects (fds.cc). Nodes keep them while in use, up to
  // `n` in all (host/fd_slot.hpp's FdBox::live()): past that, the first to open
  // one closes those of nodes not used lately. Set once, before serving.
  void set_node_fd_bound(std::size_t n) { fd_bound_ = n; }
  std::size_t node_fd_bound() const { return fd_bound_; }
  // How many fds the writeback checks may keep open before they hurry.
  void set_fd_budget(std::size_t fds);

 private:
  Overlay(Host& host, Config cfg) : host_(host), cfg_(std::move(cfg)) {}

  // super.cc
  std::expected<void, std::string> open_layers();
  void clone_upper_mount();
  std::expected<void, std::string> prepare_workdir();

  // namei.cc
  // What the layers hold under one name.
  struct RealLookup {
    mode_t type = 0;  // 0: nothing visible under that name
    Fd upper;
    struct stat ust {};
    Fd lower;  // top lower object, or (not opened) lower_name in the lower dir lower_at
    int lower_at = -1;
    std::string lower_name;
    int lower_layer = -1;
    struct stat lst {};
    std::vector<LowerDir> lowers;  // dirs: every lower dir merged, top first
    bool opaque = false;
    bool has_origin = false;
    bool impure = false;
    std::string redirect;
  };
  Result<RealLookup> lookup_real(Node* parent, std::string_view name);
  Result<NodeRef> node_get(Node* parent, std::string_view name, RealLookup&& rl,
                           std::uint64_t moved);
  // Lookup of a name to its node, again while a copy-up moved a node meanwhile;
  // `st`, `upper`: the attributes the layers showed, and whether from the upper.
  Result<NodeRef> lookup_retrying(Node* parent, std::string_view name, struct stat* st,
                                  bool* upper);
  Result<Entry> entry_of(const NodeRef& node);
  Entry entry_of(const NodeRef& node, struct stat st);
  struct DirXattrs {
    bool opaque = false;
    bool origin = false;
    bool impure = false;
    std::string redirect;
  };
  // `below`: a layer lies below this directory's, so whether it is opaque matters.
  Result<DirXattrs> dir_xattrs(int fd, bool below);
  void mark_impure(Node* dir);
  Result<NodeRef> lookup_node(Node* parent, std::string_view name);
  bool lower_positive(Node* parent, std::string_view name);
  void rehash(Node* node, const NodeKey& key);

  // fds.cc
  friend struct Node;
  // A lower dir of node `n`, open until the request ends (Node::upper_fd).
  int dir_fd(const Node& n, const LowerDir& ld) const;
  int reopen_upper(const Node& n) const;
  // `n`'s fd was just put in one of its slots: listed for a sweep; past the
  // bound, a sweep.
  void note_opened(const Node& n) const;
  void sweep_fds() const;
  // `n`'s upper stays open from now on: it cannot be found by its name again
  // (a name of it is removed while the kernel holds it).
  void keep_fds(Node* n);

  // inode.cc
  struct Origin {
    dev_t dev;
    ino_t ino;
    nlink_t nlink;
  };
  std::uint64_t map_ino(dev_t dev, ino_t ino) const;
  // Attributes read for the kernel: a directory's readers are noted first.
  Result<struct stat> stat_node(Node* node);
  void note_attr_read(Node* node);
  // Attributes as clients see them: owner and mode from the override xattr
  // (xattr_permissions=), ids mapped or squashed, static_nlink.
  void to_client(Node* node, struct stat& st);
  // The owner and mode in the override xattr of `fd`, if it has a valid one.
  bool read_override(int fd, struct stat& st);
  // The set-id bits that a write or truncate by `cred` clears on the file `st`
  // (file.cc), and clearing them on the open file `fd` of `node`.
  mode_t setid_kill(const struct stat& st, const Cred& cred);
  // Whether `cred` is in the group `gid`, and whether it holds CAP_FSETID.
  std::pair<bool, bool> caller_group_fsetid(gid_t gid, const Cred& cred);
  // Reopens a real file for `flags`, O_NOATIME too under noatime when allowed.
  Result<Fd> reopen_real(int fd, int flags);
  Status kill_setid(Node* node, int fd, const Cred& cred);
  Status write_override(int fd, uid_t uid, gid_t gid, mode_t mode);
  bool uses_override(mode_t type) const {
    return !cfg_.override_xattr.empty() && (S_ISDIR(type) || S_ISREG(type));
  }
  Result<Origin> origin_of(int upperfd);

  // copy_up.cc
  // `data_fd`: if given and this call copied a regular file, receives the copy's
  // read-write fd (the open that asked for the copy-up can use it).
  Status copy_up(Node* node, Fd* data_fd = nullptr);
  // REQUIRES(node->copy_mu). `attr_changed`: set when the kernel's cached
  // attributes of the node are stale now (the caller tells it, with no lock held).
  Status copy_up_locked(Node* node, Node* parent, const std::string& name, Fd* data_fd,
                        bool* attr_changed);
  Status copy_up_data(int srcfd, int dstfd, const struct stat& st, int layer);
  Status copy_range(int srcfd, int dstfd, off_t off, off_t len);
  // `caps`, if given, is set when a security.capability is among them.
  Status copy_xattrs(int srcfd, int dstfd, bool* caps = nullptr);
  Status set_origin(int lowerfd, int layer, int upperfd);

  // dir.cc
  Result<Entry> create_object(Node* parent, std::string_view name, mode_t mode, dev_t rdev,
                              const char* link_target, Node* hardlink, const Cred& cred,
                              int open_flags, Fd* opened);
  Status remove_object(Node* parent, std::string_view name, bool is_dir);
  Status make_whiteout(int dirfd, const char* name);
  // Whether the upper of directory `dir` has a default ACL (kept in the node).
  bool has_default_acl(Node* dir, int pu);
  void removed(Node* n);
  Status clear_whiteouts(int dirfd);

  // readdir.cc
  Result<std::vector<DirEntry>> read_merged(Node* node, bool stop_at_first = false);

  // xattrs.cc
  bool is_private_xattr(std::string_view name) const;
  // Neither listed to clients nor theirs to read or change (private ones, the
  // override xattr); the override is still copied up.
  bool hidden_xattr(std::string_view name) const;
  // Not a client's to read or change: fuse-overlayfs's, the override xattr.
  bool reserved_xattr(std::string_view name) const;
  std::string escape_xattr(const char* name) const;
  Result<std::string> get_ovl_xattr(int fd, const char* suffix);
  Status set_ovl_xattr(int fd, const char* suffix, std::string_view value);
  bool xattr_is_y(int fd, const char* name);
  std::expected<void, std::string> init_uuid();
  std::string xattr_name(const char* suffix) const;

  // util.cc
  bool is_whiteout(const struct stat& st) const;
  // Whether directory `dirfd` of a layer holds the AUFS whiteout ".wh.NAME".
  Result<bool> aufs_whiteout_at(int dirfd, std::string_view name);
  std::string temp_name();
  Status check_name(std::string_view name) const;
  Status check_writable() const;

  Host& host_;
  Config cfg_;
  bool has_upper_ = false;
  std::vector<Layer> layers_;  // upper first when present
  Fd workdir_;                 // W
  Fd work_;                    // W/work: temp files for atomic copy-up and whiteouts
  NodeRef root_;
  std::atomic<std::uint64_t> temp_seq_{0};
  // Lower layers (bit min(layer, 63)) whose files the upper cannot reflink: no
  // FICLONE attempt per copy-up once it failed for lack of support.
  std::atomic<std::uint64_t> no_clone_{0};
  std::vector<dev_t> fs_devs_;  // the distinct host filesystems of the layers
  // The upper's root and the workdir, where a lower holds them (super.cc).
  std::vector<std::pair<dev_t, ino_t>> traps_;
  // The upper logs its metadata in order (ext4 with a journal, xfs, btrfs): a
  // non-volatile copy-up writes its data back and waits (sync_file_range) before
  // the rename instead of an fsync (copy_up.cc).
  bool copy_up_ordered_ = false;
  bool work_private_ = false;  // work_ is searchable by its owner (this process) only
  bool tmpfile_ = false;  // the upper makes unnamed files (O_TMPFILE) in work_ and links them
  bool aufs_whiteouts_ = false;  // mknod of 0:0 is refused: whiteouts are `.wh.` files
  std::function<void(Node*)> attr_changed_;

  Mutex<LockRank::kOrigin> origin_mu_;
  std::unordered_map<std::string, Origin> origins_;  // GUARDED_BY(origin_mu_): by handle

  // fds.cc: nodes that got an fd, oldest first, for the sweep (each once while
  // in_ring_); a node is let go of when the sweep finds it expired.
  std::size_t fd_bound_ = SIZE_MAX;
  mutable Mutex<LockRank::kFdRing> ring_mu_;
  mutable std::deque<std::weak_ptr<Node>> fd_ring_;  // GUARDED_BY(ring_mu_)
  mutable std::atomic<bool> sweeping_{false};

  // No node is destroyed while it is held: ~Node takes it (base/lock.hpp).
  Mutex<LockRank::kNodeTable> table_mu_;
  // Bumped (under table_mu_) whenever a node changes key: node_get (namei.cc).
  std::atomic<std::uint64_t> moved_{0};
  std::unordered_map<NodeKey, Node*, NodeKeyHash> table_;

  std::shared_ptr<Writeback> wb_;  // null without an upper layer

  friend struct Node;
};

}  // namespace ovlfs
