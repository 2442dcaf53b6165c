// Mount options, compatible with fuse-overlayfs and the kernel's overlayfs names.
#include "overlay/params.hpp"

#include <charconv>

namespace ovlfs {
namespace {

// Splits at unescaped `sep`. A backslash escapes the next character: any one
// when `escape_any` (option lists: `\,` and `\\`), else only `sep` itself
// (lowerdir lists keep other backslashes as they are).
std::vector<std::string> split_escaped(std::string_view s, char sep, bool escape_any) {
  std::vector<std::string> out;
  std::string cur;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (escape_any || s[i + 1] == sep)) {
      cur += s[++i];
    } else if (s[i] == sep) {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  out.push_back(std::move(cur));
  return out;
}

// Generic options that mount(8) and mount.fuse pass; handed on to the kernel.
bool is_generic(std::string_view k) {
  static constexpr std::string_view names[] = {
      "rw",      "dev",   "nodev",   "suid",  "nosuid",     "exec",    "noexec",
      "async",   "sync",  "atime",   "noatime", "relatime", "norelatime", "strictatime",
      "nodiratime", "diratime", "lazytime", "nolazytime", "auto", "noauto", "user",
      "nouser",  "users", "nofail",  "_netdev", "defaults", "silent", "loud",
      "dirsync", "mand",  "nomand"};
  for (auto n : names)
    if (k == n) return true;
  return false;
}

}  // namespace

std::expected<void, std::string> parse_options(std::string_view opts, Config& cfg) {
  for (const std::string& opt : split_escaped(opts, ',', true)) {
    if (opt.empty()) continue;
    auto eq = opt.find('=');
    std::string_view key = std::string_view(opt).substr(0, eq);
    std::string_view val =
        eq == std::string::npos ? std::string_view() : std::string_view(opt).substr(eq + 1);
    bool has_val = eq != std::string::npos;
    auto need_val = [&]() -> std::expected<void, std::string> {
      if (!has_val || val.empty())
        return std::unexpected("option '" + std::string(key) + "' needs a value");
      return {};
    };
    if (key == "lowerdir") {
      if (auto r = need_val(); !r) return r;
      cfg.lowerdirs = split_escaped(val, ':', false);  // top first
      for (auto& l : cfg.lowerdirs)
        if (l.empty()) return std::unexpected("lowerdir has an empty path: '" + std::string(val) + "'");
    } else if (key == "upperdir") {
      if (auto r = need_val(); !r) return r;
      cfg.upperdir = val;
    } else if (key == "workdir") {
      if (auto r = need_val(); !r) return r;
      cfg.workdir = val;
    } else if (key == "volatile" && !has_val) {
      cfg.is_volatile = true;
    } else if (key == "userxattr" && !has_val) {
      cfg.userxattr = true;
    } else if (key == "ro" && !has_val) {
      cfg.read_only = true;
    } else if (key == "redirect_dir") {
      if (val == "on") cfg.redirect_dir = RedirectDir::on;
      else if (val == "follow") cfg.redirect_dir = RedirectDir::follow;
      else if (val == "nofollow") cfg.redirect_dir = RedirectDir::nofollow;
      else if (val == "off") cfg.redirect_dir = RedirectDir::off;
      else return std::unexpected("redirect_dir must be on, follow, nofollow or off, not '" +
                                  std::string(val) + "'");
    } else if (key == "passthrough") {
      if (val == "on") cfg.passthrough = true;
      else if (val == "off") cfg.passthrough = false;
      else return std::unexpected("passthrough must be on or off, not '" + std::string(val) + "'");
    } else if (key == "io_uring") {
      if (val == "on") cfg.io_uring = true;
      else if (val == "off") cfg.io_uring = false;
      else return std::unexpected("io_uring must be on or off, not '" + std::string(val) + "'");
    } else if (key == "sched") {
      if (val == "auto") cfg.sched = SchedMode::automatic;
      else if (val == "idle") cfg.sched = SchedMode::idle;
      else if (val == "normal") cfg.sched = SchedMode::normal;
      else return std::unexpected("sched must be auto, idle or normal, not '" + std::string(val) + "'");
    } else if (key == "errors") {
      if (val == "continue") cfg.errors = ErrorsMode::cont;
      else if (val == "remount-ro") cfg.errors = ErrorsMode::remount_ro;
      else return std::unexpected("errors must be continue or remount-ro, not '" +
                                  std::string(val) + "'");
    } else if (key == "writeback_interval") {
      unsigned ms = 0;
      auto [p, ec] = std::from_chars(val.data(), val.data() + val.size(), ms);
      if (ec != std::errc() || p != val.data() + val.size() || ms < 10 || ms > 3600000)
        return std::unexpected("writeback_interval must be milliseconds from 10 to 3600000, not '" +
                               std::string(val) + "'");
      cfg.writeback_ms = ms;
    } else if (key == "workdir_wait") {
      unsigned sec = 0;
      auto [p, ec] = std::from_chars(val.data(), val.data() + val.size(), sec);
      if (ec != std::errc() || p != val.data() + val.size() || sec > 3600)
        return std::unexpected("workdir_wait must be seconds from 0 to 3600, not '" +
                               std::string(val) + "'");
      cfg.workdir_wait_s = sec;
    } else if ((key == "allow_other" || key == "allow_root" || key == "default_permissions") &&
               !has_val) {
      // FUSE options ovlfs always applies (allow_other, default_permissions).
    } else if (key == "fsname") {
      if (auto r = need_val(); !r) return r;
      cfg.fsname = val;
    } else if (is_generic(key) && !has_val) {
      cfg.fuse_opts.emplace_back(key);
    } else {
      return std::unexpected("unknown mount option '" + opt + "' (see ovlfs --help)");
    }
  }
  return {};
}

std::expected<void, std::string> check_config(const Config& cfg) {
  if (cfg.lowerdirs.empty()) return std::unexpected("missing lowerdir= (see ovlfs --help)");
  if (cfg.upperdir.empty() != cfg.workdir.empty())
    return std::unexpected(cfg.upperdir.empty() ? "workdir= given without upperdir="
                                                : "upperdir= given without workdir=");
  if (cfg.upperdir.empty() && cfg.is_volatile)
    return std::unexpected("volatile needs upperdir= and workdir=");
  return {};
}

const char* options_help() {
  return
      "  lowerdir=L1:L2:...     read-only layers, top first (required; `\\:` escapes ':')\n"
      "  upperdir=U             writable layer (without it the overlay is read-only)\n"
      "  workdir=W              empty directory on the same filesystem as upperdir\n"
      "  volatile               never fsync/syncfs the upper; writeback errors are still\n"
      "                         reported by every fsync and syncfs of the mount\n"
      "  writeback_interval=MS  write dirty upper data back and check it this often (2000)\n"
      "  workdir_wait=S         wait this long for a mount of the same workdir that is\n"
      "                         still ending (writing its data back) before refusing (30)\n"
      "  errors=continue|remount-ro\n"
      "                         after an upper writeback error: keep writing (default) or\n"
      "                         fail every later write with EROFS\n"
      "  redirect_dir=on|follow|nofollow|off\n"
      "                         rename lower directories by redirect xattrs (on, default);\n"
      "                         follow and off: only follow existing ones (EXDEV on rename);\n"
      "                         nofollow: neither\n"
      "  passthrough=on|off     let the kernel read and write upper files directly (FUSE\n"
      "                         passthrough, Linux 6.9+; on by default; not used with\n"
      "                         errors=remount-ro, which must see every write)\n"
      "  io_uring=on|off        take requests through FUSE over io_uring, one queue per\n"
      "                         CPU (Linux 6.14+; on by default; as root, sets the fuse\n"
      "                         module's enable_uring parameter if it is off)\n"
      "  sched=auto|idle|normal idle: the daemon's threads run SCHED_IDLE while the CPUs\n"
      "                         have idle time, so that a caller woken by an answer\n"
      "                         stays on its CPU; normal: as started; auto (default):\n"
      "                         idle when the daemon leads its own session's autogroup\n"
      "                         outside any CPU cgroup (README: Scheduling)\n"
      "  userxattr              keep overlay metadata in user.overlay.* xattrs\n"
      "  ro                     mount read-only\n"
      "  fsname=NAME            the source shown in /proc/mounts (default: SOURCE or ovlfs)\n"
      "  generic mount options (rw, nodev, nosuid, noexec, noatime, ...) are accepted;\n"
      "  allow_other and default_permissions are always in effect\n";
}

}  // namespace ovlfs
