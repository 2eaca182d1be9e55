// Loops for bench/exit_overhead.ts, loaded into the Deno process with
// Deno.dlopen: the same PIO exit loop as bench/baseline.c's case 1, but run on
// a vCPU the library opened, in the Deno process. Comparing it with the
// baseline child process (same loop, separate process) and with JavaScript
// loops in the same process splits the per-exit overhead into what the
// process costs and what the JavaScript path costs.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <sys/ioctl.h>

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
