// Unit tests of mount option parsing (overlay/params.cc): the forms container
// engines and mount(8) write.
#include "overlay/params.hpp"

#include <gtest/gtest.h>

namespace ovlfs {
namespace {

TEST(Params, BackslashesEscapeInPathsAsTheKernelReadsThem) {
  Config c;
  ASSERT_TRUE(parse_options(R"(lowerdir=/a\:b:/c\,d:/e\\f,upperdir=/u\:1,workdir=/w)", c));
  EXPECT_EQ(c.lowerdirs, (std::vector<std::string>{"/a:b", "/c,d", "/e\\f"}));
  EXPECT_EQ(c.upperdir, "/u:1");
}

TEST(Params, QuotesKeepCommasInAValue) {
  Config c;
  ASSERT_TRUE(parse_options(
      R"(lowerdir=/l,context="system_u:object_r:container_file_t:s0:c1,c2",private,ro)", c));
  EXPECT_TRUE(c.read_only);
  EXPECT_TRUE(c.ignored.empty());
}

TEST(Params, UnknownOptionsAreIgnoredAndNamed) {
  Config c;
  ASSERT_TRUE(parse_options("lowerdir=/l,bogus=1,another", c));
  EXPECT_EQ(c.ignored, (std::vector<std::string>{"bogus=1", "another"}));
}

TEST(Params, MappingsAreDiskMountCountTriples) {
  Config c;
  ASSERT_TRUE(parse_options("uidmapping=:0:100000:65536:65536:1000:1,gidmapping=0:5:1", c));
  ASSERT_EQ(c.uid_map.size(), 2u);
  EXPECT_EQ(id_to_mount(c.uid_map, 5), 100005u);
  EXPECT_EQ(id_to_mount(c.uid_map, 65536), 1000u);
  EXPECT_EQ(id_to_mount(c.uid_map, 70000), kOverflowId);
  EXPECT_EQ(id_to_disk(c.uid_map, 100007), 7u);
  EXPECT_EQ(id_to_disk(c.uid_map, 1000), 65536u);
  EXPECT_EQ(id_to_disk(c.uid_map, 3), kOverflowId);
  EXPECT_EQ(id_to_mount({}, 42), 42u);
  for (const char* bad : {"uidmapping=0:1", "uidmapping=0:1:0", "uidmapping=a:b:c",
                          "uidmapping=4294967295:0:2", "gidmapping="})
    EXPECT_FALSE(parse_options(bad, c)) << bad;
}

TEST(Params, Fsync0IsVolatileWhereThereIsAnUpper) {
  Config c;
  ASSERT_TRUE(parse_options("lowerdir=/l,upperdir=/u,workdir=/w,fsync=0", c));
  ASSERT_TRUE(check_config(c));
  EXPECT_TRUE(c.is_volatile);
  Config r;
  ASSERT_TRUE(parse_options("lowerdir=/l,fsync=0", r));
  ASSERT_TRUE(check_config(r));
  EXPECT_FALSE(r.is_volatile);
}

TEST(Params, BadValuesOfKnownOptionsAreRefused) {
  for (const char* bad : {"xattr_permissions=3", "fsync=2", "noxattrs=yes", "timeout=-1",
                          "squash_to_uid=x", "metacopy=on", "redirect_dir=maybe"}) {
    Config c;
    auto r = parse_options(bad, c);
    EXPECT_FALSE(r) << bad;
  }
}

}  // namespace
}  // namespace ovlfs
