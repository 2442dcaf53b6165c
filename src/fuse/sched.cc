#include "fuse/sched.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>

#include "base/lock.hpp"

namespace ovlfs {
namespace {

// The inode of the initial cgroup namespace (PROC_CGROUP_INIT_INO, include/linux/proc_ns.h).
constexpr ino_t kInitCgroupNsIno = 0xEFFFFFFBU;

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The next line of `rest` (without its newline), taken off `rest`.
std::string_view next_line(std::string_view& rest) {
  auto nl = rest.find('\n');
  std::string_view line = rest.substr(0, nl);
  rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  return line;
}

// Whether `word` is one of the separated words of `list`.
bool has_word(std::string_view list, std::string_view word, char sep) {
  while (!list.empty()) {
    auto at = list.find(sep);
    std::string_view w = list.substr(0, at);
    while (!w.empty() && (w.back() == '\n' || w.back() == ' ')) w.remove_suffix(1);
    if (w == word) return true;
    if (at == std::string_view::npos) break;
    list.remove_prefix(at + 1);
  }
  return false;
}

}  // namespace

SchedChoice choose_sched(SchedMode mode, const SchedFacts& f) {
  if (mode == SchedMode::idle) return {true, "sched=idle"};
  if (mode == SchedMode::normal) return {false, "sched=normal"};
  if (!f.autogroup) return {false, "autogroups are off (kernel.sched_autogroup_enabled)"};
  if (!f.session_leader) return {false, "shares the autogroup of the session it was started in"};
  if (!f.initial_cgroup_ns) return {false, "in a cgroup namespace: its CPU group is unknown"};

  // /proc/self/cgroup: "ID:CONTROLLERS:PATH" per hierarchy; "0::PATH" is cgroup2.
  std::optional<std::string> v1_cpu, v2;
  std::string_view rest = f.proc_cgroup;
  while (!rest.empty()) {
    std::string_view line = next_line(rest);
    auto c1 = line.find(':');
    auto c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    std::string_view id = line.substr(0, c1), ctrls = line.substr(c1 + 1, c2 - c1 - 1);
    std::string path(line.substr(c2 + 1));
    if (id == "0" && ctrls.empty()) v2 = path;
    else if (has_word(ctrls, "cpu", ',')) v1_cpu = path;
  }
  if (v1_cpu) {
    if (*v1_cpu != "/") return {false, "in the CPU cgroup " + *v1_cpu};
  } else if (v2 && *v2 != "/") {
    if (!f.v2_root_subtree) return {false, "cgroup2 is not mounted: its CPU group is unknown"};
    if (has_word(*f.v2_root_subtree, "cpu", ' ')) return {false, "in the CPU cgroup " + *v2};
  }
  return {true, "leads its own autogroup"};
}

SchedFacts read_sched_facts() {
  SchedFacts f;
  f.autogroup = read_file("/proc/sys/kernel/sched_autogroup_enabled").value_or("").starts_with("1");
  f.session_leader = ::getsid(0) == ::getpid();
  struct stat st;
  f.initial_cgroup_ns = ::stat("/proc/self/ns/cgroup", &st) == 0 && st.st_ino == kInitCgroupNsIno;
  f.proc_cgroup = read_file("/proc/self/cgroup").value_or("");
  // The cgroup2 mount: field 5 of the mountinfo line whose type (after " - ") is cgroup2.
  std::ifstream mi("/proc/self/mountinfo");
  for (std::string line; std::getline(mi, line);) {
    auto dash = line.find(" - cgroup2 ");
    if (dash == std::string::npos) continue;
    std::istringstream fields(line.substr(0, dash));
    std::string id, parent, dev, root, mnt;
    if (!(fields >> id >> parent >> dev >> root >> mnt) || root != "/") continue;
    f.v2_root_subtree = read_file(mnt + "/cgroup.subtree_control");
    if (f.v2_root_subtree) break;
  }
  return f;
}

std::optional<CpuTimes> parse_proc_stat(std::string_view text) {
  CpuTimes t;
  bool have = false;
  while (!text.empty()) {
    std::string_view line = next_line(text);
    if (!line.starts_with("cpu")) continue;
    if (line.size() > 3 && line[3] != ' ') {
      ++t.cpus;
      continue;
    }
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice
    std::istringstream in{std::string(line.substr(3))};
    std::uint64_t v[8] = {};
    for (auto& x : v)
      if (!(in >> x)) return std::nullopt;
    t.idle = v[3] + v[4];
    for (auto x : v) t.total += x;
    have = true;
  }
  if (!have || t.cpus == 0) return std::nullopt;
  return t;
}

bool idle_wanted(const CpuTimes& a, const CpuTimes& b, bool idle_now) {
  if (b.total <= a.total || b.idle < a.idle) return idle_now;  // no time passed, or a reset
  // Idle CPUs on average, times 4: 2 is half a CPU, 1 a quarter.
  const double idle4 = 4.0 * b.cpus * static_cast<double>(b.idle - a.idle) /
                       static_cast<double>(b.total - a.total);
  if (idle4 >= 2.0) return true;
  if (idle4 < 1.0) return false;
  return idle_now;
}

namespace {

constexpr std::int64_t kTickNs = 250'000'000;

std::atomic<bool> g_allowed{false};
std::atomic<bool> g_idle{false};
std::atomic<std::int64_t> g_next_tick{0};
Mutex<LockRank::kSchedTick> g_tick_mu;
int g_policy = SCHED_OTHER;  // what threads go back to (set before g_allowed)
int g_stat_fd = -1;          // /proc/stat
CpuTimes g_last;             // GUARDED_BY(g_tick_mu)
std::int64_t g_last_ns = 0;  // GUARDED_BY(g_tick_mu)

std::int64_t now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return ts.tv_sec * 1'000'000'000LL + ts.tv_nsec;
}

std::optional<CpuTimes> read_cpu_times() {
  char buf[16384];
  ssize_t n = ::pread(g_stat_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return std::nullopt;
  return parse_proc_stat(std::string_view(buf, static_cast<std::size_t>(n)));
}

// Every thread of the process to `policy` (0: all done).
int set_all(int policy) {
  int err = 0;
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return errno;
  sched_param sp{};
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    pid_t tid = static_cast<pid_t>(std::atoi(e->d_name));
    if (::sched_setscheduler(tid, policy, &sp) != 0 && errno != ESRCH) err = errno;
  }
  ::closedir(d);
  return err;
}

}  // namespace

