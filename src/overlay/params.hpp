// Mount options: what `-o` says, checked before anything is mounted.
#pragma once

#include <expected>
#include <string>
#include <string_view>
#include <vector>

namespace ovlfs {

enum class RedirectDir { on, follow, nofollow, off };
enum class ErrorsMode { cont, remount_ro };
// The daemon's threads: SCHED_IDLE, SCHED_OTHER, or chosen (src/fuse/sched.hpp).
enum class SchedMode { automatic, idle, normal };

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

  bool redirect_create() const { return redirect_dir == RedirectDir::on; }
  // "off" creates no redirects but follows existing ones, as the kernel's overlayfs
  // does with its default redirect_always_follow=Y.
  bool redirect_follow() const { return redirect_dir != RedirectDir::nofollow; }
};

// Parses one `-o` argument (comma-separated, `\,` escapes a comma) into cfg.
// Returns a one-line message naming the bad option on failure.
std::expected<void, std::string> parse_options(std::string_view opts, Config& cfg);

// Checks that the options make a mountable overlay (a lowerdir, upper with work...).
std::expected<void, std::string> check_config(const Config& cfg);

// The options table, for --help.
const char* options_help();

}  // namespace ovlfs
