// C baseline of the run-loop benchmarks (bench/cases.ts): the same guests, the
// same set-up and the same handlers, written the way a C VMM would, with plain
// ioctl(2) and the mmap'ed run area. bench/run.ts compiles it with `cc -O2`
// into bench/build/ and compares exits (or ioctls, scans) per second.
//
// usage: baseline CASE MODE RAM_SIZE ENTRY DIRTY_LOG HEX_CODE
//   CASE       pio | mmio | get-regs | set-regs | dirty-log | dirty-ring
//   MODE       real | protected     (as GuestSpec.mode in bench/guests.ts)
//   RAM_SIZE   bytes of slot 0 at guest physical 0; ENTRY where the code goes
//   DIRTY_LOG  1 to set KVM_MEM_LOG_DIRTY_PAGES on slot 0
//   HEX_CODE   the guest program, as bench/guests.ts has it
// Sets the guest up once, then reads block sizes from stdin, one per line,
// and for each runs that many operations and prints one JSON line:
// {"case":"pio","ops":100,"ns":4567890}. bench/run.ts alternates these blocks
// with the Deno side's. By hand: `echo 30000 | bench/build/baseline pio ...`.
// Any surprise (a wrong exit, a wrong value) exits with status 1.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// Keep in step with bench/guests.ts.
#define PIO_PORT 0x10
#define MMIO_WRITE_ADDR 0x20010
#define MMIO_READ_ADDR 0x20020
#define DIRTY_OFFSET 0x80000
#define DIRTY_STRIDE 0x100000
#define PAGE_SIZE 4096
#define DIRTY_RING_BYTES (64 * 1024)

static int kvm_fd, vm_fd, vcpu_fd;
static struct kvm_run *run;
static uint64_t ram_size;
static const char *case_name;
static struct kvm_dirty_gfn *ring;

static void die(const char *what) {
  fprintf(stderr, "baseline: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void fail(const char *what) {
  fprintf(stderr, "baseline: %s\n", what);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void flat_segment(struct kvm_segment *seg, uint8_t type, uint16_t selector) {
  seg->base = 0;
  seg->limit = 0xffffffff;
  seg->selector = selector;
  seg->type = type;
  seg->present = 1;
  seg->dpl = 0;
  seg->db = 1;
  seg->s = 1;
  seg->l = 0;
  seg->g = 1;
}

// The steps of openGuest() in bench/guests.ts.
static void setup_guest(const char *mode, uint64_t size, uint64_t entry, int dirty_log,
                        const char *hex) {
  kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm_fd < 0) die("open /dev/kvm");
  vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
  if (vm_fd < 0) die("KVM_CREATE_VM");
  ram_size = size;
  uint8_t *ram = mmap(NULL, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) die("mmap guest memory");
  struct kvm_userspace_memory_region region = {
      .slot = 0,
      .flags = dirty_log ? KVM_MEM_LOG_DIRTY_PAGES : 0,
      .guest_phys_addr = 0,
      .memory_size = size,
      .userspace_addr = (uint64_t)(uintptr_t)ram,
  };
  if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
  size_t len = strlen(hex) / 2;
  for (size_t i = 0; i < len; i++) {
    unsigned byte;
    if (sscanf(hex + 2 * i, "%2x", &byte) != 1) fail("bad hex code");
    ram[entry + i] = (uint8_t)byte;
  }
  int use_ring = strcmp(case_name, "dirty-ring") == 0;
  if (use_ring) {
    // As Vm.enableDirtyRing: the ACQ_REL capability where the kernel has it.
    int cap = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0
                  ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL
                  : KVM_CAP_DIRTY_LOG_RING;
    struct kvm_enable_cap enable = {.cap = cap, .args = {DIRTY_RING_BYTES}};
    if (ioctl(vm_fd, KVM_ENABLE_CAP, &enable) < 0) die("KVM_ENABLE_CAP dirty ring");
  }
  vcpu_fd = ioctl(vm_fd, KVM_CREATE_VCPU, 0);
  if (vcpu_fd < 0) die("KVM_CREATE_VCPU");
  if (use_ring) {
    ring = mmap(NULL, DIRTY_RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd,
                KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE);
    if (ring == MAP_FAILED) die("mmap dirty ring");
  }
  int mmap_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmap_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
  if (run == MAP_FAILED) die("mmap run area");

  struct kvm_sregs sregs;
  if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
  for (int i = 0; i < 6; i++) {
    segs[i]->base = 0;
    segs[i]->selector = 0;
  }
  if (strcmp(mode, "protected") == 0) {
    sregs.cr0 |= 1;
    for (int i = 0; i < 6; i++) flat_segment(segs[i], 3, 0x10);
    flat_segment(&sregs.cs, 11, 0x08);
  } else if (strcmp(mode, "real") != 0) {
    fail("MODE must be real or protected");
  }
  if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = entry;
  regs.rflags = 2;
  regs.rsp = 0x8000;
  if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static inline void vcpu_run(void) {
  if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) die("KVM_RUN");
}

// Case 1: as pioStep() in bench/cases.ts.
static uint32_t pio_expected;
static void pio(long n) {
  for (long i = 0; i < n; i++) {
    vcpu_run();
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != PIO_PORT) fail("PIO: wrong exit");
    uint8_t value = *((uint8_t *)run + run->io.data_offset);
    if (value != (pio_expected & 0xff)) fail("PIO: wrong value");
    pio_expected++;
  }
}

