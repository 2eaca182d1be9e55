// Thin native shim for deno-kvm. It wraps only what JavaScript cannot do well
// through Deno FFI: system calls whose failure is reported through errno
// (every function here returns -errno instead, so JS never reads a thread-local
// errno after the fact), mmap, and the signal that kicks a vCPU thread out of
// KVM_RUN. There is deliberately no KVM logic in this file.
//
// Every export keeps to Deno's FFI fast path: integer and pointer arguments,
// no struct passed by value.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

// Bumped whenever a signature changes, so a stale cached build is detected.
EXPORT int32_t kvm_shim_version(void) { return 4; }

EXPORT int32_t kvm_open(const char *path, int32_t flags) {
  int fd = open(path, flags | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

EXPORT int32_t kvm_close(int32_t fd) { return close(fd) < 0 ? -errno : 0; }

// ioctl whose argument is a pointer to a struct (or NULL).
EXPORT int32_t kvm_ioctl_ptr(int32_t fd, uint32_t request, void *arg) {
  int ret = ioctl(fd, (unsigned long)request, arg);
  return ret < 0 ? -errno : ret;
}

// ioctl whose argument is a plain integer (a vCPU id, a capability number,
// an address for KVM_SET_TSS_ADDR...).
EXPORT int32_t kvm_ioctl_val(int32_t fd, uint32_t request, uint64_t arg) {
  int ret = ioctl(fd, (unsigned long)request, (unsigned long)arg);
  return ret < 0 ? -errno : ret;
}

// mmap; the address goes to *out because a pointer result cannot also carry
// -errno. fd < 0 maps anonymous memory.
EXPORT int32_t kvm_mmap(int32_t fd, uint64_t length, int32_t prot,
                        int32_t flags, uint64_t offset, uint64_t *out) {
  if (fd < 0) flags |= MAP_ANONYMOUS;
  void *p = mmap(NULL, (size_t)length, prot, flags, fd, (off_t)offset);
  if (p == MAP_FAILED) return -errno;
  *out = (uint64_t)(uintptr_t)p;
  return 0;
}

EXPORT int32_t kvm_munmap(void *addr, uint64_t length) {
  return munmap(addr, (size_t)length) < 0 ? -errno : 0;
}

EXPORT int32_t kvm_madvise(void *addr, uint64_t length, int32_t advice) {
  return madvise(addr, (size_t)length, advice) < 0 ? -errno : 0;
}

EXPORT int32_t kvm_mincore(void *addr, uint64_t length, uint8_t *vec) {
  return mincore(addr, (size_t)length, vec) < 0 ? -errno : 0;
}

EXPORT int32_t kvm_eventfd(uint32_t initval, int32_t flags) {
  int fd = eventfd(initval, flags | EFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

// read(2)/write(2) of exactly 8 bytes, the unit of an eventfd.
EXPORT int32_t kvm_read_u64(int32_t fd, uint64_t *value) {
  ssize_t n = read(fd, value, sizeof *value);
  return n < 0 ? -errno : (int32_t)n;
}

EXPORT int32_t kvm_write_u64(int32_t fd, uint64_t value) {
  ssize_t n = write(fd, &value, sizeof value);
  return n < 0 ? -errno : (int32_t)n;
}

// read(2)/write(2) of a buffer: a tap interface's frames (virtio-net).
EXPORT int32_t kvm_read(int32_t fd, void *buf, uint32_t len) {
  ssize_t n = read(fd, buf, len);
  return n < 0 ? -errno : (int32_t)n;
}

EXPORT int32_t kvm_write(int32_t fd, const void *buf, uint32_t len) {
  ssize_t n = write(fd, buf, len);
  return n < 0 ? -errno : (int32_t)n;
}

// preadv(2)/pwritev(2)/readv(2)/writev(2) over `n` struct iovec: a virtio
// request's buffers in guest RAM in one system call (a disk image at `offset`,
// a tap's frame behind its virtio-net header). The caller bounds `n` by
// IOV_MAX and every buffer by guest RAM; a short transfer is the caller's to
// continue. Return the bytes moved; a transfer above 2 GiB is refused by the
// kernel's MAX_RW_COUNT cap long before int32_t overflows.
EXPORT int32_t kvm_preadv(int32_t fd, const void *iov, uint32_t n, uint64_t offset) {
  ssize_t r = preadv(fd, (const struct iovec *)iov, (int)n, (off_t)offset);
  return r < 0 ? -errno : (int32_t)r;
}

EXPORT int32_t kvm_pwritev(int32_t fd, const void *iov, uint32_t n, uint64_t offset) {
  ssize_t r = pwritev(fd, (const struct iovec *)iov, (int)n, (off_t)offset);
  return r < 0 ? -errno : (int32_t)r;
}

EXPORT int32_t kvm_readv(int32_t fd, const void *iov, uint32_t n) {
  ssize_t r = readv(fd, (const struct iovec *)iov, (int)n);
  return r < 0 ? -errno : (int32_t)r;
}

EXPORT int32_t kvm_writev(int32_t fd, const void *iov, uint32_t n) {
  ssize_t r = writev(fd, (const struct iovec *)iov, (int)n);
  return r < 0 ? -errno : (int32_t)r;
}

// fdatasync(2): a virtio-blk flush of an image opened with kvm_open.
EXPORT int32_t kvm_fdatasync(int32_t fd) { return fdatasync(fd) < 0 ? -errno : 0; }

// poll(2) over `n` struct pollfd: the virtio device thread waits on its
// eventfd and its tap interfaces at once. Returns the ready count.
EXPORT int32_t kvm_poll(void *fds, uint32_t n, int32_t timeout_ms) {
  int ret = poll((struct pollfd *)fds, (nfds_t)n, timeout_ms);
  return ret < 0 ? -errno : ret;
}

EXPORT int32_t kvm_thread_id(void) { return (int32_t)syscall(SYS_gettid); }

// The kick signal. A real-time signal that neither Deno nor V8 use; its
// handler does nothing: its only purpose is to make a blocking KVM_RUN return
// -EINTR (Documentation/virt/kvm/api.rst, "immediate_exit").
static void kick_handler(int sig) { (void)sig; }

EXPORT int32_t kvm_kick_signal(void) { return SIGRTMIN + 5; }

EXPORT int32_t kvm_install_kick_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  // No SA_RESTART: the point is that the interrupted ioctl returns EINTR.
  if (sigaction(kvm_kick_signal(), &sa, NULL) < 0) return -errno;
  return 0;
}

// Asks the vCPU running on thread `tid` to leave KVM_RUN: first set the run
// area's immediate_exit byte (so a KVM_RUN about to start returns at once),
// then signal the thread (so one already running returns). The release store
// orders the two for the kernel's read of immediate_exit.
EXPORT int32_t kvm_kick(int32_t tid, uint8_t *immediate_exit) {
  if (immediate_exit != NULL) __atomic_store_n(immediate_exit, 1, __ATOMIC_RELEASE);
  if (tid <= 0) return 0;
  if (syscall(SYS_tgkill, getpid(), tid, kvm_kick_signal()) < 0) return -errno;
  return 0;
}

// A watchdog for one thread: a POSIX timer that sends the kick signal to
// thread `tid`, first after `first_ns`, then every `interval_ns`, so that a
// KVM_RUN that never returns on its own comes back with -EINTR. Kernel timer
// ids are small integers; *out receives it.
EXPORT int32_t kvm_timer_create(int32_t tid, int32_t *out) {
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = kvm_kick_signal();
  sev._sigev_un._tid = tid;
  int id = -1;
  if (syscall(SYS_timer_create, CLOCK_MONOTONIC, &sev, &id) < 0) return -errno;
  *out = id;
  return 0;
}

// Arms (first_ns > 0) or disarms (first_ns == 0) a timer from kvm_timer_create.
EXPORT int32_t kvm_timer_set(int32_t id, uint64_t first_ns, uint64_t interval_ns) {
  struct itimerspec spec;
  spec.it_value.tv_sec = (time_t)(first_ns / 1000000000u);
  spec.it_value.tv_nsec = (long)(first_ns % 1000000000u);
  spec.it_interval.tv_sec = (time_t)(interval_ns / 1000000000u);
  spec.it_interval.tv_nsec = (long)(interval_ns % 1000000000u);
  if (syscall(SYS_timer_settime, id, 0, &spec, NULL) < 0) return -errno;
  return 0;
}

EXPORT int32_t kvm_timer_delete(int32_t id) {
  return syscall(SYS_timer_delete, id) < 0 ? -errno : 0;
}
