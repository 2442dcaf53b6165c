// diocollide: makes the kernel's file-local "page cache invalidation failure on
// direct I/O" error on one file. One thread keeps dirtying the first page through
// a shared mapping while direct writes land on that page; a direct write that then
// cannot drop the cached page puts EIO in the file's errseq only, never in its
// filesystem's (dio_warn_stale_pagecache).
//
//   diocollide FILE WRITES           WRITES direct writes, then exit 0
//   diocollide --check FILE SECONDS  until an fd of FILE opened first reports the
//                                    error (sync_file_range): exit 0, or 1 if none
//                                    came within SECONDS
// FILE is created (1 MiB) if missing. Exit 2: a call failed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <thread>

namespace {

constexpr long kSize = 1 << 20;
constexpr long kPage = 4096;

int die(const char* what) {
  std::fprintf(stderr, "diocollide: %s: %s\n", what, std::strerror(errno));
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const bool check = argc == 4 && std::strcmp(argv[1], "--check") == 0;
  if (argc != 3 && !check) {
    std::fprintf(stderr, "usage: diocollide FILE WRITES | diocollide --check FILE SECONDS\n");
    return 2;
  }
  const char* path = argv[check ? 2 : 1];
  const long limit = std::atol(argv[check ? 3 : 2]);
  int fd = open(path, O_RDWR | O_CREAT, 0644);
  if (fd < 0) return die("open");
  struct stat st;
  if (fstat(fd, &st) != 0) return die("fstat");
  if (st.st_size < kSize && ftruncate(fd, kSize) != 0) return die("ftruncate");
  int watch = open(path, O_RDONLY);
  if (watch < 0) return die("open (watch)");
  int dfd = open(path, O_RDWR | O_DIRECT);
  if (dfd < 0) return die("open O_DIRECT");
  void* m = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return die("mmap");
  volatile char* map = static_cast<char*>(m);
  void* buf = nullptr;
  if (posix_memalign(&buf, kPage, kPage) != 0) return die("posix_memalign");
  std::memset(buf, 'd', kPage);
  std::atomic<bool> stop{false};
  std::thread dirtier([&] {
    for (unsigned i = 0; !stop.load(std::memory_order_relaxed); ++i)
      map[(i * 64) % kPage] = static_cast<char>(i);
  });
  const std::time_t end = std::time(nullptr) + limit;
  int rc = check ? 1 : 0;
  for (long n = 1;; ++n) {
    if (pwrite(dfd, buf, kPage, 0) != kPage) {
      rc = die("pwrite O_DIRECT");
      break;
    }
    if (!check) {
      if (n >= limit) break;
      continue;
    }
    if (n % 256 == 0 && sync_file_range(watch, 0, 0, SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
      rc = errno == EIO ? 0 : die("sync_file_range");
      break;
    }
    if (std::time(nullptr) >= end) break;
  }
  stop.store(true);
  dirtier.join();
  return rc;
}