// Case 2: as mmioStep() in bench/cases.ts.
static uint8_t mmio_last;
static void mmio(long n) {
  for (long i = 0; i < n; i++) {
    vcpu_run();
    if (run->exit_reason != KVM_EXIT_MMIO) fail("MMIO: wrong exit");
    if (run->mmio.is_write) {
      if (run->mmio.phys_addr != MMIO_WRITE_ADDR) fail("MMIO: wrong write address");
      mmio_last = run->mmio.data[0];
    } else {
      if (run->mmio.phys_addr != MMIO_READ_ADDR) fail("MMIO: wrong read address");
      run->mmio.data[0] = (uint8_t)(mmio_last + 1);
    }
  }
}

// Case 5.
static struct kvm_regs regs;
static void get_regs(long n) {
  for (long i = 0; i < n; i++) {
    if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
  }
}
static void set_regs(long n) {
  for (long i = 0; i < n; i++) {
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
  }
}

// Case 6: as DirtyLogFixture in bench/cases.ts. Returns the scans' time.
static uint64_t *bitmap;
static uint64_t dirty_log(long n) {
  uint64_t pages = ram_size / PAGE_SIZE, first = DIRTY_OFFSET / PAGE_SIZE;
  uint64_t stride = DIRTY_STRIDE / PAGE_SIZE, expected = ram_size / DIRTY_STRIDE;
  if (!bitmap) bitmap = calloc(pages / 64, sizeof *bitmap);
  uint64_t ns = 0;
  for (long i = 0; i < n; i++) {
    vcpu_run(); // one pass of the guest, untimed
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != PIO_PORT) fail("dirty: wrong exit");
    uint64_t t0 = now_ns();
    struct kvm_dirty_log log = {.slot = 0, .dirty_bitmap = bitmap};
    if (ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) die("KVM_GET_DIRTY_LOG");
    uint64_t dirty = 0;
    for (uint64_t w = 0; w < pages / 64; w++) {
      for (uint64_t bits = bitmap[w]; bits != 0; bits &= bits - 1) {
        uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(bits);
        if (page < first) continue; // the code's pages (see scanDirtyLog)
        if ((page - first) % stride != 0) fail("dirty: a page the guest never wrote");
        dirty++;
      }
    }
    ns += now_ns() - t0;
    if (dirty != expected) fail("dirty: wrong number of dirty pages");
  }
  return ns;
}

// Case 6b: as DirtyRingFixture in bench/cases.ts. Returns the harvests' time.
static uint32_t ring_next;
static uint64_t dirty_ring(long n) {
  uint64_t first = DIRTY_OFFSET / PAGE_SIZE, stride = DIRTY_STRIDE / PAGE_SIZE;
  uint64_t expected = ram_size / DIRTY_STRIDE;
  uint32_t mask = DIRTY_RING_BYTES / sizeof(struct kvm_dirty_gfn) - 1;
  uint64_t ns = 0;
  for (long i = 0; i < n; i++) {
    vcpu_run(); // one pass of the guest, untimed
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != PIO_PORT) fail("ring: wrong exit");
    uint64_t t0 = now_ns();
    uint64_t dirty = 0;
    for (;;) {
      struct kvm_dirty_gfn *e = &ring[ring_next & mask];
      if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)) break;
      if (e->slot != 0) fail("ring: an entry for another slot");
      if (e->offset >= first) {
        if ((e->offset - first) % stride != 0) fail("ring: a page the guest never wrote");
        dirty++;
      }
      __atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
      ring_next++;
    }
    if (ioctl(vm_fd, KVM_RESET_DIRTY_RINGS, 0) < 0) die("KVM_RESET_DIRTY_RINGS");
    ns += now_ns() - t0;
    if (dirty != expected) fail("ring: wrong number of dirty pages");
  }
  return ns;
}

static uint64_t measure(const char *name, long n) {
  if (strcmp(name, "dirty-log") == 0) return dirty_log(n);
  if (strcmp(name, "dirty-ring") == 0) return dirty_ring(n);
  uint64_t t0 = now_ns();
  if (strcmp(name, "pio") == 0) pio(n);
  else if (strcmp(name, "mmio") == 0) mmio(n);
  else if (strcmp(name, "get-regs") == 0) get_regs(n);
  else if (strcmp(name, "set-regs") == 0) set_regs(n);
  else fail("unknown case");
  return now_ns() - t0;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: baseline CASE MODE RAM_SIZE ENTRY DIRTY_LOG HEX_CODE\n");
    return 2;
  }
  const char *name = argv[1];
  case_name = name;
  uint64_t entry = strtoull(argv[4], NULL, 0);
  setup_guest(argv[2], strtoull(argv[3], NULL, 0), entry, atoi(argv[5]), argv[6]);
  if (strcmp(name, "get-regs") == 0 || strcmp(name, "set-regs") == 0) {
    if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
  }
  long ops;
  while (scanf("%ld", &ops) == 1) {
    uint64_t ns = measure(name, ops);
    if (strcmp(name, "get-regs") == 0 && regs.rip != entry) fail("wrong RIP");
    printf("{\"case\":\"%s\",\"ops\":%ld,\"ns\":%llu}\n", name, ops, (unsigned long long)ns);
    fflush(stdout);
  }
  return 0;
}
