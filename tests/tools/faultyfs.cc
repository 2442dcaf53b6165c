// faultyfs: a passthrough FUSE filesystem that fails chosen writes, for tests only.
//
//   faultyfs [-f] [-o cached] [FUSE options] BACKING_DIR MOUNTPOINT
//
// Every path under MOUNTPOINT is the same path under BACKING_DIR. The tests put a
// disk image here, attach a loop device to it and make ext4 on the loop: a write that
// faultyfs fails reaches ext4 as a failed bio, that is, as a real writeback error.
//
// Control: the file `.faultyfs` at the mount root (not listed by readdir). Write lines:
//   fail PATH START LEN [ERRNO]  writes to PATH (relative to the mount root) that
//                                overlap bytes [START, START+LEN) fail with ERRNO
//                                (a name such as EIO or ENOSPC, or a number; default
//                                EIO) and write nothing
//   clear [PATH]                 drop every rule (or those of PATH)
//   cut                          a power cut: from now on every write and fallocate
//                                of every file succeeds and changes nothing, so the
//                                backing files keep what they held at the cut
//                                (`clear` without PATH ends it)
// A bad line fails the write(2) with EINVAL (ENOENT if PATH does not exist). Reading
// the file gives one line per rule, `rule PATH START LEN ERRNO hits=N`, then
// `writes=N failed=M cut=0|1 max_write=B` (writes counted over all files since mount; B is the
// largest FUSE write the kernel will send, see the caveat below).
// Rules follow the file (its inode), not the name. fsync, reads and fallocate are
// never failed.
//
// Every file is opened with direct_io (the kernel keeps no page cache for it), so each
// write(2) on the mount, including those of a loop device, reaches faultyfs at once;
// `-o cached` turns that off (writes are then still write-through: the writeback cache
// is never enabled).
//
// Caveat the tests must respect: the kernel splits a write larger than max_write into
// several FUSE requests; if an early one succeeds and a later one fails, the caller gets
// a short write, and the loop driver completes a short write as a SUCCESS (the lost
// part is never reported). So a loop device on faultyfs must not send requests larger
// than max_write (wblib.py lowers the loop's queue/max_sectors_kb to make sure), and
// data outside the armed range should not be dirty while a failure is armed.

#define FUSE_USE_VERSION 35
#include <fuse3/fuse.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::string_view kControlPath = "/.faultyfs";
constexpr ino_t kControlIno = 0x7fffffff0000f001;

struct Rule {
  std::string path;  // as given, for display
  dev_t dev = 0;
  ino_t ino = 0;
  std::uint64_t start = 0;
  std::uint64_t len = 0;
  int err = EIO;
  std::uint64_t hits = 0;
};

// One open file. `fd` is -1 for the control file, whose reads serve `snapshot`.
struct OpenFile {
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  std::string snapshot;
};

class Faulty {
 public:
  Faulty(int root_fd, bool cached) : root_fd_(root_fd), cached_(cached) {}
  Faulty(const Faulty&) = delete;
  Faulty& operator=(const Faulty&) = delete;
  ~Faulty() { close(root_fd_); }

  int root() const { return root_fd_; }
  bool cached() const { return cached_; }
  void set_max_write(unsigned n) { max_write_.store(n, std::memory_order_relaxed); }

  // Returned by check_write: the write succeeds and writes nothing (after a cut).
  static constexpr int kDiscard = -1;

  // Returns 0 to let the write through, kDiscard, or the errno to fail it with.
  int check_write(const OpenFile& f, std::uint64_t off, std::uint64_t size) {
    std::lock_guard lock(mu_);  // guards rules_, writes_, failed_, cut_
    ++writes_;
    if (cut_) return kDiscard;
    for (Rule& r : rules_) {
      if (r.dev == f.dev && r.ino == f.ino && off < r.start + r.len && r.start < off + size) {
        ++r.hits;
        ++failed_;
        return r.err;
      }
    }
    return 0;
  }

  bool is_cut() {
    std::lock_guard lock(mu_);
    return cut_;
  }

  int command(std::string_view text);
  std::string status();

 private:
  int add_rule(std::istringstream& in);
  int clear_rules(std::istringstream& in);

  const int root_fd_;
  const bool cached_;
  std::mutex mu_;  // leaf lock; never held across a reply
  std::vector<Rule> rules_;
  std::uint64_t writes_ = 0;
  std::uint64_t failed_ = 0;
  bool cut_ = false;
  std::atomic<unsigned> max_write_{0};  // set once at init; relaxed: pairs with nothing
};