std::string allow_sched_idle(const SchedChoice& choice) {
  if (!choice.idle) return "";
  const int policy = ::sched_getscheduler(0);
  if (policy != SCHED_OTHER && policy != SCHED_BATCH)
    return "the daemon's policy is neither SCHED_OTHER nor SCHED_BATCH";
  g_policy = policy;
  // In a thread of its own: one that cannot go back stays SCHED_IDLE.
  int err = 0;
  std::thread([&] {
    sched_param sp{};
    if (::sched_setscheduler(0, SCHED_IDLE, &sp) != 0 || ::sched_setscheduler(0, policy, &sp) != 0)
      err = errno;
  }).join();
  if (err != 0) return std::string("a thread cannot go back from SCHED_IDLE: ") + std::strerror(err);
  g_stat_fd = ::open("/proc/stat", O_RDONLY | O_CLOEXEC);
  auto t = g_stat_fd >= 0 ? read_cpu_times() : std::nullopt;
  if (!t) return "cannot read /proc/stat";
  MutexLock g(g_tick_mu);
  g_last = *t;
  g_last_ns = now_ns();
  g_next_tick.store(g_last_ns + kTickNs, std::memory_order_relaxed);
  if (int e = set_all(SCHED_IDLE); e != 0) return std::string("SCHED_IDLE: ") + std::strerror(e);
  g_idle.store(true, std::memory_order_relaxed);
  g_allowed.store(true, std::memory_order_release);
  return "";
}

void sched_tick() {
  if (!g_allowed.load(std::memory_order_relaxed)) return;
  const std::int64_t now = now_ns();
  if (now < g_next_tick.load(std::memory_order_relaxed)) return;
  UniqueLock g(g_tick_mu, std::try_to_lock);
  if (!g.owns_lock()) return;
  g_next_tick.store(now + kTickNs, std::memory_order_relaxed);
  auto t = read_cpu_times();
  if (!t) return;
  // After a quiet spell the times since the last look tell nothing about now:
  // start a new interval.
  const bool fresh = now - g_last_ns <= 2 * kTickNs;
  const bool idle = g_idle.load(std::memory_order_relaxed);
  const bool want = fresh ? idle_wanted(g_last, *t, idle) : idle;
  g_last = *t;
  g_last_ns = now;
  if (want == idle) return;
  if (set_all(want ? SCHED_IDLE : g_policy) != 0 && !want) {
    // A thread that cannot go back (a limit changed since allow_sched_idle):
    // SCHED_IDLE is not used again.
    g_allowed.store(false, std::memory_order_relaxed);
  }
  g_idle.store(want, std::memory_order_relaxed);
}

bool sched_idle_allowed() { return g_allowed.load(std::memory_order_relaxed); }
bool sched_idle_now() { return g_allowed.load(std::memory_order_relaxed) && g_idle.load(std::memory_order_relaxed); }

}  // namespace ovlfs
