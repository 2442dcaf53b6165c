// What the overlay's unit tests share: overlays mounted on a test's own temporary
// directories through a FaultyHost, and small helpers to open, write and release
// files in them. Needs root (trusted.* xattrs on the upper).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "host/fault_host.hpp"
#include "overlay/overlay.hpp"

namespace ovlfs::testing {

// A FaultyHost whose shared memory is a directory of the test's, whose boot id a
// test can change, and which can behave like an upper without O_TMPFILE.
class TestHost : public FaultyHost {
 public:
  TestHost(Host& inner, int shmdir) : FaultyHost(inner), shmdir_(shmdir) {}
  Result<Fd> shm_dir() override {
    if (int e = intercept(HostOp::shm_dir)) return ovlfs::fail(e);
    return inner().openat(shmdir_, ".", O_PATH | O_DIRECTORY);
  }
  Result<std::string> boot_id() override {
    if (!boot.empty()) return boot;
    return FaultyHost::boot_id();
  }
  Result<Fd> openat(int dirfd, const char* name, int flags, mode_t mode) override {
    if (no_tmpfile && (flags & O_TMPFILE) == O_TMPFILE) return ovlfs::fail(EOPNOTSUPP);
    if (path_open_error && (flags & O_PATH) && path_open_name == name)
      return ovlfs::fail(path_open_error);
    return FaultyHost::openat(dirfd, name, flags, mode);
  }
  std::string boot;         // "" = the real one
  bool no_tmpfile = false;  // O_TMPFILE opens fail with EOPNOTSUPP
  // O_PATH opens of this name fail with this errno (0: none do).
  int path_open_error = 0;
  std::string path_open_name;

 private:
  int shmdir_;
};

// A test's directory: lower/lowerfile ("lower data\n"), and overlays mounted with
// an upper and a work directory of their own (by tag).
class OverlayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (trusted.* xattrs on the upper)";
    char tmpl[] = "/tmp/ovlfs-overlay-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (const char* d : {"lower", "shm"}) std::filesystem::create_directory(dir_ + "/" + d);
    std::ofstream(dir_ + "/lower/lowerfile") << "lower data\n";
    shmfd_ = ::open((dir_ + "/shm").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(shmfd_, 0);
    host_ = std::make_unique<TestHost>(sys_, shmfd_);
  }
  void TearDown() override {
    if (shmfd_ >= 0) ::close(shmfd_);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  Config config(const std::string& tag, bool vol, ErrorsMode errors = ErrorsMode::cont) {
    Config cfg;
    cfg.lowerdirs = {dir_ + "/lower"};
    cfg.upperdir = dir_ + "/upper-" + tag;
    cfg.workdir = dir_ + "/work-" + tag;
    cfg.is_volatile = vol;
    cfg.errors = errors;
    cfg.writeback_ms = 3600000;  // passes only when a test asks
    std::filesystem::create_directories(cfg.upperdir);
    std::filesystem::create_directories(cfg.workdir);
    return cfg;
  }
  std::expected<std::unique_ptr<Overlay>, std::string> try_mount(const Config& cfg) {
    return Overlay::mount(*host_, cfg);
  }
  std::unique_ptr<Overlay> mount(const std::string& tag, bool vol,
                                 ErrorsMode errors = ErrorsMode::cont) {
    auto o = try_mount(config(tag, vol, errors));
    EXPECT_TRUE(o.has_value()) << (o ? "" : o.error());
    return o ? std::move(*o) : nullptr;
  }

  std::string dir_;
  int shmfd_ = -1;
  SysHost sys_;
  std::unique_ptr<TestHost> host_;
};

// An open file of a test overlay; released (and its node forgotten) on scope exit.
struct Open {
  Open(Overlay& o, Node* n, std::unique_ptr<FileHandle> f) : ovl(o), node(n), fh(std::move(f)) {}
  ~Open() {
    if (fh) (void)ovl.release(fh.get());
    fh.reset();
    ovl.forget(node, 1);
  }
  Overlay& ovl;
  Node* node;
  std::unique_ptr<FileHandle> fh;
};

inline std::unique_ptr<Open> create(Overlay& o, const char* name) {
  auto r = o.create(o.root(), name, 0644, O_RDWR, Cred{});
  EXPECT_TRUE(r.has_value()) << name << ": " << (r ? 0 : r.error());
  if (!r) return nullptr;
  return std::make_unique<Open>(o, r->first.node, std::move(r->second));
}

// The errno of opening `name` (in the root) with `flags`; the open file in `out`.
inline int try_open(Overlay& o, const char* name, int flags, std::unique_ptr<Open>* out) {
  auto e = o.lookup(o.root(), name);
  if (!e) return e.error();
  auto fh = o.open(e->node, flags, Cred{});
  if (!fh) {
    o.forget(e->node, 1);
    return fh.error();
  }
  *out = std::make_unique<Open>(o, e->node, std::move(*fh));
  return 0;
}

inline std::unique_ptr<Open> open(Overlay& o, const char* name, int flags) {
  std::unique_ptr<Open> f;
  int e = try_open(o, name, flags, &f);
  EXPECT_EQ(e, 0) << name << ": " << std::strerror(e);
  return f;
}

inline int write(Overlay& o, Open& f, const std::string& data = "some data\n") {
  auto n = o.write(f.fh.get(), data.data(), data.size(), 0);
  return n ? 0 : n.error();
}

}  // namespace ovlfs::testing
