// Unit tests of copy-up (overlay/copy_up.cc): how the copy is built in the work
// directory and put into place, on temporary directories through a FaultyHost that
// can fail chosen calls. What the copy holds is compared with the kernel's overlayfs
// by the differential tests (tests/mount/diff).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "overlay/overlay.hpp"
#include "overlay/overlay_test.hpp"

namespace ovlfs {
namespace {

using testing::open;
using testing::Open;
using testing::try_open;
using testing::write;

class CopyUpTest : public testing::OverlayTest {
 protected:
  std::string upper_path(const std::string& tag) { return dir_ + "/upper-" + tag + "/lowerfile"; }
  std::string upper_data(const std::string& tag) {
    std::ifstream f(upper_path(tag));
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  // What the work directory holds besides the volatile marker.
  std::vector<std::string> work_left(const std::string& tag) {
    std::vector<std::string> left;
    for (const auto& e : std::filesystem::directory_iterator(dir_ + "/work-" + tag + "/work"))
      if (e.path().filename() != "incompat") left.push_back(e.path().filename());
    return left;
  }
  bool tmpfile_supported() {
    int fd = ::open(dir_.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }
  // Appends "+" to lowerfile through `o`: the open copies it up.
  void append(Overlay& o) {
    auto f = open(o, "lowerfile", O_WRONLY | O_APPEND);
    ASSERT_TRUE(f);
    ASSERT_EQ(write(o, *f, "+"), 0);
  }
};

TEST_F(CopyUpTest, ARegularFileIsBuiltUnnamedAndLinkedIntoPlace) {
  if (!tmpfile_supported()) GTEST_SKIP() << "the test directory's filesystem has no O_TMPFILE";
  for (bool vol : {false, true}) {
    const std::string tag = vol ? "v" : "n";
    auto o = mount(tag, vol);
    ASSERT_TRUE(o);
    const auto links = host_->calls(HostOp::linkat), renames = host_->calls(HostOp::renameat2);
    append(*o);
    EXPECT_EQ(upper_data(tag), "lower data\n+") << tag;
    EXPECT_EQ(host_->calls(HostOp::linkat) - links, 1u) << tag;
    EXPECT_EQ(host_->calls(HostOp::renameat2) - renames, 0u) << tag;
    EXPECT_GT(::getxattr(upper_path(tag).c_str(), "trusted.overlay.origin", nullptr, 0), 0)
        << tag;
    EXPECT_EQ(work_left(tag), std::vector<std::string>{}) << tag;
  }
}

TEST_F(CopyUpTest, WithoutTmpfileTheCopyIsBuiltUnderATemporaryNameAndRenamed) {
  host_->no_tmpfile = true;
  auto o = mount("t", false);
  ASSERT_TRUE(o);
  const auto links = host_->calls(HostOp::linkat), renames = host_->calls(HostOp::renameat2);
  append(*o);
  EXPECT_EQ(upper_data("t"), "lower data\n+");
  EXPECT_EQ(host_->calls(HostOp::linkat) - links, 0u);
  EXPECT_EQ(host_->calls(HostOp::renameat2) - renames, 1u);
  EXPECT_GT(::getxattr(upper_path("t").c_str(), "trusted.overlay.origin", nullptr, 0), 0);
  EXPECT_EQ(work_left("t"), std::vector<std::string>{});
}

TEST_F(CopyUpTest, AFailedLinkLeavesNothingBehindAndTheNextOpenCopiesUp) {
  auto o = mount("t", false);
  ASSERT_TRUE(o);
  host_->inject(HostOp::linkat, ENOSPC, 1);
  host_->inject(HostOp::renameat2, ENOSPC, 1);
  std::unique_ptr<Open> f;
  EXPECT_EQ(try_open(*o, "lowerfile", O_WRONLY | O_APPEND, &f), ENOSPC);
  EXPECT_FALSE(std::filesystem::exists(upper_path("t")));
  EXPECT_EQ(work_left("t"), std::vector<std::string>{});
  host_->clear();
  append(*o);
  EXPECT_EQ(upper_data("t"), "lower data\n+");
}

TEST_F(CopyUpTest, AFailedOpenOfTheLinkedCopyUndoesTheLink) {
  if (!tmpfile_supported()) GTEST_SKIP() << "the test directory's filesystem has no O_TMPFILE";
  auto o = mount("t", false);
  ASSERT_TRUE(o);
  auto e = o->lookup(o->root(), "lowerfile");
  ASSERT_TRUE(e);
  host_->path_open_error = EMFILE;
  host_->path_open_name = "lowerfile";
  auto fh = o->open(e->node, O_WRONLY | O_APPEND, Cred{});
  ASSERT_FALSE(fh);
  EXPECT_EQ(fh.error(), EMFILE);
  EXPECT_FALSE(std::filesystem::exists(upper_path("t")));
  EXPECT_EQ(work_left("t"), std::vector<std::string>{});
  host_->path_open_error = 0;
  fh = o->open(e->node, O_WRONLY | O_APPEND, Cred{});
  ASSERT_TRUE(fh);
  {
    Open f(*o, e->node, std::move(*fh));
    ASSERT_EQ(write(*o, f, "+"), 0);
  }
  EXPECT_EQ(upper_data("t"), "lower data\n+");
}

TEST_F(CopyUpTest, ASparseFileKeepsItsHoles) {
  // 64 MiB: "head" at 0, "mid" at 16 MiB, a hole to the end.
  const std::string lower = dir_ + "/lower/sparse";
  constexpr off_t kSize = 64 << 20, kMid = 16 << 20;
  {
    int fd = ::open(lower.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "head", 4, 0), 4);
    ASSERT_EQ(::pwrite(fd, "mid", 3, kMid), 3);
    ASSERT_EQ(::ftruncate(fd, kSize), 0);
    ::close(fd);
  }
  struct stat lst {};
  ASSERT_EQ(::stat(lower.c_str(), &lst), 0);
  if (lst.st_blocks * 512 >= kSize) GTEST_SKIP() << "the test directory's filesystem has no holes";
  for (bool vol : {false, true}) {
    const std::string tag = vol ? "v" : "n";
    auto o = mount(tag, vol);
    ASSERT_TRUE(o);
    {
      auto f = open(*o, "sparse", O_WRONLY | O_APPEND);
      ASSERT_TRUE(f);
      ASSERT_EQ(write(*o, *f, "+"), 0);
    }
    const std::string upper = dir_ + "/upper-" + tag + "/sparse";
    struct stat ust {};
    ASSERT_EQ(::stat(upper.c_str(), &ust), 0);
    EXPECT_EQ(ust.st_size, kSize + 1) << tag;
    // Its data and the appended byte: a few blocks, not 64 MiB of zeros.
    EXPECT_LT(ust.st_blocks * 512, 1 << 20) << tag;
    int fd = ::open(upper.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    char buf[8] = {};
    EXPECT_EQ(::pread(fd, buf, 4, 0), 4);
    EXPECT_EQ(std::string(buf, 4), "head") << tag;
    EXPECT_EQ(::pread(fd, buf, 5, kMid - 1), 5);
    EXPECT_EQ(std::string(buf, 5), std::string("\0mid\0", 5)) << tag;
    EXPECT_EQ(::pread(fd, buf, 2, kSize - 1), 2);
    EXPECT_EQ(std::string(buf, 2), std::string("\0+", 2)) << tag;
    ::close(fd);
  }
}

// Copying up a file 1000 directories deep in a lower layer, on a thread with a
// 64 KiB stack: the ancestors are copied up without a stack frame each.
TEST_F(CopyUpTest, ADeepTreeIsCopiedUpOnASmallStack) {
  constexpr int kDepth = 1000;
  // Each directory node holds fds (its lower's, then its upper's), and so does
  // the removal of the test's directories: the limit stays raised.
  struct rlimit rl {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_max < 4 * kDepth) GTEST_SKIP() << "needs " << 4 * kDepth << " fds";
  rl.rlim_cur = std::max<rlim_t>(rl.rlim_cur, 4 * kDepth);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
  int dfd = ::open((dir_ + "/lower").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dfd, 0);
  for (int i = 0; i < kDepth; i++) {
    ASSERT_EQ(::mkdirat(dfd, "d", 0755), 0);
    int next = ::openat(dfd, "d", O_PATH | O_DIRECTORY | O_CLOEXEC);
    ::close(dfd);
    ASSERT_GE(next, 0);
    dfd = next;
  }
  int ffd = ::openat(dfd, "f", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ::close(dfd);
  ASSERT_GE(ffd, 0);
  ASSERT_EQ(::write(ffd, "deep", 4), 4);
  ::close(ffd);
  {
    auto o = mount("t", true);
    ASSERT_TRUE(o);
    std::vector<Node*> path;  // every node looked up, forgotten at the end
    Node* n = o->root();
    for (int i = 0; i <= kDepth; i++) {
      auto e = o->lookup(n, i < kDepth ? "d" : "f");
      ASSERT_TRUE(e) << "level " << i;
      path.push_back(e->node);
      n = e->node;
    }
    struct Job {
      Overlay* o;
      Node* n;
      int err = -1;
    } job{o.get(), n};
    pthread_attr_t attr;
    ASSERT_EQ(::pthread_attr_init(&attr), 0);
    ASSERT_EQ(::pthread_attr_setstacksize(&attr, 64 << 10), 0);
    pthread_t t;
    ASSERT_EQ(::pthread_create(
                  &t, &attr,
                  [](void* p) -> void* {
                    auto* j = static_cast<Job*>(p);
                    auto fh = j->o->open(j->n, O_WRONLY | O_APPEND, Cred{});
                    j->err = fh ? 0 : fh.error();
                    if (fh) (void)j->o->release(fh->get());
                    return nullptr;
                  },
                  &job),
              0);
    ::pthread_join(t, nullptr);
    ::pthread_attr_destroy(&attr);
    EXPECT_EQ(job.err, 0) << std::strerror(job.err);
    for (auto it = path.rbegin(); it != path.rend(); ++it) o->forget(*it, 1);
  }
  std::string upper = dir_ + "/upper-t";
  int ufd = ::open(upper.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(ufd, 0);
  for (int i = 0; i < kDepth && ufd >= 0; i++) {
    int next = ::openat(ufd, "d", O_PATH | O_DIRECTORY | O_CLOEXEC);
    ::close(ufd);
    ufd = next;
  }
  ASSERT_GE(ufd, 0) << "the upper chain of directories is incomplete";
  struct stat st {};
  EXPECT_EQ(::fstatat(ufd, "f", &st, AT_SYMLINK_NOFOLLOW), 0);
  EXPECT_EQ(st.st_size, 4);
  ::close(ufd);
}

}  // namespace
}  // namespace ovlfs