Faulty& self() { return *static_cast<Faulty*>(fuse_get_context()->private_data); }

// "/a/b" -> "a/b", "/" -> "." (relative to the backing directory's fd).
std::string rel(const char* path) {
  std::string_view p(path);
  while (!p.empty() && p.front() == '/') p.remove_prefix(1);
  return p.empty() ? std::string(".") : std::string(p);
}

bool is_control(const char* path) { return kControlPath == path; }

OpenFile* file_of(const fuse_file_info* fi) {
  return reinterpret_cast<OpenFile*>(static_cast<std::uintptr_t>(fi->fh));
}

void set_file(fuse_file_info* fi, OpenFile* f) {
  fi->fh = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(f));
}

int neg_errno() { return -errno; }

std::optional<int> parse_errno(const std::string& word) {
  if (word.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(word.c_str(), &end, 10);
  if (errno == 0 && end != nullptr && *end == '\0') {
    if (n >= 1 && n <= 4095) return static_cast<int>(n);
    return std::nullopt;
  }
  for (int e = 1; e < 4096; ++e) {
    const char* name = strerrorname_np(e);
    if (name != nullptr && word == name) return e;
  }
  return std::nullopt;
}

std::string errno_name(int e) {
  const char* name = strerrorname_np(e);
  return name != nullptr ? std::string(name) : std::to_string(e);
}

int Faulty::add_rule(std::istringstream& in) {
  Rule r;
  std::string err_word;
  if (!(in >> r.path >> r.start >> r.len) || r.len == 0) return EINVAL;
  if (in >> err_word) {
    const std::optional<int> e = parse_errno(err_word);
    if (!e) return EINVAL;
    r.err = *e;
  }
  std::string extra;
  if (in >> extra) return EINVAL;
  struct stat st {};
  if (fstatat(root_fd_, rel(r.path.c_str()).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return errno;
  if (!S_ISREG(st.st_mode)) return EINVAL;
  r.dev = st.st_dev;
  r.ino = st.st_ino;
  std::lock_guard lock(mu_);
  rules_.push_back(std::move(r));
  return 0;
}

int Faulty::clear_rules(std::istringstream& in) {
  std::string path;
  if (!(in >> path)) {
    std::lock_guard lock(mu_);
    rules_.clear();
    cut_ = false;
    return 0;
  }
  struct stat st {};
  if (fstatat(root_fd_, rel(path.c_str()).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return errno;
  std::lock_guard lock(mu_);
  std::erase_if(rules_, [&](const Rule& r) { return r.dev == st.st_dev && r.ino == st.st_ino; });
  return 0;
}

// Runs every line of `text`; returns 0 or the errno of the first bad line.
int Faulty::command(std::string_view text) {
  std::istringstream lines{std::string(text)};
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream in(line);
    std::string verb;
    if (!(in >> verb)) continue;  // blank line
    int err = EINVAL;
    if (verb == "fail") {
      err = add_rule(in);
    } else if (verb == "clear") {
      err = clear_rules(in);
    } else if (verb == "cut") {
      std::string extra;
      if (!(in >> extra)) {
        std::lock_guard lock(mu_);
        cut_ = true;
        err = 0;
      }
    }
    if (err != 0) return err;
  }
  return 0;
}

std::string Faulty::status() {
  std::lock_guard lock(mu_);
  std::string out;
  for (const Rule& r : rules_) {
    out += "rule " + r.path + " " + std::to_string(r.start) + " " + std::to_string(r.len) + " " +
           errno_name(r.err) + " hits=" + std::to_string(r.hits) + "\n";
  }
  out += "writes=" + std::to_string(writes_) + " failed=" + std::to_string(failed_) +
         " cut=" + (cut_ ? "1" : "0") + " max_write=" + std::to_string(max_write_.load(std::memory_order_relaxed)) + "\n";
  return out;
}

// ---- FUSE operations ------------------------------------------------------------

void* op_init(fuse_conn_info* conn, fuse_config* cfg) {
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;  // writes must reach us in order, at once
  cfg->use_ino = 1;
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  self().set_max_write(conn->max_write);
  return fuse_get_context()->private_data;
}

int op_getattr(const char* path, struct stat* st, fuse_file_info* fi) {
  if (is_control(path)) {
    *st = {};
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_ino = kControlIno;
    return 0;
  }
  if (fi != nullptr && file_of(fi)->fd >= 0) {
    return fstat(file_of(fi)->fd, st) == 0 ? 0 : neg_errno();
  }
  return fstatat(self().root(), rel(path).c_str(), st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : neg_errno();
}

int op_readlink(const char* path, char* buf, size_t size) {
  if (size == 0) return -EINVAL;
  const ssize_t n = readlinkat(self().root(), rel(path).c_str(), buf, size - 1);
  if (n < 0) return neg_errno();
  buf[n] = '\0';
  return 0;
}

int op_readdir(const char* path, void* buf, fuse_fill_dir_t filler, off_t, fuse_file_info*,
               fuse_readdir_flags) {
  const int fd = openat(self().root(), rel(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return neg_errno();
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    const int err = errno;
    close(fd);
    return -err;
  }
  while (const dirent* de = readdir(dir)) {
    struct stat st {};
    st.st_ino = de->d_ino;
    st.st_mode = static_cast<mode_t>(DTTOIF(de->d_type));
    if (filler(buf, de->d_name, &st, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) break;
  }
  closedir(dir);
  return 0;
}

int op_mkdir(const char* path, mode_t mode) {
  return mkdirat(self().root(), rel(path).c_str(), mode) == 0 ? 0 : neg_errno();
}

int op_unlink(const char* path) {
  if (is_control(path)) return -EPERM;
  return unlinkat(self().root(), rel(path).c_str(), 0) == 0 ? 0 : neg_errno();
}

int op_rmdir(const char* path) {
  return unlinkat(self().root(), rel(path).c_str(), AT_REMOVEDIR) == 0 ? 0 : neg_errno();
}

int op_symlink(const char* target, const char* path) {
  return symlinkat(target, self().root(), rel(path).c_str()) == 0 ? 0 : neg_errno();
}

int op_rename(const char* from, const char* to, unsigned int flags) {
  if (is_control(from) || is_control(to)) return -EPERM;
  const int r = renameat2(self().root(), rel(from).c_str(), self().root(), rel(to).c_str(), flags);
  return r == 0 ? 0 : neg_errno();
}

int op_link(const char* from, const char* to) {
  return linkat(self().root(), rel(from).c_str(), self().root(), rel(to).c_str(), 0) == 0
             ? 0
             : neg_errno();
}

int op_chmod(const char* path, mode_t mode, fuse_file_info* fi) {
  if (is_control(path)) return 0;
  if (fi != nullptr) return fchmod(file_of(fi)->fd, mode) == 0 ? 0 : neg_errno();
  return fchmodat(self().root(), rel(path).c_str(), mode, 0) == 0 ? 0 : neg_errno();
}

int op_chown(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi) {
  if (is_control(path)) return 0;
  if (fi != nullptr) return fchown(file_of(fi)->fd, uid, gid) == 0 ? 0 : neg_errno();
  return fchownat(self().root(), rel(path).c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) == 0
             ? 0
             : neg_errno();
}

int op_truncate(const char* path, off_t size, fuse_file_info* fi) {
  if (is_control(path)) return 0;
  if (fi != nullptr) return ftruncate(file_of(fi)->fd, size) == 0 ? 0 : neg_errno();
  const int fd = openat(self().root(), rel(path).c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return neg_errno();
  const int r = ftruncate(fd, size) == 0 ? 0 : neg_errno();
  close(fd);
  return r;
}

int op_utimens(const char* path, const timespec tv[2], fuse_file_info* fi) {
  if (is_control(path)) return 0;
  if (fi != nullptr) return futimens(file_of(fi)->fd, tv) == 0 ? 0 : neg_errno();
  return utimensat(self().root(), rel(path).c_str(), tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0
                                                                                   : neg_errno();
}

// Opens (or creates) the backing file and hands the kernel a handle to it.
int open_backing(const char* path, fuse_file_info* fi, int flags, mode_t mode) {
  Faulty& fs = self();
  const int fd = openat(fs.root(), rel(path).c_str(), (flags & ~O_DIRECT) | O_CLOEXEC, mode);
  if (fd < 0) return neg_errno();
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return -err;
  }
  set_file(fi, new OpenFile{fd, st.st_dev, st.st_ino, {}});
  if (!fs.cached()) fi->direct_io = 1;
  return 0;
}

int op_open(const char* path, fuse_file_info* fi) {
  if (is_control(path)) {
    set_file(fi, new OpenFile{-1, 0, 0, self().status()});
    fi->direct_io = 1;
    return 0;
  }
  return open_backing(path, fi, fi->flags, 0);
}

int op_create(const char* path, mode_t mode, fuse_file_info* fi) {
  if (is_control(path)) return -EEXIST;
  return open_backing(path, fi, fi->flags | O_CREAT, mode);
}

int op_read(const char*, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  const OpenFile& f = *file_of(fi);
  if (f.fd < 0) {
    const auto at = static_cast<size_t>(off);
    if (at >= f.snapshot.size()) return 0;
    const size_t n = std::min(size, f.snapshot.size() - at);
    std::memcpy(buf, f.snapshot.data() + at, n);
    return static_cast<int>(n);
  }
  const ssize_t n = pread(f.fd, buf, size, off);
  return n < 0 ? neg_errno() : static_cast<int>(n);
}

int op_write(const char*, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Faulty& fs = self();
  const OpenFile& f = *file_of(fi);
  if (f.fd < 0) {
    const int err = fs.command(std::string_view(buf, size));
    return err != 0 ? -err : static_cast<int>(size);
  }
  if (const int err = fs.check_write(f, static_cast<std::uint64_t>(off), size); err != 0) {
    return err == Faulty::kDiscard ? static_cast<int>(size) : -err;
  }
  const ssize_t n = pwrite(f.fd, buf, size, off);
  return n < 0 ? neg_errno() : static_cast<int>(n);
}

int op_statfs(const char*, struct statvfs* st) {
  return fstatvfs(self().root(), st) == 0 ? 0 : neg_errno();
}

int op_release(const char*, fuse_file_info* fi) {
  OpenFile* f = file_of(fi);
  if (f->fd >= 0) close(f->fd);
  delete f;
  return 0;
}

int op_fsync(const char*, int datasync, fuse_file_info* fi) {
  const int fd = file_of(fi)->fd;
  if (fd < 0) return 0;
  const int r = datasync != 0 ? fdatasync(fd) : fsync(fd);
  return r == 0 ? 0 : neg_errno();
}

int op_fallocate(const char*, int mode, off_t off, off_t len, fuse_file_info* fi) {
  const int fd = file_of(fi)->fd;
  if (fd < 0) return -EOPNOTSUPP;
  if (self().is_cut()) return 0;
  return fallocate(fd, mode, off, len) == 0 ? 0 : neg_errno();
}

fuse_operations make_ops() {
  fuse_operations ops{};
  ops.init = op_init;
  ops.getattr = op_getattr;
  ops.readlink = op_readlink;
  ops.readdir = op_readdir;
  ops.mkdir = op_mkdir;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.symlink = op_symlink;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.chmod = op_chmod;
  ops.chown = op_chown;
  ops.truncate = op_truncate;
  ops.utimens = op_utimens;
  ops.open = op_open;
  ops.create = op_create;
  ops.read = op_read;
  ops.write = op_write;
  ops.statfs = op_statfs;
  ops.release = op_release;
  ops.fsync = op_fsync;
  ops.fallocate = op_fallocate;
  return ops;
}

// ---- command line -----------------------------------------------------------------

struct Options {
  char* backing = nullptr;
  int cached = 0;
};

const fuse_opt kOptSpec[] = {
    {"cached", offsetof(Options, cached), 1},
    FUSE_OPT_END,
};

// Takes the first non-option argument as the backing directory; the rest go to FUSE.
int opt_proc(void* data, const char* arg, int key, fuse_args*) {
  auto* o = static_cast<Options*>(data);
  if (key == FUSE_OPT_KEY_NONOPT && o->backing == nullptr) {
    o->backing = strdup(arg);
    return 0;
  }
  return 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  Options opts;
  if (fuse_opt_parse(&args, &opts, kOptSpec, opt_proc) != 0) return 2;
  if (opts.backing == nullptr) {
    std::fprintf(stderr, "usage: %s [-f] [-o cached] [FUSE options] BACKING_DIR MOUNTPOINT\n",
                 argv[0]);
    return 2;
  }
  const int root_fd = open(opts.backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) {
    std::fprintf(stderr, "faultyfs: %s: %s\n", opts.backing, std::strerror(errno));
    return 1;
  }
  std::free(opts.backing);
  // Without an explicit value libfuse 3.14 warns on every start that its default is invalid.
  fuse_opt_add_arg(&args, "-omax_idle_threads=10");
  Faulty fs(root_fd, opts.cached != 0);
  const fuse_operations ops = make_ops();
  const int r = fuse_main(args.argc, args.argv, &ops, &fs);
  fuse_opt_free_args(&args);
  return r;
}
