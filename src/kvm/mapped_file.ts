/**
 * A file mapped into memory (private, copy-on-write) and seen as a
 * `Uint8Array` without reading it: loading a large kernel image this way
 * skips a copy and an allocation of its size.
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { HostMapping } from "./host_mapping.ts";
import { MAP_POPULATE, MAP_PRIVATE, O_RDONLY, PROT_READ, PROT_WRITE } from "./constants.ts";

/**
 * A private mapping of a whole file. Writes through {@linkcode bytes} go to
 * private copies of the pages, never to the file. Owns the mapping: call
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
   * The mapped file's status (`fstat` of the descriptor that was mapped,
   * taken just before mapping it): which file this is, whatever its path
   * names now.
   */
  readonly info: Deno.FileInfo;

  private constructor(address: bigint, size: number, info: Deno.FileInfo) {
    super(address, size);
    this.info = info;
  }

  /** Maps the file at `path`; an empty or unreadable file is a {@linkcode KvmError}. */
  static open(path: string): MappedFile {
    const lib = native();
    const fd = unwrap(
      lib.kvm_open(new TextEncoder().encode(`${path}\0`), O_RDONLY),
      "open file",
      () => path,
    );
    try {
      // The size of the file this descriptor holds (the path may have been replaced since):
      // mapping past its end would turn a later access into SIGBUS.
      const info = Deno.statSync(`/proc/self/fd/${fd}`);
      const size = info.size;
      if (size === 0) throw new KvmError("mmap file", Errno.EINVAL, `${path} is empty`);
      const out = new BigUint64Array(1);
      // MAP_POPULATE: one pass over the page cache instead of a page fault per 4 KiB
      // (a 35 MB kernel is 8,600 faults, seconds on an emulated host).
      unwrap(
        lib.kvm_mmap(fd, BigInt(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_POPULATE, 0n, out),
        "mmap file",
        () => `${path} (${size} bytes)`,
      );
      return new MappedFile(out[0], size, info);
    } finally {
      // The mapping keeps the file; the descriptor is not needed any more.
      lib.kvm_close(fd);
    }
  }
}
