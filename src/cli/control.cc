// `ovlfs sync` and `ovlfs status`: the ioctls of a mounted ovlfs, for people and
// scripts. Exit status 0 on success, 1 when the mount reports an error, 2 on usage.
#include "cli/control.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>

#include "ovlfs/ioctl.h"

namespace ovlfs::cli {
namespace {

std::string errno_name(int err) {
  if (err == 0) return "0";
  if (const char* n = strerrorname_np(err)) return n;
  return std::to_string(err);
}

// Opens MNT (any file or directory of the mount) for an ioctl; prints why not.
int open_mount(const char* cmd, const char* path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0)
    std::fprintf(stderr, "ovlfs %s: %s: %s (%s)\n", cmd, path, errno_name(errno).c_str(),
                 std::strerror(errno));
  return fd;
}

std::string iso_time(std::int64_t sec, std::uint32_t nsec) {
  if (sec == 0 && nsec == 0) return "";
  std::time_t t = static_cast<std::time_t>(sec);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[64];
  std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03uZ", nsec / 1000000);
  return buf;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string uuid_text(const ovlfs_status& st) {
  if (!(st.flags & OVLFS_STATUS_HAS_UUID)) return "";
  char buf[40];
  int n = 0;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) buf[n++] = '-';
    n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "%02x", st.upper_uuid[i]);
  }
  return buf;
}

void print_json(const char* mnt, const ovlfs_status& st) {
  const bool upper = st.flags & OVLFS_STATUS_HAS_UPPER;
  auto b = [](bool v) { return v ? "true" : "false"; };
  std::printf("{\n");
  std::printf("  \"mountpoint\": %s,\n", json_string(mnt).c_str());
  std::printf("  \"pid\": %d,\n", st.pid);
  std::printf("  \"volatile\": %s,\n", b(st.flags & OVLFS_STATUS_VOLATILE));
  std::printf("  \"errors_mode\": \"%s\",\n",
              (st.flags & OVLFS_STATUS_REMOUNT_RO) ? "remount-ro" : "continue");
  std::printf("  \"read_only\": %s,\n", b(st.flags & OVLFS_STATUS_READ_ONLY));
  std::printf("  \"has_upper\": %s,\n", b(upper));
  std::printf("  \"transport\": \"%s\",\n", (st.flags & OVLFS_STATUS_IO_URING) ? "io_uring" : "/dev/fuse");
  std::printf("  \"passthrough\": %s,\n", b(st.flags & OVLFS_STATUS_PASSTHROUGH));
  std::printf("  \"metadata_xattrs\": \"%s\",\n",
              (st.flags & OVLFS_STATUS_USERXATTR) ? "user.overlay" : "trusted.overlay");
  std::printf("  \"whiteouts\": \"%s\",\n", (st.flags & OVLFS_STATUS_AUFS_WHITEOUTS) ? ".wh." : "0:0");
  std::printf("  \"sched_idle_allowed\": %s,\n", b(st.flags & OVLFS_STATUS_SCHED_IDLE_ALLOWED));
  std::printf("  \"sched_idle\": %s,\n", b(st.flags & OVLFS_STATUS_SCHED_IDLE));
  std::printf("  \"upper\": {\"device\": \"%u:%u\", \"uuid\": %s, \"shm\": %s, "
              "\"errseq\": \"0x%016" PRIx64 "\",\n",
              st.upper_major, st.upper_minor, json_string(uuid_text(st)).c_str(),
              json_string(upper ? std::string("/dev/shm/") + st.shm_name : "").c_str(),
              static_cast<std::uint64_t>(st.upper_errseq));
  std::printf("            \"errors\": %" PRIu64 ", \"latest_errno\": %s, \"latest_errno_num\": %d, "
              "\"latest_time\": %s},\n",
              static_cast<std::uint64_t>(st.upper_errors),
              json_string(errno_name(st.upper_errno)).c_str(), st.upper_errno,
              json_string(iso_time(st.upper_time_sec, st.upper_time_nsec)).c_str());
  std::printf("  \"mount\": {\"errors\": %" PRIu64 ", \"latest_errno\": %s, \"latest_errno_num\": %d, "
              "\"latest_time\": %s, \"cursor\": \"0x%016" PRIx64 "\", \"file_errors\": %" PRIu64
              ", \"local_errors\": %" PRIu64 "},\n",
              static_cast<std::uint64_t>(st.mount_errors),
              json_string(errno_name(st.mount_errno)).c_str(), st.mount_errno,
              json_string(st.mount_errno ? iso_time(st.upper_time_sec, st.upper_time_nsec) : "").c_str(),
              static_cast<std::uint64_t>(st.mount_cursor), static_cast<std::uint64_t>(st.file_errors),
              static_cast<std::uint64_t>(st.local_errors));
  std::printf("  \"dirty_files\": %" PRIu64 ",\n", static_cast<std::uint64_t>(st.dirty_files));
  std::printf("  \"writeback_interval_ms\": %u,\n", st.writeback_ms);
  std::printf("  \"writeback_passes\": %" PRIu64 ",\n", static_cast<std::uint64_t>(st.writeback_passes));
  std::printf("  \"host_calls\": {\"fsync\": %" PRIu64 ", \"fdatasync\": %" PRIu64
              ", \"syncfs\": %" PRIu64 ", \"sync_file_range\": %" PRIu64 "}\n",
              static_cast<std::uint64_t>(st.host_fsync), static_cast<std::uint64_t>(st.host_fdatasync),
              static_cast<std::uint64_t>(st.host_syncfs),
              static_cast<std::uint64_t>(st.host_sync_file_range));
  std::printf("}\n");
}

