// Mount options, compatible with fuse-overlayfs and the kernel's overlayfs names.
#include "overlay/params.hpp"

#include <charconv>
#include <span>

namespace ovlfs {
namespace {

// Splits at each `sep` that no backslash escapes and, with `quotes`, that lies
// outside double quotes. Backslashes and quotes stay: an option list's `\:` is
// for the lowerdir split after it, and a path's escapes for unescape().
std::vector<std::string> split_unescaped(std::string_view s, char sep, bool quotes) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      cur += s[i];
      cur += s[++i];
      continue;
    }
    if (quotes && s[i] == '"') quoted = !quoted;
    if (s[i] == sep && !quoted) {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  out.push_back(std::move(cur));
  return out;
}

// A backslash stands for the character after it (the kernel's ovl_unescape).
std::string unescape(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return out;
}

bool parse_u32(std::string_view v, std::uint32_t& out) {
  if (v.empty()) return false;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  return ec == std::errc() && p == v.data() + v.size();
}

// "D:M:N[:D:M:N...]", with or without a leading colon (podman 4.3 writes one).
std::expected<std::vector<IdRange>, std::string> parse_mapping(std::string_view key,
                                                               std::string_view val) {
  std::vector<std::string_view> nums;
  std::string_view rest = val;
  if (rest.starts_with(':')) rest.remove_prefix(1);
  while (true) {
    auto c = rest.find(':');
    nums.push_back(rest.substr(0, c));
    if (c == std::string_view::npos) break;
    rest.remove_prefix(c + 1);
  }
  auto bad = [&](const std::string& why) {
    return std::unexpected(std::string(key) + " must be disk:mount:count triples (" + why +
                           "), not '" + std::string(val) + "'");
  };
  if (nums.size() % 3 != 0) return bad("a triple is incomplete");
  std::vector<IdRange> map;
  for (std::size_t i = 0; i < nums.size(); i += 3) {
    IdRange r;
    if (!parse_u32(nums[i], r.disk) || !parse_u32(nums[i + 1], r.mount) ||
        !parse_u32(nums[i + 2], r.count))
      return bad("numbers only");
    if (r.count == 0) return bad("a count of 0");
    if (std::uint64_t(r.disk) + r.count > (1ULL << 32) ||
        std::uint64_t(r.mount) + r.count > (1ULL << 32))
      return bad("a range past 4294967295");
    map.push_back(r);
  }
  if (map.size() > 340) return bad("more than 340 ranges");  // the kernel's limit
  return map;
}

// Generic options of mount(8) that libfuse turns into mount flags: passed on.
bool is_mount_flag(std::string_view k) {
  static constexpr std::string_view names[] = {
      "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync",
      "dirsync", "noatime"};
  for (auto n : names)
    if (k == n) return true;
  return false;
}

// Accepted and without effect (README: Options): mount(8)'s own words, the
// atime words a FUSE mount cannot pass on (atime is the upper's), mount
// propagation (the caller's namespace decides it), and fuse-overlayfs options
// whose work ovlfs always does or never needs.
bool is_no_effect(std::string_view k, bool has_val) {
  static constexpr std::string_view flags[] = {
      "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
      "defaults", "silent", "loud", "mand", "nomand", "atime", "diratime",
      "norelatime", "nostrictatime", "lazytime", "nolazytime", "iversion",
      "symfollow",
      "noiversion", "private", "shared", "slave", "unbindable", "rprivate", "rshared",
      "rslave", "runbindable", "allow_other", "allow_root", "default_permissions"};
  static constexpr std::string_view valued[] = {
      "context", "fscontext", "defcontext", "rootcontext", "threaded", "writeback",
      "fast_ino", "plugins", "comment", "max_write", "max_read", "blksize"};
  for (auto n : has_val ? std::span<const std::string_view>(valued)
                        : std::span<const std::string_view>(flags))
    if (k == n) return true;
  return k.starts_with("x-");  // mount(8)'s userspace options
}

}  // namespace

std::uint32_t id_to_mount(const std::vector<IdRange>& map, std::uint32_t disk_id) {
  if (map.empty()) return disk_id;
  for (const IdRange& r : map)
    if (disk_id >= r.disk && disk_id - r.disk < r.count) return r.mount + (disk_id - r.disk);
  return kOverflowId;
}

std::uint32_t id_to_disk(const std::vector<IdRange>& map, std::uint32_t mount_id) {
  if (map.empty()) return mount_id;
  for (const IdRange& r : map)
    if (mount_id >= r.mount && mount_id - r.mount < r.count) return r.disk + (mount_id - r.mount);
  return kOverflowId;
}

