// Mount options: what `-o` says, checked before anything is mounted.
#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ovlfs {

enum class RedirectDir { on, follow, nofollow, off };
enum class ErrorsMode { cont, remount_ro };
// The daemon's threads: SCHED_IDLE, SCHED_OTHER, or chosen (src/fuse/sched.hpp).
enum class SchedMode { automatic, idle, normal };

// One range of an id mapping, as container storage writes it for a mount program
// and fuse-overlayfs reads it ("D:M:N"): ids disk..disk+count-1 of the layers are
// mount..mount+count-1 in the mount, the ids the kernel sees there (those of the
// container's processes: the layers keep the image's own ids).
struct IdRange {
  std::uint32_t disk = 0, mount = 0, count = 0;
};

// The id the mount shows for `disk_id` (the overflow id, 65534, when no range
// holds it); and the id on disk for `mount_id`, the other way. An empty map is
// the identity.
std::uint32_t id_to_mount(const std::vector<IdRange>& map, std::uint32_t disk_id);
std::uint32_t id_to_disk(const std::vector<IdRange>& map, std::uint32_t mount_id);
inline constexpr std::uint32_t kOverflowId = 65534;

struct Config {
  std::vector<std::string> lowerdirs;  // top first
  std::string upperdir;                // empty: a read-only overlay of the lowers
  std::string workdir;
  bool is_volatile = false;
  bool userxattr = false;              // user.overlay.* instead of trusted.overlay.*
  bool read_only = false;              // "ro"
  RedirectDir redirect_dir = RedirectDir::on;
  ErrorsMode errors = ErrorsMode::cont;
  unsigned writeback_ms = 2000;        // write dirty upper data back and check it this often
  bool passthrough = true;             // let the kernel move file data (FUSE passthrough)
  bool io_uring = true;                // FUSE requests through io_uring when the kernel has it
  SchedMode sched = SchedMode::automatic;
  std::string fsname;                  // the mount's source name, if given as fsname=
  unsigned workdir_wait_s = 30;        // wait this long for another mount to leave the workdir
  // Not an option: the ovlfs program sets it. The workdir's lock (super.cc) then
  // lasts until the process exits, not only while the Overlay lives.
  bool hold_workdir_lock_until_exit = false;
  std::vector<std::string> fuse_opts;  // generic mount options passed on to the kernel
  // Mount flags libfuse cannot pass, set on the mount after it is made
  // (mount_setattr(2)): nodiratime, nosymfollow.
  bool nodiratime = false, nosymfollow = false;
  // When reads move an upper file's atime: the overlay's relatime (the default),
  // strictatime or noatime, applied to the private clone of the upper's mount that
  // the daemon reaches the upper through (Overlay::clone_upper_mount), whatever the
  // upper's own mount says, as the kernel's overlayfs does. The last one given wins.
  // noatime also opens the real files O_NOATIME (Overlay::reopen_real).
  enum class Atime { relatime, strictatime, noatime };
  Atime atime = Atime::relatime;

  // Container engines' options (fuse-overlayfs's names; README: Container engines).
  std::vector<IdRange> uid_map, gid_map;  // uidmapping=, gidmapping=
  std::optional<std::uint32_t> squash_uid, squash_gid;  // squash_to_root/_uid=/_gid=
  // xattr_permissions=1|2: owner and mode of files and directories live in this
  // xattr (empty: in the inode).
  std::string override_xattr;
  bool static_nlink = false;           // directories show st_nlink 1
  bool noxattrs = false;               // every xattr call of a client fails (ENOTSUP)
  bool noacl = false;                  // no POSIX ACLs offered to the kernel
  double timeout_s = 86400.0;          // the kernel keeps entries and attributes this long
  bool fsync_off = false;              // fsync=0: volatile, where there is an upper
  // Options ovlfs does not know: ignored, each named in a warning before mounting.
  std::vector<std::string> ignored;

  bool redirect_create() const { return redirect_dir == RedirectDir::on; }
  // "off" creates no redirects but follows existing ones, as the kernel's overlayfs
  // does with its default redirect_always_follow=Y.
  bool redirect_follow() const { return redirect_dir != RedirectDir::nofollow; }
};

// Parses one `-o` argument into cfg: comma-separated, a backslash escapes the next
// character (`\,` a comma, `\:` a colon in a lowerdir path) and double quotes
// keep commas in a value (`context="a,b"`), as the kernel's overlayfs and mount(8)
// read them. Returns a one-line message naming the bad option on failure.
std::expected<void, std::string> parse_options(std::string_view opts, Config& cfg);

// Checks that the options make a mountable overlay (a lowerdir, upper with work...),
// and settles what depends on several (fsync=0 is volatile when there is an upper).
std::expected<void, std::string> check_config(Config& cfg);

// The options table, for --help.
const char* options_help();

}  // namespace ovlfs
