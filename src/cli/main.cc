// ovlfs: mount an overlay, or ask a mounted one to sync or report its state.
#include <malloc.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "cli/control.hpp"
#include "fuse/fuse_adapter.hpp"
#include "host/forwarding_host.hpp"
#include "host/host.hpp"
#include "overlay/overlay.hpp"
#include "overlay/params.hpp"

namespace {

constexpr const char* kVersion = "0.1.0";

void usage(FILE* out) {
  std::fprintf(out,
               "usage: ovlfs [-f] [-d] -o lowerdir=L1:L2[,upperdir=U,workdir=W][,OPTIONS] "
               "[SOURCE] MOUNTPOINT\n"
               "       ovlfs sync MOUNTPOINT\n"
               "       ovlfs status MOUNTPOINT [--json]\n"
               "\n"
               "Mounts an overlay of the lower directories under the upper directory at\n"
               "MOUNTPOINT (returns once it is mounted; `umount MOUNTPOINT` ends it).\n"
               "\n"
               "  -f          stay in the foreground\n"
               "  -d          print every FUSE request (implies -f)\n"
               "  -o OPTIONS  comma-separated mount options (may repeat):\n"
               "%s"
               "  -h, --help  this text      -V, --version  the version\n",
               ovlfs::options_help());
}

// Every node the kernel holds keeps O_PATH fds of its real objects: allow as many
// open files as the system does (root may raise the hard limit to fs.nr_open).
void raise_fd_limit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t want = rl.rlim_max;
  if (FILE* f = std::fopen("/proc/sys/fs/nr_open", "r")) {
    unsigned long nr = 0;
    if (std::fscanf(f, "%lu", &nr) == 1 && nr > want) want = nr;
    std::fclose(f);
  }
  rl.rlim_cur = rl.rlim_max = want;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0 && ::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// glibc gives a thread that finds every arena locked a new one, up to 8 per CPU;
// the daemon's serving threads (up to 16 per CPU queue over io_uring, 64 over
// /dev/fuse) would spread the nodes of one walk over a dozen arenas, each
// keeping what is freed in it. A few arenas hold the same nodes in fewer heaps,
// and what the kernel forgets is given back by malloc_trim (fuse_adapter.cc).
// Small allocations mostly stay in each thread's cache and take no arena lock;
// with 2 CPUs, creating and cold-stat'ing 20,000 files measured the same with 1,
// 2 or 16 arenas. One per CPU, at most 4. MALLOC_ARENA_MAX, if set, decides.
void limit_arenas() {
  if (std::getenv("MALLOC_ARENA_MAX")) return;
  const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  (void)::mallopt(M_ARENA_MAX, static_cast<int>(std::clamp(cpus, 1L, 4L)));
}

int fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ovlfs: %s\n", msg.c_str());
  return 2;
}

int mount_main(int argc, char** argv) {
  ovlfs::Config cfg;
  ovlfs::ServeOptions serve;
  std::vector<std::string> positional;
  bool have_opts = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else if (a == "-V" || a == "--version") {
      std::printf("ovlfs %s\n", kVersion);
      return 0;
    } else if (a == "-f") {
      serve.foreground = true;
    } else if (a == "-d") {
      serve.debug = serve.foreground = true;
    } else if (a == "-o" || (a.starts_with("-o") && a.size() > 2)) {
      std::string_view opts;
      if (a == "-o") {
        if (++i == argc) return fail_usage("-o needs an argument");
        opts = argv[i];
      } else {
        opts = a.substr(2);
      }
      if (auto r = ovlfs::parse_options(opts, cfg); !r) return fail_usage(r.error());
      have_opts = true;
    } else if (a.starts_with("-") && a.size() > 1) {
      return fail_usage("unknown argument '" + std::string(a) + "' (see ovlfs --help)");
    } else {
      positional.emplace_back(a);
    }
  }
  if (positional.empty() || positional.size() > 2 || !have_opts) {
    usage(stderr);
    return 2;
  }
  // As fuse-overlayfs: engines add options over time, and show stderr only when
  // the mount fails.
  for (const std::string& o : cfg.ignored)
    std::fprintf(stderr, "ovlfs: ignoring unknown mount option '%s'\n", o.c_str());
  serve.mountpoint = positional.back();
  if (positional.size() == 2) serve.source = positional.front();
  if (!cfg.fsname.empty()) serve.source = cfg.fsname;
  struct stat st;
  if (::stat(serve.mountpoint.c_str(), &st) != 0)
    return fail_usage("mountpoint '" + serve.mountpoint + "': " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return fail_usage("mountpoint '" + serve.mountpoint + "' is not a directory");
  // Absolute: the daemon leaves its working directory, and unmounts by this path
  // when a signal ends it.
  if (char* abs = ::realpath(serve.mountpoint.c_str(), nullptr)) {
    serve.mountpoint = abs;
    std::free(abs);
  }

  // Every upper call is counted at the host-I/O boundary (`ovlfs status` shows
  // the durability calls: none in a volatile mount).
  raise_fd_limit();
  // The workdir stays locked until this process exits (super.cc): a next mount of
  // it waits until this daemon has ended.
  cfg.hold_workdir_lock_until_exit = true;
  static ovlfs::SysHost sys;
  static ovlfs::CountingHost host(sys);
  auto ovl = ovlfs::Overlay::mount(host, std::move(cfg));
  if (!ovl) {
    std::fprintf(stderr, "ovlfs: %s\n", ovl.error().c_str());
    return 1;
  }
  return ovlfs::fuse_serve(**ovl, serve);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "sync")
    return ovlfs::cli::sync_main(argc - 1, argv + 1);
  if (argc >= 2 && std::string_view(argv[1]) == "status")
    return ovlfs::cli::status_main(argc - 1, argv + 1);
  ::umask(0);  // modes come from the callers, already masked by their kernel
  limit_arenas();  // before any thread
  return mount_main(argc, argv);
}
