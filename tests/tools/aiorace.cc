// aiorace: buffered readers racing asynchronous direct writes of one file. After
// each direct write completes, a buffered read of the file must return what was
// written: a page the readers brought into the page cache during the write must not
// outlive it (fstests generic/451).
//
//   aiorace FILE SECONDS [READERS]
//
// FILE is created (640 KiB, O_DIRECT). READERS processes (2 by default) read the
// whole file through the page cache in a loop, while this process writes it whole
// with one Linux AIO direct write (io_submit), a different byte each time, waits
// for the write and reads the file back through a new buffered fd. Exit 0: SECONDS
// passed and every read-back was the written data ("N writes, no stale data");
// 1: a read-back returned other data (the first differing offset is printed);
// 2: a call failed.
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

namespace {

constexpr size_t kSize = 640 * 1024;
constexpr size_t kPage = 4096;

int die(const char* what) {
  std::fprintf(stderr, "aiorace: %s: %s\n", what, std::strerror(errno));
  return 2;
}

char* aligned(size_t size) {
  void* p = nullptr;
  return posix_memalign(&p, kPage, size) == 0 ? static_cast<char*>(p) : nullptr;
}

double now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

[[noreturn]] void reader(const char* path) {
  std::vector<char> buf(kSize);
  for (;;) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
      (void)!pread(fd, buf.data(), kSize, 0);
      close(fd);
    }
  }
}

// One direct write of `buf` at offset 0 through Linux AIO; the bytes written.
long aio_write(aio_context_t ctx, int fd, const char* buf) {
  iocb cb{};
  cb.aio_lio_opcode = IOCB_CMD_PWRITE;
  cb.aio_fildes = static_cast<unsigned>(fd);
  cb.aio_buf = reinterpret_cast<std::uint64_t>(buf);
  cb.aio_nbytes = kSize;
  cb.aio_offset = 0;
  iocb* list[1] = {&cb};
  if (syscall(SYS_io_submit, ctx, 1, list) != 1) return -1;
  io_event ev{};
  long got;
  do {
    got = syscall(SYS_io_getevents, ctx, 1, 1, &ev, nullptr);
  } while (got < 0 && errno == EINTR);
  if (got != 1) return -1;
  if (ev.res < 0) {
    errno = static_cast<int>(-ev.res);
    return -1;
  }
  return static_cast<long>(ev.res);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: aiorace FILE SECONDS [READERS]\n");
    return 2;
  }
  const char* path = argv[1];
  const double secs = std::atof(argv[2]);
  const int readers = argc == 4 ? std::atoi(argv[3]) : 2;
  char* data = aligned(kSize);
  char* back = aligned(kSize);
  if (!data || !back) return die("posix_memalign");

  int fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0644);
  if (fd < 0) return die("open O_DIRECT");
  std::memset(data, 0x55, kSize);
  if (pwrite(fd, data, kSize, 0) != static_cast<ssize_t>(kSize)) return die("pwrite");
  if (fsync(fd) != 0) return die("fsync");

  aio_context_t ctx = 0;
  if (syscall(SYS_io_setup, 1, &ctx) != 0) return die("io_setup");

  std::vector<pid_t> kids;
  for (int i = 0; i < readers; ++i) {
    pid_t pid = fork();
    if (pid < 0) return die("fork");
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives the writer
      if (getppid() == 1) _exit(0);
      reader(path);
    }
    kids.push_back(pid);
  }
  auto stop = [&] {
    for (pid_t pid : kids) kill(pid, SIGKILL);
    for (pid_t pid : kids) waitpid(pid, nullptr, 0);
  };

  const double end = now() + secs;
  long writes = 0;
  int rc = 0;
  while (now() < end) {
    const char byte = static_cast<char>(writes % 2 ? 0xaa : 0x55);
    std::memset(data, byte, kSize);
    if (aio_write(ctx, fd, data) != static_cast<long>(kSize)) {
      rc = die("aio direct write");
      break;
    }
    ++writes;
    int rfd = open(path, O_RDONLY);
    if (rfd < 0 || pread(rfd, back, kSize, 0) != static_cast<ssize_t>(kSize)) {
      rc = die("buffered read-back");
      break;
    }
    close(rfd);
    if (std::memcmp(data, back, kSize) != 0) {
      size_t off = 0;
      while (data[off] == back[off]) ++off;
      std::printf("stale data after write %ld: offset %zu reads 0x%02x, written 0x%02x\n", writes,
                  off, static_cast<unsigned char>(back[off]), static_cast<unsigned char>(byte));
      rc = 1;
      break;
    }
  }
  stop();
  syscall(SYS_io_destroy, ctx);
  close(fd);
  if (rc == 0) std::printf("%ld writes, no stale data\n", writes);
  return rc;
}
