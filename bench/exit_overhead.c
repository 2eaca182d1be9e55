// Loops for bench/exit_overhead.ts, loaded into the Deno process with
// Deno.dlopen: the same PIO exit loop as bench/baseline.c's case 1, but run on
// a vCPU the library opened, in the Deno process. Comparing it with the
// baseline child process (same loop, separate process) and with JavaScript
// loops in the same process splits the per-exit overhead into what the
// process costs and what the JavaScript path costs.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define PIO_PORT 0x10

// `n` PIO exits with baseline.c's checks; returns the next expected value, or
// -errno (KVM_RUN failed) or -1000 (the guest did something else).
int64_t exit_overhead_c_loop(int32_t fd, uint8_t *run_area, int32_t n, uint32_t expected) {
  struct kvm_run *run = (struct kvm_run *)run_area;
  for (int32_t i = 0; i < n; i++) {
    if (ioctl(fd, KVM_RUN, 0) < 0) return -errno;
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != PIO_PORT) return -1000;
    uint8_t value = *(run_area + run->io.data_offset);
    if (value != (expected & 0xff)) return -1000;
    expected++;
  }
  return expected;
}

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

// A native call as long as an exit but without the kernel: busy-waits `ticks`
// TSC ticks. A JavaScript loop around it against exit_overhead_spin_loop shows
// what the FFI call and the loop cost when no KVM_RUN is involved.
int32_t exit_overhead_spin(uint32_t ticks) {
  uint64_t end = rdtsc() + ticks;
  while (rdtsc() < end) {
  }
  return 1;
}

int32_t exit_overhead_spin_loop(int32_t n, uint32_t ticks) {
  int32_t s = 0;
  for (int32_t i = 0; i < n; i++) s += exit_overhead_spin(ticks);
  return s;
}

// A PIO guest VM that this file opens and runs itself (no library object
// involved), in whatever process loaded it: against the C child, whether the
// Deno process as such slows a C loop down; against exit_overhead_c_loop on
// the library's vCPU, whether the library's VM does. Returns the ns of `n`
// exits timed here, or -errno / -1000.
static int own_vcpu_fd = -1;
static struct kvm_run *own_run;
static uint32_t own_expected;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int own_setup(void) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return -errno;
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) return -errno;
  uint8_t *ram = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) return -errno;
  struct kvm_userspace_memory_region region = {
      .slot = 0, .memory_size = 0x10000, .userspace_addr = (uint64_t)(uintptr_t)ram};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return -errno;
  // bench/guests.ts PIO_GUEST: out 0x10, al; inc ax; jmp back.
  static const uint8_t code[] = {0xe6, 0x10, 0x40, 0xeb, 0xfb};
  memcpy(ram + 0x1000, code, sizeof code);
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) return -errno;
  int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < 0) return -errno;
  own_run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (own_run == MAP_FAILED) return -errno;
  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return -errno;
  struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
  for (int i = 0; i < 6; i++) {
    segs[i]->base = 0;
    segs[i]->selector = 0;
  }
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return -errno;
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = 0x1000;
  regs.rflags = 2;
  regs.rsp = 0x8000;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return -errno;
  own_vcpu_fd = vcpu;
  return 0;
}

int64_t exit_overhead_own_vm_block(int32_t n) {
  if (own_vcpu_fd < 0) {
    int r = own_setup();
    if (r < 0) return r;
  }
  uint64_t t0 = now_ns();
  int64_t r = exit_overhead_c_loop(own_vcpu_fd, (uint8_t *)own_run, n, own_expected);
  uint64_t t1 = now_ns();
  if (r < 0) return r;
  own_expected = (uint32_t)r;
  return (int64_t)(t1 - t0);
}
