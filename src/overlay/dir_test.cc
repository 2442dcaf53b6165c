// Unit tests of namespace changes where the upper refuses mknod of a 0:0 whiteout:
// whiteouts are then AUFS `.wh.` files (overlay/dir.cc), read back as whiteouts.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "overlay/overlay.hpp"
#include "overlay/overlay_test.hpp"
#include "ovlfs/ioctl.h"

namespace ovlfs {
namespace {

class AufsWhiteoutTest : public testing::OverlayTest {
 protected:
  bool exists(const std::string& rel) {
    struct stat st;
    return ::lstat((dir_ + "/" + rel).c_str(), &st) == 0;
  }
  std::vector<std::string> names(Overlay& o) {
    std::vector<std::string> out;
    auto dh = o.opendir(o.root());
    EXPECT_TRUE(dh.has_value());
    if (!dh) return out;
    (void)o.readdir(dh->get(), 0, [&](const DirEntry& d, off_t) {
      if (d.name != "." && d.name != "..") out.push_back(d.name);
      return true;
    });
    return out;
  }
};

TEST_F(AufsWhiteoutTest, UnlinkAndRenameWriteWhFilesThatHideTheLowerName) {
  host_->inject(HostOp::mknodat, EPERM);
  auto o = mount("a", false);
  ASSERT_TRUE(o);
  ovlfs_status st{};
  o->wb_status(st);
  EXPECT_TRUE(st.flags & OVLFS_STATUS_AUFS_WHITEOUTS);

  ASSERT_TRUE(o->unlink(o->root(), "lowerfile").has_value());
  EXPECT_TRUE(exists("upper-a/.wh.lowerfile"));
  EXPECT_FALSE(exists("upper-a/lowerfile"));
  EXPECT_EQ(o->lookup(o->root(), "lowerfile").error(), ENOENT);
  EXPECT_TRUE(names(*o).empty());

  // A new file over the whiteout shows; removing it hides the lower's again.
  { auto f = testing::create(*o, "lowerfile"); ASSERT_TRUE(f); }
  auto e = o->lookup(o->root(), "lowerfile");
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->attr.st_size, 0);
  o->forget(e->node, 1);
  EXPECT_EQ(names(*o), std::vector<std::string>{"lowerfile"});
  ASSERT_TRUE(o->unlink(o->root(), "lowerfile").has_value());
  EXPECT_EQ(o->lookup(o->root(), "lowerfile").error(), ENOENT);
  EXPECT_TRUE(names(*o).empty());
}

TEST_F(AufsWhiteoutTest, RenameOfALowerFileLeavesAWhFileBehind) {
  host_->inject(HostOp::mknodat, EPERM);
  auto o = mount("r", false);
  ASSERT_TRUE(o);
  ASSERT_TRUE(o->rename(o->root(), "lowerfile", o->root(), "moved", 0).has_value());
  EXPECT_TRUE(exists("upper-r/.wh.lowerfile"));
  EXPECT_TRUE(exists("upper-r/moved"));
  EXPECT_EQ(o->lookup(o->root(), "lowerfile").error(), ENOENT);
  EXPECT_EQ(names(*o), std::vector<std::string>{"moved"});
}

TEST_F(AufsWhiteoutTest, WithMknodTheKernelsWhiteoutIsWritten) {
  auto o = mount("k", false);
  ASSERT_TRUE(o);
  ASSERT_TRUE(o->unlink(o->root(), "lowerfile").has_value());
  struct stat st;
  ASSERT_EQ(::lstat((dir_ + "/upper-k/lowerfile").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_FALSE(exists("upper-k/.wh.lowerfile"));
}

}  // namespace
}  // namespace ovlfs
