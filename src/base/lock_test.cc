// The lock-order checker: the order is enforced, and a wrong order is caught the
// first time it runs, with where both locks were taken.
#include "base/lock.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace ovlfs {
namespace {

class LockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!lock_check::kEnabled) GTEST_SKIP() << "built without OVLFS_LOCK_RANK";
  }
  void TearDown() override { lock_check::set_abort_on_violation(true); }
};

TEST_F(LockTest, RisingOrderIsAllowed) {
  Mutex<LockRank::kCopyUp> a;
  Mutex<LockRank::kNode> b;
  Mutex<LockRank::kNodeTable> c;
  const auto before = lock_check::violations();
  {
    MutexLock ga(a);
    MutexLock gb(b);
    MutexLock gc(c);
    EXPECT_EQ(lock_check::held_count(), 3);
  }
  EXPECT_EQ(lock_check::held_count(), 0);
  // Let go out of order, then take an inner one again.
  {
    UniqueLock la(a);
    UniqueLock lb(b);
    la.unlock();
    MutexLock gc(c);
    EXPECT_EQ(lock_check::held_count(), 2);
  }
  EXPECT_EQ(lock_check::violations(), before);
}

TEST_F(LockTest, WrongOrderIsCounted) {
  lock_check::set_abort_on_violation(false);
  Mutex<LockRank::kNode> node;
  Mutex<LockRank::kNodeTable> table;
  const auto before = lock_check::violations();
  {
    MutexLock gt(table);
    MutexLock gn(node);  // the inversion of the node table and a node's lock
  }
  EXPECT_EQ(lock_check::violations(), before + 1);
  Mutex<LockRank::kNode> other;
  {
    MutexLock g1(node);
    MutexLock g2(other);  // two locks of one rank: never two nodes at once
  }
  EXPECT_EQ(lock_check::violations(), before + 2);
  EXPECT_EQ(lock_check::held_count(), 0);
}

TEST_F(LockTest, TryLockNeverWaitsSoIsNotChecked) {
  lock_check::set_abort_on_violation(false);
  Mutex<LockRank::kNode> node;
  Mutex<LockRank::kNodeTable> table;
  const auto before = lock_check::violations();
  {
    MutexLock gt(table);
    UniqueLock gn(node, std::try_to_lock);
    EXPECT_TRUE(gn.owns_lock());
  }
  EXPECT_EQ(lock_check::violations(), before);
}

TEST_F(LockTest, CondVarLetsGoWhileWaiting) {
  Mutex<LockRank::kWbThread> mu;
  CondVar cv;
  bool ready = false;
  std::thread t([&] {
    MutexLock g(mu);
    ready = true;
    cv.notify_all();
  });
  {
    UniqueLock lk(mu);
    cv.wait(lk, [&] { return ready; });
    EXPECT_EQ(lock_check::held_count(), 1);
  }
  t.join();
  EXPECT_EQ(lock_check::held_count(), 0);
}

// The self-deadlock of dropping a node's last reference under the node table:
// the checker aborts at once and names both places.
TEST_F(LockTest, RelockAbortsWithBothPlaces) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Mutex<LockRank::kNodeTable> table;
  EXPECT_DEATH(
      {
        MutexLock g1(table);
        MutexLock g2(table);
      },
      "lock order violation \\(a lock this thread already holds\\)(.|\n)*taking  "
      "Overlay::table_mu_(.|\n)*lock_test.cc(.|\n)*holding Overlay::table_mu_");
}

}  // namespace
}  // namespace ovlfs
