// Unit tests of writeback errors (overlay/wb.hpp): overlays mounted on temporary
// directories through a FaultyHost that fails chosen calls with chosen errnos, so
// every row of SPEC 2's table can be driven without a real disk error. The shared
// record lives in the test's own directory (TestHost::shm_open), not in /dev/shm.
#include "overlay/wb.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "overlay/overlay.hpp"
#include "overlay/overlay_test.hpp"
#include "ovlfs/ioctl.h"

namespace ovlfs {
namespace {

class WbTest : public testing::OverlayTest {
 protected:
  std::string volatile_record(const std::string& tag) {
    std::ifstream f(dir_ + "/work-" + tag + "/work/incompat/volatile/ovlfs");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
};

using testing::create;
using testing::open;
using testing::Open;
using testing::TestHost;
using testing::write;

int fsync(Overlay& o, Open& f, bool datasync = false) {
  auto s = o.fsync(f.fh.get(), datasync);
  return s ? 0 : s.error();
}

int syncfs(Overlay& o, WbOpen* ofd) {
  auto s = o.syncfs(ofd);
  return s ? 0 : s.error();
}

ovlfs_status status(const Overlay& o) {
  ovlfs_status st{};
  o.wb_status(st);
  return st;
}

// Makes one real-looking writeback error: the next writeback pass of `o` fails
// with `err` on the file written through `f`.
void writeback_error(TestHost& host, Overlay& o, Open& f, int err = EIO) {
  ASSERT_EQ(write(o, f), 0);
  host.inject(HostOp::sync_file_range, err, 1);
  o.writeback()->pass();
  host.clear(HostOp::sync_file_range);
}

// --- the shared record ------------------------------------------------------------

TEST(UpperRecordName, KeyedByDeviceAndUuidOrFsid) {
  unsigned char uuid[16];
  for (int i = 0; i < 16; ++i) uuid[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(upper_record_name(makedev(7, 3), uuid, 0),
            "ovlfs-wb-7.3-000102030405060708090a0b0c0d0e0f");
  EXPECT_EQ(upper_record_name(makedev(0, 42), nullptr, 0x1234),
            "ovlfs-wb-0.42-fsid0000000000001234");
  EXPECT_EQ(upper_record_name(makedev(7, 3), uuid, 0, 1000),
            "ovlfs-wb-u1000-7.3-000102030405060708090a0b0c0d0e0f");
}

TEST_F(WbTest, EveryProcessOnTheUpperSharesOneWord) {
  auto a = UpperRecord::attach(*host_, "ovlfs-wb-test-a");
  auto b = UpperRecord::attach(*host_, "ovlfs-wb-test-a");
  auto c = UpperRecord::attach(*host_, "ovlfs-wb-test-c");
  ASSERT_TRUE(a && b && c);
  const auto cursor = (*b)->word().peek();
  (*a)->record(EIO, false);
  EXPECT_EQ((*b)->word().check(cursor), EIO);
  EXPECT_EQ((*b)->count(), 1u);
  EXPECT_EQ((*c)->word().check(0), 0);  // another upper: untouched
}

TEST_F(WbTest, TheLastProcessToDetachRemovesARecordWithoutErrors) {
  auto exists = [&](const char* n) { return std::filesystem::exists(dir_ + "/shm/" + n); };
  auto a = UpperRecord::attach(*host_, "clean");
  auto b = UpperRecord::attach(*host_, "clean");
  ASSERT_TRUE(a && b);
  a->reset();
  EXPECT_TRUE(exists("clean"));  // b still attached
  b->reset();
  EXPECT_FALSE(exists("clean"));
  auto e = UpperRecord::attach(*host_, "failed");
  ASSERT_TRUE(e);
  (*e)->record(EIO, false);
  e->reset();
  EXPECT_TRUE(exists("failed"));  // an error stays for the rest of the boot
  auto again = UpperRecord::attach(*host_, "failed");
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->word().check(0), EIO);
}

TEST_F(WbTest, RecordsLeftByDeadProcessesAreSweptUnlessTheyHoldAnError) {
  auto exists = [&](const char* n) { return std::filesystem::exists(dir_ + "/shm/" + n); };
  // What a killed process leaves: its record, with nobody holding it.
  auto leave = [&](const char* n, std::uint64_t count, std::uint64_t word) {
    WbSharedPage page{};
    std::memcpy(page.magic, "ovlfs-wb-1", 11);
    page.count = count;
    page.errseq = word;
    std::ofstream(dir_ + "/shm/" + n, std::ios::binary)
        .write(reinterpret_cast<const char*>(&page), sizeof page);
  };
  leave("ovlfs-wb-dead", 0, 0);
  leave("ovlfs-wb-failed", 1, EIO);
  auto live = UpperRecord::attach(*host_, "ovlfs-wb-live");
  ASSERT_TRUE(live);
  auto other = UpperRecord::attach(*host_, "ovlfs-wb-other");
  ASSERT_TRUE(other);
  EXPECT_FALSE(exists("ovlfs-wb-dead"));
  EXPECT_TRUE(exists("ovlfs-wb-failed"));  // its error stays for the rest of the boot
  EXPECT_TRUE(exists("ovlfs-wb-live"));    // attached
  EXPECT_TRUE(exists("ovlfs-wb-other"));
}

TEST_F(WbTest, RecordOfAnEarlierBootIsRenewed) {
  host_->boot = "boot-1";
  auto a = UpperRecord::attach(*host_, "ovlfs-wb-test-boot");
  ASSERT_TRUE(a);
  (*a)->record(EIO, false);
  a->reset();
  host_->boot = "boot-2";
  auto b = UpperRecord::attach(*host_, "ovlfs-wb-test-boot");
  ASSERT_TRUE(b);
  EXPECT_EQ((*b)->word().check(0), 0);
  EXPECT_EQ((*b)->count(), 0u);
}

TEST_F(WbTest, MountFailsWhenTheSharedRecordCannotBeMade) {
  host_->inject(HostOp::shm_dir, EACCES);
  auto o = try_mount(config("m", true));
  ASSERT_FALSE(o.has_value());
  EXPECT_NE(o.error().find("Permission denied"), std::string::npos) << o.error();
}

// A record under the upper's name that another user made (or anyone may read or
// write) is never used: root removes it and makes its own.
TEST_F(WbTest, ASquattedRecordIsReplacedNotShared) {
  auto probe = mount("p", true);
  ASSERT_TRUE(probe);
  ovlfs_status st{};
  probe->wb_status(st);
  probe.reset();
  const std::string rec = dir_ + "/shm/" + st.shm_name;
  for (int variant = 0; variant < 2; ++variant) {
    std::filesystem::remove(rec);
    { std::ofstream(rec) << "forged"; }
    if (variant == 0) ASSERT_EQ(::chown(rec.c_str(), 1234, 1234), 0);
    else ASSERT_EQ(::chmod(rec.c_str(), 0666), 0);
    const int squatter = ::open(rec.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(squatter, 0);
    auto o = mount("q" + std::to_string(variant), true);
    ASSERT_TRUE(o);
    struct stat old_file, after;
    ASSERT_EQ(::fstat(squatter, &old_file), 0);
    ::close(squatter);
    EXPECT_EQ(old_file.st_nlink, 0u) << "variant " << variant << ": the squatter's file is gone";
    ASSERT_EQ(::stat(rec.c_str(), &after), 0);
    EXPECT_EQ(after.st_uid, 0u);
    EXPECT_EQ(after.st_mode & 0777, 0600u);
  }
}

// --- volatile ----------------------------------------------------------------------

TEST_F(WbTest, VolatileFsyncReportsTheLatestErrorOnEveryCallOfEveryFd) {
  auto o = mount("v", true);
  auto before = create(*o, "f");
  auto other = create(*o, "g");
  EXPECT_EQ(fsync(*o, *before), 0);
  writeback_error(*host_, *o, *before, ENOSPC);
  auto after = open(*o, "f", O_RDONLY);
  auto lower = open(*o, "lowerfile", O_RDONLY);
  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(fsync(*o, *before), ENOSPC);
    EXPECT_EQ(fsync(*o, *before, true), ENOSPC);
    EXPECT_EQ(fsync(*o, *other), ENOSPC);
    EXPECT_EQ(fsync(*o, *after), ENOSPC);
    EXPECT_EQ(fsync(*o, *lower), ENOSPC);
    EXPECT_EQ(syncfs(*o, before->fh->wb.get()), EIO);
  }
  auto dh = o->opendir(o->root());
  ASSERT_TRUE(dh);
  o->wb_opendir(dh->get());
  EXPECT_EQ(o->wb_fsyncdir(dh->get(), false), fail(ENOSPC));
  EXPECT_EQ(syncfs(*o, (*dh)->wb.get()), EIO);
  const ovlfs_status st = status(*o);
  EXPECT_EQ(st.mount_errno, ENOSPC);
  EXPECT_EQ(st.upper_errors, 1u);
  EXPECT_TRUE(st.flags & OVLFS_STATUS_VOLATILE);
}

TEST_F(WbTest, VolatileNeverSyncsTheUpper) {
  auto o = mount("v", true);
  {
    auto f = create(*o, "f");
    auto l = open(*o, "lowerfile", O_RDWR);  // a copy-up
    for (int i = 0; i < 50; ++i) {
      ASSERT_EQ(write(*o, *f), 0);
      ASSERT_EQ(write(*o, *l), 0);
      EXPECT_EQ(fsync(*o, *f), 0);
      EXPECT_EQ(fsync(*o, *l, true), 0);
      EXPECT_EQ(syncfs(*o, f->fh->wb.get()), 0);
      if (i % 10 == 0) o->writeback()->pass();
    }
  }
  o->wb_finish();
  EXPECT_EQ(host_->calls(HostOp::fsync), 0u);
  EXPECT_EQ(host_->calls(HostOp::fdatasync), 0u);
  EXPECT_EQ(host_->calls(HostOp::syncfs), 0u);
  EXPECT_GT(host_->calls(HostOp::sync_file_range), 0u);
  EXPECT_EQ(status(*o).dirty_files, 0u);
}

TEST_F(WbTest, VolatileMountsWhileTheUpperHasAnUnseenErrorAndLeavesItUnseen) {
  auto first = mount("a", false);
  auto f = create(*first, "f");
  writeback_error(*host_, *first, *f);  // recorded on U; nobody has reported it
  auto vol = mount("v", true);          // mounts anyway
  ASSERT_TRUE(vol);
  auto g = create(*vol, "g");
  EXPECT_EQ(fsync(*vol, *g), 0);  // an error from before its mount is not its
  EXPECT_EQ(syncfs(*vol, g->fh->wb.get()), 0);
  EXPECT_EQ(status(*vol).upper_errors, 1u);
  EXPECT_EQ(status(*vol).mount_errno, 0);
  // The peek at mount hid nothing: the error is still unseen on U...
  EXPECT_EQ(status(*vol).upper_errseq & errseq_rules<std::uint64_t>::seen, 0u);
  // ...so a new fd in the other mount still reports it.
  auto late = open(*first, "f", O_RDONLY);
  EXPECT_EQ(syncfs(*first, late->fh->wb.get()), EIO);
  // An error after the volatile mount reaches it.
  writeback_error(*host_, *first, *f);
  EXPECT_EQ(fsync(*vol, *g), EIO);
}

// --- non-volatile ------------------------------------------------------------------

TEST_F(WbTest, NonVolatileFsyncReportsEachErrorOncePerOpenFile) {
  auto o = mount("n", false);
  auto a = create(*o, "f");
  auto b = open(*o, "f", O_RDWR);
  ASSERT_EQ(write(*o, *a), 0);
  host_->inject(HostOp::fsync, EIO, 1);  // the upper's fsync finds the error
  EXPECT_EQ(fsync(*o, *a), EIO);
  EXPECT_EQ(fsync(*o, *a), 0);
  EXPECT_EQ(fsync(*o, *b, true), EIO);  // its own report
  EXPECT_EQ(fsync(*o, *b, true), 0);
  auto seen = open(*o, "f", O_RDONLY);  // after it was seen: nothing to report
  EXPECT_EQ(fsync(*o, *seen), 0);
  EXPECT_EQ(host_->calls(HostOp::fsync), 3u);
  EXPECT_EQ(host_->calls(HostOp::fdatasync), 2u);
}

TEST_F(WbTest, NonVolatileFsyncOfAnFdOpenedAfterAnUnseenErrorReportsIt) {
  auto o = mount("n", false);
  auto a = create(*o, "f");
  writeback_error(*host_, *o, *a);  // found by the writeback pass; nobody told
  auto unseen = open(*o, "f", O_RDONLY);
  EXPECT_EQ(fsync(*o, *unseen), EIO);
  EXPECT_EQ(fsync(*o, *unseen), 0);
  EXPECT_EQ(fsync(*o, *a), EIO);  // opened before: its own report
  auto seen = open(*o, "f", O_RDONLY);
  EXPECT_EQ(fsync(*o, *seen), 0);
  // Another file of the mount has no error of its own.
  auto g = create(*o, "g");
  EXPECT_EQ(fsync(*o, *g), 0);
}

TEST_F(WbTest, NonVolatileSyncfsReportsOncePerOpenFileAndOnceToEachMountsFirstCaller) {
  auto m1 = mount("m1", false);
  auto m2 = mount("m2", false);
  auto m3 = mount("m3", true);
  auto f = create(*m1, "f");
  auto before = create(*m2, "g");
  auto dh = m2->opendir(m2->root());
  m2->wb_opendir(dh->get());
  writeback_error(*host_, *m1, *f);

  auto fresh = open(*m2, "g", O_RDONLY);  // after the error, while unseen
  EXPECT_EQ(syncfs(*m2, fresh->fh->wb.get()), EIO);   // the mount's first caller
  EXPECT_EQ(syncfs(*m2, fresh->fh->wb.get()), 0);
  EXPECT_EQ(syncfs(*m2, before->fh->wb.get()), EIO);  // its own report
  EXPECT_EQ(syncfs(*m2, before->fh->wb.get()), 0);
  EXPECT_EQ(syncfs(*m2, (*dh)->wb.get()), EIO);       // a directory too
  EXPECT_EQ(syncfs(*m2, (*dh)->wb.get()), 0);
  EXPECT_EQ(syncfs(*m2, nullptr), 0);
  {
    auto seen = open(*m2, "g", O_RDONLY);  // opened after it was seen
    EXPECT_EQ(syncfs(*m2, seen->fh->wb.get()), 0);
  }
  {
    // Mount 1's first caller, through a new fd: the error is seen by now, so the
    // fd's own cursor starts after it, but the mount has not reported it yet.
    auto seen = open(*m1, "f", O_RDONLY);
    EXPECT_EQ(syncfs(*m1, seen->fh->wb.get()), EIO);
    EXPECT_EQ(syncfs(*m1, seen->fh->wb.get()), 0);
    auto again = open(*m1, "f", O_RDONLY);
    EXPECT_EQ(syncfs(*m1, again->fh->wb.get()), 0);
  }
  EXPECT_EQ(syncfs(*m3, nullptr), EIO);  // volatile: every call
  EXPECT_EQ(syncfs(*m3, nullptr), EIO);
  EXPECT_EQ(status(*m2).upper_errors, 1u);
}

TEST_F(WbTest, AResultOfSyncfsIsRecordedOnlyWhenNothingExplainsIt) {
  auto m1 = mount("m1", false);
  auto m2 = mount("m2", false);
  auto f = create(*m1, "f");
  writeback_error(*host_, *m1, *f);
  ASSERT_EQ(status(*m1).upper_errors, 1u);
  // Both mounts' syncfs(U) now report the same error, each to its own fd: the
  // file-level record explains it; no second error appears.
  host_->inject(HostOp::syncfs, EIO, 2);
  EXPECT_EQ(syncfs(*m1, nullptr), EIO);
  EXPECT_EQ(syncfs(*m2, nullptr), EIO);
  EXPECT_EQ(status(*m1).upper_errors, 1u);
  EXPECT_EQ(syncfs(*m1, nullptr), 0);
  EXPECT_EQ(syncfs(*m2, nullptr), 0);
  // A syncfs(U) error with nothing recorded since the previous syncfs is new.
  auto g = create(*m1, "g");
  ASSERT_EQ(write(*m1, *g), 0);
  host_->inject(HostOp::syncfs, ENOSPC, 1);
  EXPECT_EQ(syncfs(*m2, nullptr), ENOSPC);
  EXPECT_EQ(status(*m1).upper_errors, 2u);
  // m1's files, not checked since, then show the same error at the file level: it
  // is recorded in their own words, not on U a second time.
  host_->inject(HostOp::sync_file_range, ENOSPC, 2);
  m1->writeback()->pass();
  host_->clear(HostOp::sync_file_range);
  EXPECT_EQ(status(*m1).upper_errors, 2u);
  EXPECT_EQ(status(*m1).file_errors, 3u);
  EXPECT_EQ(syncfs(*m1, nullptr), ENOSPC);  // reaches the other mount, once
  EXPECT_EQ(syncfs(*m1, nullptr), 0);
  EXPECT_EQ(fsync(*m1, *g), ENOSPC);  // and the file's own open file description
}

TEST_F(WbTest, AnErrorOfAFileWrittenDirectlyIsUpperOnlyWhenTheSuperblockHasOne) {
  // A direct write that cannot drop cached pages puts EIO in its file's errseq
  // only (the kernel's dio_warn_stale_pagecache). A non-volatile mount asks U's
  // superblock (syncfs); a volatile one may not sync U, and keeps it the file's.
  auto n = mount("n", false);
  auto v = mount("v", true);
  std::vector<std::unique_ptr<Open>> held;
  for (Overlay* o : {n.get(), v.get()}) {
    const auto syncs = host_->calls(HostOp::syncfs);
    held.push_back(create(*o, "f"));
    held.push_back(open(*o, "f", O_RDWR | O_DIRECT));  // a direct writer of the file
    ASSERT_TRUE(held.back());
    writeback_error(*host_, *o, *held[held.size() - 2]);  // syncfs(U), if asked, finds nothing
    EXPECT_EQ(status(*o).file_errors, 1u);
    EXPECT_EQ(status(*o).local_errors, 1u);
    EXPECT_EQ(status(*o).upper_errors, 0u);
    EXPECT_EQ(host_->calls(HostOp::syncfs) - syncs, o == v.get() ? 0u : 1u);
  }
  auto f = open(*n, "f", O_RDWR);
  EXPECT_EQ(fsync(*n, *f), EIO);  // the file's own error, to an ofd that has not seen it
  EXPECT_EQ(fsync(*v, *open(*v, "f", O_RDWR)), 0);
  // The superblock has one too: U's, recorded once, from the syncfs that found it.
  ASSERT_EQ(write(*n, *f), 0);
  host_->inject(HostOp::sync_file_range, EIO, 1);
  host_->inject(HostOp::syncfs, EIO, 1);
  n->writeback()->pass();
  host_->clear();
  EXPECT_EQ(status(*n).upper_errors, 1u);
  EXPECT_EQ(status(*n).local_errors, 1u);
  EXPECT_EQ(fsync(*v, *open(*v, "f", O_RDWR)), EIO);
  EXPECT_EQ(syncfs(*n, nullptr), EIO);
  // Found by a syncfs of the mount, whose pass then finds it in the file: U's, once.
  ASSERT_EQ(write(*n, *f), 0);
  host_->inject(HostOp::syncfs, ENOSPC, 1);
  host_->inject(HostOp::sync_file_range, ENOSPC, 1);
  EXPECT_EQ(syncfs(*n, nullptr), ENOSPC);
  host_->clear();
  EXPECT_EQ(status(*n).upper_errors, 2u);
  EXPECT_EQ(status(*n).local_errors, 1u);
  // A file never written directly: its error is U's without asking.
  held.clear();
  f.reset();
  n->writeback()->pass();  // f's last check after its writers closed
  const auto syncs = host_->calls(HostOp::syncfs);
  auto g = create(*n, "g");
  writeback_error(*host_, *n, *g, EIO);
  EXPECT_EQ(host_->calls(HostOp::syncfs), syncs);
  EXPECT_EQ(status(*n).upper_errors, 3u);
}

TEST_F(WbTest, AFileOpenForWritingIsCheckedOnEveryPassAndOnceAfterItCloses) {
  // Writes may reach the upper without the daemon (FUSE passthrough): a file open
  // for writing is checked on every pass whether or not a write came through.
  auto o = mount("n", false);
  auto f = create(*o, "f");
  // A pass starts the writeback of every file (one call each), then checks each
  // (write and wait, another); a start that fails is the file's check.
  const auto before = host_->calls(HostOp::sync_file_range);
  o->writeback()->pass();
  o->writeback()->pass();
  EXPECT_EQ(host_->calls(HostOp::sync_file_range), before + 4);
  host_->inject(HostOp::sync_file_range, EIO, 1);
  o->writeback()->pass();
  EXPECT_EQ(host_->calls(HostOp::sync_file_range), before + 5);
  EXPECT_EQ(status(*o).upper_errors, 1u);
  EXPECT_EQ(fsync(*o, *f), EIO);
  const auto closing = host_->calls(HostOp::sync_file_range);
  f.reset();  // closed: checked by the next pass, then no more
  o->writeback()->pass();
  o->writeback()->pass();
  EXPECT_EQ(host_->calls(HostOp::sync_file_range), closing + 2);
}

TEST_F(WbTest, AWriteThatFailsAtOnceIsReturnedAndNotRecorded) {
  for (bool vol : {true, false}) {
    auto o = mount(vol ? "v" : "n", vol);
    auto f = create(*o, "f");
    host_->inject(HostOp::pwrite, ENOSPC, 1);
    EXPECT_EQ(write(*o, *f), ENOSPC);
    host_->inject(HostOp::pwrite, EIO, 1);
    EXPECT_EQ(write(*o, *f), EIO);
    o->writeback()->pass();
    EXPECT_EQ(fsync(*o, *f), 0);
    EXPECT_EQ(syncfs(*o, nullptr), 0);
    EXPECT_EQ(status(*o).upper_errors, 0u);
  }
}

TEST_F(WbTest, RemountRoFailsEveryWriteWithErofsOnceTheMountHasAnError) {
  auto o = mount("r", false, ErrorsMode::remount_ro);
  auto f = create(*o, "f");
  EXPECT_EQ(write(*o, *f), 0);
  EXPECT_TRUE(o->writable());
  writeback_error(*host_, *o, *f);
  EXPECT_FALSE(o->writable());
  EXPECT_EQ(write(*o, *f), EROFS);
  EXPECT_EQ(o->create(o->root(), "g", 0644, O_RDWR, Cred{}).error(), EROFS);
  EXPECT_EQ(o->mkdir(o->root(), "d", 0755, Cred{}).error(), EROFS);
  EXPECT_EQ(o->unlink(o->root(), "f").error(), EROFS);
  auto e = o->lookup(o->root(), "lowerfile");
  ASSERT_TRUE(e);
  EXPECT_EQ(o->open(e->node, O_WRONLY, Cred{}).error(), EROFS);
  o->forget(e->node, 1);
  EXPECT_TRUE(status(*o).flags & OVLFS_STATUS_READ_ONLY);
  // errors=continue (the default) stays writable.
  auto c = mount("c", false);
  auto g = create(*c, "g");
  EXPECT_EQ(write(*c, *g), 0);
  EXPECT_TRUE(c->writable());
}

// --- the volatile marker -------------------------------------------------------------

TEST_F(WbTest, VolatileMountWritesTheKernelsMarkerAndItsRecord) {
  auto o = mount("v", true);
  EXPECT_TRUE(std::filesystem::is_directory(dir_ + "/work-v/work/incompat/volatile/dirty"));
  EXPECT_NE(volatile_record("v").find("state dirty"), std::string::npos);
  o->wb_finish();
  EXPECT_NE(volatile_record("v").find("state clean"), std::string::npos);
}

TEST_F(WbTest, AVolatileWorkdirIsReusedOnlyWhenSafe) {
  auto expect_refused = [&](const std::string& tag, bool vol, const std::string& why) {
    auto o = try_mount(config(tag, vol));
    ASSERT_FALSE(o.has_value()) << tag;
    EXPECT_NE(o.error().find("(EINVAL)"), std::string::npos) << o.error();
    EXPECT_NE(o.error().find(why), std::string::npos) << o.error();
  };
  // Ended cleanly, nothing since: allowed (volatile again, then non-volatile,
  // which drops the marker).
  {
    auto o = mount("ok", true);
    auto f = create(*o, "f");
    ASSERT_EQ(write(*o, *f), 0);
    f.reset();
    o->wb_finish();
  }
  {
    auto o = mount("ok", true);
    ASSERT_TRUE(o);
    o->wb_finish();
  }
  {
    const auto syncs = host_->calls(HostOp::syncfs);
    auto o = mount("ok", false);
    ASSERT_TRUE(o);
    EXPECT_EQ(host_->calls(HostOp::syncfs), syncs + 1);  // made durable first
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/work-ok/work/incompat"));
  }
  // Still mounted, or killed while serving: its record says dirty.
  {
    auto o = mount("dirty", true);
    o->wb_start();
    o->writeback()->pass();
  }  // gone without wb_finish(), as a killed daemon
  expect_refused("dirty", true, "did not end cleanly");
  expect_refused("dirty", false, "did not end cleanly");
  // Mounted, but never served (the FUSE mount failed): nothing was written.
  { auto o = mount("never", true); }
  EXPECT_NE(volatile_record("never").find("state clean"), std::string::npos);
  EXPECT_TRUE(try_mount(config("never", true)).has_value());
  // Ended with an upper error.
  {
    auto o = mount("err", true);
    auto f = create(*o, "f");
    writeback_error(*host_, *o, *f);
    f.reset();
    o->wb_finish();
  }
  expect_refused("err", true, "ended with an upper writeback error (EIO)");
  // Ended cleanly, but the upper has had an error since.
  {
    auto o = mount("since", true);
    o->wb_finish();
  }
  {
    auto o = mount("other", false);
    auto f = create(*o, "f");
    writeback_error(*host_, *o, *f);
  }
  expect_refused("since", true, "has had a writeback error since");
  // Another boot.
  {
    auto o = mount("boot", true);
    o->wb_finish();
  }
  host_->boot = "another-boot";
  expect_refused("boot", true, "earlier boot");
  host_->boot.clear();
  // The kernel's marker alone (its overlayfs made it): no record.
  std::filesystem::create_directories(dir_ + "/work-kernel/work/incompat/volatile/dirty");
  expect_refused("kernel", true, "no ovlfs record");
}

TEST_F(WbTest, AVolatileWorkdirOfAnotherUpperIsRefused) {
  {
    auto o = mount("up", true);
    o->wb_finish();
  }
  const std::string rec = dir_ + "/work-up/work/incompat/volatile/ovlfs";
  std::string text = volatile_record("up");
  auto p = text.find("\nupper ");
  ASSERT_NE(p, std::string::npos);
  text.insert(p + 7, "x");
  std::ofstream(rec) << text;
  auto o = try_mount(config("up", true));
  ASSERT_FALSE(o);
  EXPECT_NE(o.error().find("another upper filesystem"), std::string::npos) << o.error();
}

}  // namespace
}  // namespace ovlfs