std::expected<void, std::string> parse_options(std::string_view opts, Config& cfg) {
  for (const std::string& opt : split_unescaped(opts, ',', true)) {
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
    auto flag01 = [&](bool& out) -> std::expected<void, std::string> {
      if (!has_val || val == "1") out = true;
      else if (val == "0") out = false;
      else return std::unexpected(std::string(key) + " must be 0 or 1, not '" + std::string(val) + "'");
      return {};
    };
    auto id_val = [&](std::optional<std::uint32_t>& out) -> std::expected<void, std::string> {
      std::uint32_t id;
      if (!parse_u32(val, id) || id == UINT32_MAX)
        return std::unexpected(std::string(key) + " must be a user or group id, not '" +
                               std::string(val) + "'");
      out = id;
      return {};
    };
    if (key == "lowerdir") {
      if (auto r = need_val(); !r) return r;
      cfg.lowerdirs.clear();
      for (const std::string& l : split_unescaped(val, ':', false)) {  // top first
        if (l.empty()) return std::unexpected("lowerdir has an empty path: '" + std::string(val) + "'");
        cfg.lowerdirs.push_back(unescape(l));
      }
    } else if (key == "upperdir") {
      if (auto r = need_val(); !r) return r;
      cfg.upperdir = unescape(val);
    } else if (key == "workdir") {
      if (auto r = need_val(); !r) return r;
      cfg.workdir = unescape(val);
    } else if (key == "volatile" && !has_val) {
      cfg.is_volatile = true;
    } else if (key == "fsync") {
      if (val == "0") cfg.fsync_off = true;
      else if (val == "1") cfg.fsync_off = false;
      else return std::unexpected("fsync must be 0 or 1, not '" + std::string(val) + "'");
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
    } else if (key == "metacopy") {
      if (val != "off")
        return std::unexpected("metacopy must be off (ovlfs copies data up whole), not '" +
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
    } else if (key == "uidmapping" || key == "gidmapping") {
      if (auto r = need_val(); !r) return r;
      auto m = parse_mapping(key, val);
      if (!m) return std::unexpected(m.error());
      (key == "uidmapping" ? cfg.uid_map : cfg.gid_map) = std::move(*m);
    } else if (key == "squash_to_root" && !has_val) {
      cfg.squash_uid = cfg.squash_gid = 0;
    } else if (key == "squash_to_uid") {
      if (auto r = id_val(cfg.squash_uid); !r) return r;
    } else if (key == "squash_to_gid") {
      if (auto r = id_val(cfg.squash_gid); !r) return r;
    } else if (key == "xattr_permissions") {
      if (val == "0") cfg.override_xattr.clear();
      else if (val == "1") cfg.override_xattr = "security.fuseoverlayfs.override_stat";
      else if (val == "2") cfg.override_xattr = "user.containers.override_stat";
      else return std::unexpected("xattr_permissions must be 0, 1 or 2, not '" + std::string(val) + "'");
    } else if (key == "static_nlink" && !has_val) {
      cfg.static_nlink = true;
    } else if (key == "noxattrs") {
      if (auto r = flag01(cfg.noxattrs); !r) return r;
    } else if (key == "noacl" && !has_val) {
      cfg.noacl = true;
    } else if (key == "timeout") {
      double t = -1;
      auto [p, ec] = std::from_chars(val.data(), val.data() + val.size(), t);
      if (ec != std::errc() || p != val.data() + val.size() || !(t >= 0) || t > 1e9)
        return std::unexpected("timeout must be seconds from 0 to 1000000000, not '" +
                               std::string(val) + "'");
      cfg.timeout_s = t;
    } else if (key == "fsname") {
      if (auto r = need_val(); !r) return r;
      cfg.fsname = val;
    } else if (key == "nodiratime" && !has_val) {
      cfg.nodiratime = true;
    } else if ((key == "relatime" || key == "strictatime") && !has_val) {
      cfg.atime = key == "relatime" ? Config::Atime::relatime : Config::Atime::strictatime;
    } else if (key == "nosymfollow" && !has_val) {
      cfg.nosymfollow = true;
    } else if (is_mount_flag(key) && !has_val) {
      cfg.fuse_opts.emplace_back(key);
      if (key == "noatime") cfg.atime = Config::Atime::noatime;
    } else if (is_no_effect(key, has_val)) {
      // README: Options
    } else {
      cfg.ignored.push_back(opt);
    }
  }
  return {};
}

std::expected<void, std::string> check_config(Config& cfg) {
  if (cfg.lowerdirs.empty()) return std::unexpected("missing lowerdir= (see ovlfs --help)");
  if (cfg.upperdir.empty() != cfg.workdir.empty())
    return std::unexpected(cfg.upperdir.empty() ? "workdir= given without upperdir="
                                                : "upperdir= given without workdir=");
  if (cfg.upperdir.empty() && cfg.is_volatile)
    return std::unexpected("volatile needs upperdir= and workdir=");
  if (cfg.fsync_off && !cfg.upperdir.empty()) cfg.is_volatile = true;
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
      "  relatime|strictatime|noatime\n"
      "                         when reads move the upper files' atime (relatime, default),\n"
      "                         whatever the upper's own mount says\n"
      "  generic mount options (rw, nodev, nosuid, noexec, nodiratime, ...) are accepted;\n"
      "  allow_other and default_permissions are always in effect\n"
      "container engines' options (as fuse-overlayfs reads them; README: Options):\n"
      "  uidmapping=D:M:N[:D:M:N...], gidmapping=...\n"
      "                         ids D..D+N-1 on disk are M..M+N-1 in the mount\n"
      "  squash_to_root, squash_to_uid=N, squash_to_gid=N\n"
      "                         every file shows owner 0, or N\n"
      "  xattr_permissions=0|1|2 owner and mode of files and directories in an xattr\n"
      "                         (1: security.fuseoverlayfs.override_stat, 2:\n"
      "                         user.containers.override_stat) instead of the inode\n"
      "  fsync=0|1              0 is volatile\n"
      "  static_nlink           directories show a link count of 1\n"
      "  noxattrs=0|1           1: every xattr call fails with ENOTSUP\n"
      "  noacl                  no POSIX ACLs (ovlfs never offers them to the kernel)\n"
      "  timeout=S              the kernel keeps names and attributes S seconds (86400)\n"
      "  context=\"...\", private, shared, slave, threaded=, fast_ino=, plugins=, ...\n"
      "                         accepted, no effect; any other option is ignored with a\n"
      "                         warning, as fuse-overlayfs does\n";
}

}  // namespace ovlfs
