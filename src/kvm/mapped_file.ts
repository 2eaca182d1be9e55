/**
 * A file's bytes in a private anonymous mapping, read once, seen as a
 * `Uint8Array`: loading a large kernel image this way skips an allocation of
 * its size on the JavaScript heap.
 *
 * Read, not mapped from the file: a page of a file mapping whose file is
 * truncated afterwards (by any process) faults with SIGBUS, which would kill
 * this process, and Linux zaps even the private copy-on-write pages of such a
 * mapping. Anonymous memory filled by read(2) cannot fault that way.
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { HostMapping } from "./host_mapping.ts";
import {
  HUGE_PAGE_SIZE,
  MADV_HUGEPAGE,
  MAP_NORESERVE,
  MAP_PRIVATE,
  O_RDONLY,
  PROT_READ,
  PROT_WRITE,
} from "./constants.ts";

/** The most one read(2) moves (Linux's cap, `MAX_RW_COUNT`, rounded down to a page). */
const READ_CHUNK = 0x7fff_f000;

/**
 * A whole file's bytes, read into private anonymous memory. Writes through
 * {@linkcode bytes} never reach the file, and nothing done to the file later
 * (a write, a truncation) changes or faults them. Owns the mapping: call
 * {@linkcode close} (or `using`) when done; the view is empty after that.
 *
 * @example
 * ```ts ignore
 * import { MappedFile } from "@deno-kvm/kvm";
 * using file = MappedFile.open("/boot/vmlinuz");
 * console.log(file.bytes[0x202]); // 0x48, "H" of "HdrS"
 * ```
 */
export class MappedFile extends HostMapping {
  /** Names the mapping in error messages. */
  protected readonly kind = "file";

  /**
   * The file's status (`fstat` of the descriptor that was read, taken just
   * before reading it): which file this is, whatever its path names now.
   */
  readonly info: Deno.FileInfo;

  private constructor(address: bigint, size: number, info: Deno.FileInfo) {
    super(address, size);
    this.info = info;
  }

  /**
   * Reads the file at `path`; an empty or unreadable file, one larger than
   * `options.maxBytes` (EFBIG, refused before anything is allocated), or one
   * that shrank while it was read is a {@linkcode KvmError}.
   */
  static open(path: string, options: { maxBytes?: number } = {}): MappedFile {
    const lib = native();
    const fd = unwrap(
      lib.kvm_open(new TextEncoder().encode(`${path}\0`), O_RDONLY),
      "open file",
      () => path,
    );
    try {
      // The size of the file this descriptor holds (the path may have been replaced since).
      const info = Deno.statSync(`/proc/self/fd/${fd}`);
      const size = info.size;
      if (size === 0) throw new KvmError("mmap file", Errno.EINVAL, `${path} is empty`);
      if (options.maxBytes !== undefined && size > options.maxBytes) {
        throw new KvmError(
          "mmap file",
          Errno.EFBIG,
          `${path} is ${size} bytes, more than the ${options.maxBytes} allowed`,
        );
      }
      const out = new BigUint64Array(1);
      unwrap(
        lib.kvm_mmap(
          -1,
          BigInt(size),
          PROT_READ | PROT_WRITE,
          MAP_PRIVATE | MAP_NORESERVE,
          0n,
          out,
        ),
        "mmap file",
        () => `${path} (${size} bytes)`,
      );
      const file = new MappedFile(out[0], size, info);
      try {
        // Huge pages: the read faults in a 35 MB kernel 17 times instead of 8,600 (advice only).
        if (size >= HUGE_PAGE_SIZE) {
          lib.kvm_madvise(Deno.UnsafePointer.create(out[0]), BigInt(size), MADV_HUGEPAGE);
        }
        for (let done = 0; done < size;) {
          const n = lib.kvm_read(fd, file.bytes.subarray(done), Math.min(size - done, READ_CHUNK));
          if (n < 0 && n !== -Errno.EINTR) throw new KvmError("read file", -n, path);
          if (n === 0) {
            throw new KvmError(
              "read file",
              Errno.EIO,
              `${path} ended at byte ${done} of ${size}: it shrank while it was read`,
            );
          }
          if (n > 0) done += n;
        }
        return file;
      } catch (e) {
        file.close();
        throw e;
      }
    } finally {
      lib.kvm_close(fd);
    }
  }
}