void print_text(const char* mnt, const ovlfs_status& st) {
  std::printf("mount:          %s (ovlfs pid %d)\n", mnt, st.pid);
  std::printf("transport:      %s%s\n", (st.flags & OVLFS_STATUS_IO_URING) ? "io_uring" : "/dev/fuse",
              (st.flags & OVLFS_STATUS_PASSTHROUGH) ? ", passthrough" : "");
  std::printf("threads:        %s\n", !(st.flags & OVLFS_STATUS_SCHED_IDLE_ALLOWED) ? "as started"
                                      : (st.flags & OVLFS_STATUS_SCHED_IDLE)
                                          ? "SCHED_IDLE (while the CPUs have idle time)"
                                          : "as started (the CPUs are busy)");
  std::printf("metadata:       %s.* xattrs, whiteouts %s\n",
              (st.flags & OVLFS_STATUS_USERXATTR) ? "user.overlay" : "trusted.overlay",
              (st.flags & OVLFS_STATUS_AUFS_WHITEOUTS) ? "as .wh. files" : "as 0:0 devices");
  if (!(st.flags & OVLFS_STATUS_HAS_UPPER)) {
    std::printf("upper:          none (read-only overlay)\n");
    return;
  }
  std::printf("mode:           %s, errors=%s%s\n",
              (st.flags & OVLFS_STATUS_VOLATILE) ? "volatile" : "non-volatile",
              (st.flags & OVLFS_STATUS_REMOUNT_RO) ? "remount-ro" : "continue",
              (st.flags & OVLFS_STATUS_READ_ONLY) ? " (now read-only)" : "");
  std::string uuid = uuid_text(st);
  std::printf("upper device:   %u:%u%s%s\n", st.upper_major, st.upper_minor,
              uuid.empty() ? "" : ", uuid ", uuid.c_str());
  if (st.upper_errors)
    std::printf("upper errors:   %" PRIu64 ", latest %s at %s (all ovlfs mounts on it)\n",
                static_cast<std::uint64_t>(st.upper_errors), errno_name(st.upper_errno).c_str(),
                iso_time(st.upper_time_sec, st.upper_time_nsec).c_str());
  else
    std::printf("upper errors:   none\n");
  if (st.mount_errno)
    std::printf("since mount:    %" PRIu64 ", latest %s at %s\n",
                static_cast<std::uint64_t>(st.mount_errors), errno_name(st.mount_errno).c_str(),
                iso_time(st.upper_time_sec, st.upper_time_nsec).c_str());
  else
    std::printf("since mount:    none\n");
  std::printf("file errors:    %" PRIu64 " found in this mount's files, %" PRIu64
              " of them the file's own (not the upper's)\n",
              static_cast<std::uint64_t>(st.file_errors), static_cast<std::uint64_t>(st.local_errors));
  std::printf("dirty files:    %" PRIu64 "\n", static_cast<std::uint64_t>(st.dirty_files));
  std::printf("writeback:      every %u ms, %" PRIu64 " passes\n", st.writeback_ms,
              static_cast<std::uint64_t>(st.writeback_passes));
  std::printf("upper calls:    fsync %" PRIu64 ", fdatasync %" PRIu64 ", syncfs %" PRIu64
              ", sync_file_range %" PRIu64 "\n",
              static_cast<std::uint64_t>(st.host_fsync), static_cast<std::uint64_t>(st.host_fdatasync),
              static_cast<std::uint64_t>(st.host_syncfs),
              static_cast<std::uint64_t>(st.host_sync_file_range));
  std::printf("shared record:  /dev/shm/%s\n", st.shm_name);
}

}  // namespace

int sync_main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ovlfs sync MOUNTPOINT\n");
    return 2;
  }
  int fd = open_mount("sync", argv[1]);
  if (fd < 0) return 1;
  int rc = ::ioctl(fd, OVLFS_IOC_SYNCFS);
  int err = errno;
  ::close(fd);
  if (rc == 0) return 0;
  if (err == ENOTTY) {
    std::fprintf(stderr, "ovlfs sync: %s: not an ovlfs mount (ENOTTY)\n", argv[1]);
    return 1;
  }
  std::printf("%s\n", errno_name(err).c_str());
  std::fprintf(stderr, "ovlfs sync: %s: %s (%s)\n", argv[1], errno_name(err).c_str(),
               std::strerror(err));
  return 1;
}

int status_main(int argc, char** argv) {
  const char* mnt = nullptr;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--json") json = true;
    else if (!mnt && !a.starts_with("-")) mnt = argv[i];
    else mnt = nullptr, i = argc;
  }
  if (!mnt) {
    std::fprintf(stderr, "usage: ovlfs status MOUNTPOINT [--json]\n");
    return 2;
  }
  int fd = open_mount("status", mnt);
  if (fd < 0) return 1;
  ovlfs_status st{};
  int rc = ::ioctl(fd, OVLFS_IOC_STATUS, &st);
  int err = errno;
  ::close(fd);
  if (rc != 0) {
    if (err == ENOTTY)
      std::fprintf(stderr, "ovlfs status: %s: not an ovlfs mount (ENOTTY)\n", mnt);
    else
      std::fprintf(stderr, "ovlfs status: %s: %s (%s)\n", mnt, errno_name(err).c_str(),
                   std::strerror(err));
    return 1;
  }
  if (json) print_json(mnt, st);
  else print_text(mnt, st);
  return 0;
}

}  // namespace ovlfs::cli
