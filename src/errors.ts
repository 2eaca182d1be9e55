/**
 * The one error class for failures reported by the kernel, and the errno
 * names it uses.
 *
 * @module
 */

/** Linux x86-64 errno values by name. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  EDOM: 33,
  ERANGE: 34,
  EDEADLK: 35,
  ENOSYS: 38,
  ENODATA: 61,
  EBADMSG: 74,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ETIMEDOUT: 110,
  EHWPOISON: 133,
} as const;

/** An errno name such as `"EINVAL"`. */
export type ErrnoCode = keyof typeof Errno;

const NAMES = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));

const DESCRIPTIONS: Partial<Record<ErrnoCode, string>> = {
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  EINTR: "interrupted",
  E2BIG: "argument list too long",
  EBADF: "bad file descriptor",
  EAGAIN: "try again",
  ENOMEM: "out of memory",
  EACCES: "permission denied",
  EFAULT: "bad address",
  EBUSY: "busy",
  EEXIST: "already exists",
  ENODEV: "no such device",
  EINVAL: "invalid argument",
  EMFILE: "too many open files",
  ENOTTY: "inappropriate ioctl for device",
  ENOSPC: "no space left",
  ENOSYS: "not implemented",
  ENXIO: "no such device or address",
  ERANGE: "out of range",
  EOPNOTSUPP: "not supported",
  EBADMSG: "bad message",
  ETIMEDOUT: "timed out",
};

/** The name of an errno value, e.g. `errnoName(22) === "EINVAL"`. */
export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `errno ${errno}`;
}

/**
 * A failure reported by the kernel (or found by this library before asking the
 * kernel, with the errno the kernel would have used).
 *
 * @example
 * ```ts
 * import { Kvm, KvmError } from "@deno-kvm/kvm";
 * try {
 *   using kvm = Kvm.open();
 *   using vm = kvm.createVm();
 *   vm.createVcpu(0);
 *   vm.createVcpu(0);
 * } catch (e) {
 *   if (e instanceof KvmError && e.code === "EEXIST") console.log(e.message);
 * }
 * ```
 */
export class KvmError extends Error {
  /** The positive errno value, e.g. 22. */
  readonly errno: number;
  /** The errno name, e.g. `"EINVAL"`. */
  readonly code: string;
  /** The operation that failed, e.g. `"KVM_SET_USER_MEMORY_REGION"`. */
  readonly operation: string;

  /**
   * Creates the error; the message is derived from the arguments.
   *
   * @param operation what failed, usually the ioctl's C name
   * @param errno the positive errno value
   * @param detail what the library knows that makes the failure clear
   */
  constructor(operation: string, errno: number, detail?: string, options?: ErrorOptions) {
    const code = errnoName(errno);
    const text = DESCRIPTIONS[code as ErrnoCode];
    super(
      `${operation} failed: ${code}${text ? ` (${text})` : ""}${detail ? `: ${detail}` : ""}`,
      options,
    );
    this.name = "KvmError";
    this.errno = errno;
    this.code = code;
    this.operation = operation;
  }
}

/**
 * Turns a shim result (`-errno` on failure) into its value, or throws a
 * {@linkcode KvmError}. Every native call goes through here.
 */
export function unwrap(result: number, operation: string, detail?: () => string): number {
  if (result < 0) throw new KvmError(operation, -result, detail?.());
  return result;
}
