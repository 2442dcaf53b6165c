// The choice of the daemon threads' policy (sched.hpp): SCHED_IDLE under `auto`
// only when the daemon's CPU scheduling group is its own autogroup.
#include "fuse/sched.hpp"

#include <gtest/gtest.h>
#include <thread>
#include <sched.h>
#include <unistd.h>

namespace ovlfs {
namespace {

// A daemonized mount on a host without CPU cgroups: the case `auto` makes idle.
SchedFacts own_autogroup() {
  SchedFacts f;
  f.autogroup = true;
  f.session_leader = true;
  f.initial_cgroup_ns = true;
  f.proc_cgroup = "0::/\n";
  f.v2_root_subtree = "cpuset io memory pids\n";
  return f;
}

TEST(Sched, ExplicitModesIgnoreTheFacts) {
  SchedFacts none;  // nothing known: auto would not choose idle
  EXPECT_TRUE(choose_sched(SchedMode::idle, none).idle);
  EXPECT_FALSE(choose_sched(SchedMode::normal, own_autogroup()).idle);
}

TEST(Sched, AutoIsIdleInItsOwnAutogroup) {
  auto c = choose_sched(SchedMode::automatic, own_autogroup());
  EXPECT_TRUE(c.idle) << c.why;
  // Hybrid hierarchy, the v1 cpu controller at its root.
  SchedFacts f = own_autogroup();
  f.proc_cgroup = "9:name=systemd:/\n4:memory:/job/7\n2:cpuacct:/\n1:cpu:/\n0::/\n";
  c = choose_sched(SchedMode::automatic, f);
  EXPECT_TRUE(c.idle) << c.why;
  // cgroup2 with the cpu controller nowhere: a cgroup of its own does not matter.
  f = own_autogroup();
  f.proc_cgroup = "0::/system.slice/ovlfs.service\n";
  c = choose_sched(SchedMode::automatic, f);
  EXPECT_TRUE(c.idle) << c.why;
}

TEST(Sched, AutoIsNormalWhereTheGroupMayBeShared) {
  SchedFacts f = own_autogroup();
  f.autogroup = false;
  EXPECT_FALSE(choose_sched(SchedMode::automatic, f).idle) << "autogroups off";

  f = own_autogroup();
  f.session_leader = false;  // -f from a shell: the shell's session, its autogroup
  auto c = choose_sched(SchedMode::automatic, f);
  EXPECT_FALSE(c.idle);
  EXPECT_NE(c.why.find("session"), std::string::npos) << c.why;

  f = own_autogroup();
  f.initial_cgroup_ns = false;  // a container's "/" may be a CPU cgroup
  EXPECT_FALSE(choose_sched(SchedMode::automatic, f).idle) << "cgroup namespace";

  f = own_autogroup();
  f.proc_cgroup = "4:memory:/\n3:cpu,cpuacct:/docker/abc\n0::/\n";  // v1 cpu, not the root
  c = choose_sched(SchedMode::automatic, f);
  EXPECT_FALSE(c.idle);
  EXPECT_NE(c.why.find("/docker/abc"), std::string::npos) << c.why;

  f = own_autogroup();
  f.proc_cgroup = "0::/user.slice/user-0.slice/session-3.scope\n";
  f.v2_root_subtree = "cpuset cpu io memory pids\n";  // cgroup2, cpu enabled below the root
  c = choose_sched(SchedMode::automatic, f);
  EXPECT_FALSE(c.idle);
  EXPECT_NE(c.why.find("session-3.scope"), std::string::npos) << c.why;

  f.v2_root_subtree.reset();  // no cgroup2 mount to ask
  EXPECT_FALSE(choose_sched(SchedMode::automatic, f).idle) << "cgroup2 unreadable";
}

TEST(Sched, ControllerNamesAreWholeWords) {
  SchedFacts f = own_autogroup();
  f.proc_cgroup = "2:cpuacct:/a\n3:cpuset:/b\n0::/c\n";  // neither is "cpu"
  f.v2_root_subtree = "cpuset\n";
  auto c = choose_sched(SchedMode::automatic, f);
  EXPECT_TRUE(c.idle) << c.why;
}

TEST(Sched, ProcStat) {
  auto t = parse_proc_stat(
      "cpu  100 5 50 1000 20 1 2 3 7 0\n"
      "cpu0 50 2 25 500 10 1 1 2 4 0\n"
      "cpu1 50 3 25 500 10 0 1 1 3 0\n"
      "intr 12345 0 0\nctxt 999\n");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->idle, 1020u);
  EXPECT_EQ(t->total, 100u + 5 + 50 + 1000 + 20 + 1 + 2 + 3);  // guest time is in user time
  EXPECT_EQ(t->cpus, 2u);
  EXPECT_FALSE(parse_proc_stat(""));
  EXPECT_FALSE(parse_proc_stat("cpu  1 2 3\ncpu0 1 2 3\n")) << "a short line";
  EXPECT_FALSE(parse_proc_stat("cpu  1 2 3 4 5 6 7 8\n")) << "no cpuN line";
}

TEST(Sched, IdleWhileHalfACpuIsIdle) {
  const CpuTimes a{1000, 4000, 2};
  auto after = [&](std::uint64_t busy, std::uint64_t idle) {
    return CpuTimes{a.idle + idle, a.total + busy + idle, 2};
  };
  // 2 CPUs, 400 ticks: 100 idle is half a CPU; 50 a quarter.
  EXPECT_TRUE(idle_wanted(a, after(300, 100), false));
  EXPECT_TRUE(idle_wanted(a, after(0, 400), false));
  EXPECT_FALSE(idle_wanted(a, after(351, 49), true));
  EXPECT_FALSE(idle_wanted(a, after(400, 0), true));
  // In between, as it is (no flapping).
  EXPECT_TRUE(idle_wanted(a, after(330, 70), true));
  EXPECT_FALSE(idle_wanted(a, after(330, 70), false));
  // No time passed, or counters that went back: as it is.
  EXPECT_TRUE(idle_wanted(a, a, true));
  EXPECT_FALSE(idle_wanted(a, CpuTimes{0, 10, 2}, false));
}

TEST(Sched, AllowMovesEveryThreadToIdle) {
  if (geteuid() != 0) GTEST_SKIP() << "going back from SCHED_IDLE may need CAP_SYS_NICE";
  EXPECT_EQ(allow_sched_idle(SchedChoice{false, "test"}), "");
  EXPECT_FALSE(sched_idle_allowed());
  EXPECT_EQ(sched_getscheduler(0), SCHED_OTHER);

  EXPECT_EQ(allow_sched_idle(SchedChoice{true, "test"}), "");
  EXPECT_TRUE(sched_idle_allowed());
  EXPECT_TRUE(sched_idle_now());
  EXPECT_EQ(sched_getscheduler(0), SCHED_IDLE);
  int child = -1;
  std::thread([&] { child = sched_getscheduler(0); }).join();
  EXPECT_EQ(child, SCHED_IDLE) << "a thread started later inherits it";
}

}  // namespace
}  // namespace ovlfs
