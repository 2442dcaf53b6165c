// Unit tests of copy-up (overlay/copy_up.cc): how the copy is built in the work
// directory and put into place, on temporary directories through a FaultyHost that
// can fail chosen calls. What the copy holds is compared with the kernel's overlayfs
// by the differential tests (tests/mount/diff).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/xattr.h>
#include <unistd.h>

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

}  // namespace
}  // namespace ovlfs
