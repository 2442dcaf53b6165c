// fd_table: the table grows ahead of the fds a multi-threaded process takes, so
// that none of them is allocated past its end (which would wait for an RCU grace
// period inside that open). The kernel's own numbers are the evidence: FDSize in
// /proc/self/status is the table's size.
#include "host/fd_table.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "host/host.hpp"

namespace {

int fd_size() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "FDSize:") {
      int n = 0;
      f >> n;
      return n;
    }
  }
  return -1;
}

// Waits (up to 5 s) until the grower has made the table hold `n` fds.
bool wait_reserved(int n) {
  for (int i = 0; i < 500; ++i) {
    if (ovlfs::fd_table::reserved() >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(FdTable, GrowsAheadOfTheFdsTheHostHandsOut) {
  ASSERT_EQ(ovlfs::fd_table::reserved(), 0);
  // Before reserve(): note() does nothing, whatever the fd.
  ovlfs::fd_table::note(1 << 20);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(ovlfs::fd_table::reserved(), 0);

  ovlfs::fd_table::reserve(256);
  ASSERT_EQ(ovlfs::fd_table::reserved(), 256);
  ASSERT_GE(fd_size(), 256);

  // A second thread, so that the kernel's growth is the slow, shared-table kind.
  std::thread other([] { std::this_thread::sleep_for(std::chrono::seconds(1)); });

  ovlfs::SysHost sys;
  ovlfs::Host& host = sys;  // fds come through the host, as in the daemon
  std::vector<ovlfs::Fd> fds;
  int highest = -1;
  // Up to half of the table: growth is asked for, to twice the size.
  while (highest < 128) {
    auto fd = host.openat(AT_FDCWD, "/", O_PATH | O_DIRECTORY);
    ASSERT_TRUE(fd) << "errno " << fd.error();
    highest = fd->get();
    fds.push_back(std::move(*fd));
  }
  ASSERT_TRUE(wait_reserved(512)) << "reserved " << ovlfs::fd_table::reserved();
  EXPECT_GE(fd_size(), 512);
  // The next growth only once half of that is reached.
  EXPECT_EQ(ovlfs::fd_table::reserved(), 512);
  while (highest < 256) {
    auto fd = host.openat(AT_FDCWD, "/", O_PATH | O_DIRECTORY);
    ASSERT_TRUE(fd);
    highest = fd->get();
    fds.push_back(std::move(*fd));
  }
  ASSERT_TRUE(wait_reserved(1024));
  EXPECT_GE(fd_size(), 1024);
  other.join();
}

}  // namespace
