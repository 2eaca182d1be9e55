/**
 * The native shim's symbol table, mirroring `native/kvm_shim.c`.
 *
 * Every call returns a non-negative result or `-errno`. Pointers are passed as
 * `"pointer"` (computed once by the caller, never per call) and 64-bit values
 * as bigint: both keep Deno's FFI fast path.
 *
 * @module
 */

/** Version the loader expects from `kvm_shim_version()`. */
export const SHIM_VERSION = 4;

/** Symbols of the shim, as given to `Deno.dlopen`. */
export const symbols = {
  /** `int32_t kvm_shim_version(void)` */
  kvm_shim_version: { parameters: [], result: "i32" },
  /** `int32_t kvm_open(const char *path, int32_t flags)` */
  kvm_open: { parameters: ["buffer", "i32"], result: "i32" },
  /** `int32_t kvm_close(int32_t fd)` */
  kvm_close: { parameters: ["i32"], result: "i32" },
  /** `int32_t kvm_ioctl_ptr(int32_t fd, uint32_t request, void *arg)` */
  kvm_ioctl_ptr: { parameters: ["i32", "u32", "pointer"], result: "i32" },
  /** `int32_t kvm_ioctl_val(int32_t fd, uint32_t request, uint64_t arg)` */
  kvm_ioctl_val: { parameters: ["i32", "u32", "u64"], result: "i32" },
  /** `int32_t kvm_mmap(int32_t fd, uint64_t length, int32_t prot, int32_t flags, uint64_t offset, uint64_t *out)` */
  kvm_mmap: {
    parameters: ["i32", "u64", "i32", "i32", "u64", "buffer"],
    result: "i32",
  },
  /** `int32_t kvm_munmap(void *addr, uint64_t length)` */
  kvm_munmap: { parameters: ["pointer", "u64"], result: "i32" },
  /** `int32_t kvm_madvise(void *addr, uint64_t length, int32_t advice)` */
  kvm_madvise: { parameters: ["pointer", "u64", "i32"], result: "i32" },
  /** `int32_t kvm_mincore(void *addr, uint64_t length, uint8_t *vec)` */
  kvm_mincore: { parameters: ["pointer", "u64", "buffer"], result: "i32" },
  /** `int32_t kvm_eventfd(uint32_t initval, int32_t flags)` */
  kvm_eventfd: { parameters: ["u32", "i32"], result: "i32" },
  /** `int32_t kvm_read_u64(int32_t fd, uint64_t *value)` */
  kvm_read_u64: { parameters: ["i32", "buffer"], result: "i32" },
  /** `int32_t kvm_write_u64(int32_t fd, uint64_t value)` */
  kvm_write_u64: { parameters: ["i32", "u64"], result: "i32" },
  /** `int32_t kvm_read(int32_t fd, void *buf, uint32_t len)`: read(2) of a buffer. */
  kvm_read: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  /** `int32_t kvm_write(int32_t fd, const void *buf, uint32_t len)`: write(2) of a buffer. */
  kvm_write: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  /**
   * `int32_t kvm_preadv(int32_t fd, const struct iovec *iov, uint32_t n, uint64_t offset)`:
   * preadv(2), bytes read (a short count is the caller's to continue).
   */
  kvm_preadv: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  /** `int32_t kvm_pwritev(int32_t fd, const struct iovec *iov, uint32_t n, uint64_t offset)`: pwritev(2). */
  kvm_pwritev: { parameters: ["i32", "buffer", "u32", "u64"], result: "i32" },
  /** `int32_t kvm_readv(int32_t fd, const struct iovec *iov, uint32_t n)`: readv(2). */
  kvm_readv: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  /** `int32_t kvm_writev(int32_t fd, const struct iovec *iov, uint32_t n)`: writev(2). */
  kvm_writev: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  /** `int32_t kvm_fdatasync(int32_t fd)`: fdatasync(2). */
  kvm_fdatasync: { parameters: ["i32"], result: "i32" },
  /** `int32_t kvm_poll(struct pollfd *fds, uint32_t n, int32_t timeout_ms)`: poll(2). */
  kvm_poll: { parameters: ["buffer", "u32", "i32"], result: "i32" },
  /** `int32_t kvm_thread_id(void)`: the calling thread's kernel tid. */
  kvm_thread_id: { parameters: [], result: "i32" },
  /** `int32_t kvm_kick_signal(void)`: the signal number used for kicks. */
  kvm_kick_signal: { parameters: [], result: "i32" },
  /** `int32_t kvm_install_kick_handler(void)` */
  kvm_install_kick_handler: { parameters: [], result: "i32" },
  /** `int32_t kvm_kick(int32_t tid, uint8_t *immediate_exit)` */
  kvm_kick: { parameters: ["i32", "pointer"], result: "i32" },
  /** `int32_t kvm_timer_create(int32_t tid, int32_t *out)`: a timer that kicks thread `tid`. */
  kvm_timer_create: { parameters: ["i32", "buffer"], result: "i32" },
  /** `int32_t kvm_timer_set(int32_t id, uint64_t first_ns, uint64_t interval_ns)`; 0 disarms. */
  kvm_timer_set: { parameters: ["i32", "u64", "u64"], result: "i32" },
  /** `int32_t kvm_timer_delete(int32_t id)` */
  kvm_timer_delete: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded shim. */
export type NativeSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** The name of a symbol of the shim. */
export type SymbolName = keyof typeof symbols;

/**
 * The symbols bound when the shim is loaded: what a VM, its memory and a
 * vCPU's run loop and kick use. The others are bound on first use, a group
 * at a time (see `src/ffi/library.ts`): binding costs about 0.2 ms a symbol
 * natively and 10-20 ms in the sandbox's emulator, in the main thread and
 * again in every vCPU Worker (bench/RESULTS.md, issue 17).
 */
export const CORE_SYMBOLS: readonly SymbolName[] = [
  "kvm_shim_version",
  "kvm_open",
  "kvm_close",
  "kvm_ioctl_ptr",
  "kvm_ioctl_val",
  "kvm_mmap",
  "kvm_munmap",
  "kvm_madvise",
  "kvm_thread_id",
  "kvm_kick_signal",
  "kvm_install_kick_handler",
  "kvm_kick",
];

/** The other symbols, in the groups they are bound in (each used together). */
export const LAZY_SYMBOL_GROUPS: readonly (readonly SymbolName[])[] = [
  ["kvm_timer_create", "kvm_timer_set", "kvm_timer_delete"],
  ["kvm_eventfd", "kvm_read_u64", "kvm_write_u64", "kvm_poll"],
  [
    "kvm_read",
    "kvm_write",
    "kvm_preadv",
    "kvm_pwritev",
    "kvm_readv",
    "kvm_writev",
    "kvm_fdatasync",
    "kvm_mincore",
  ],
];
