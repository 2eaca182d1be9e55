/**
 * Reading a kernel or initrd from a path given by a user: only regular
 * files, never more than a cap. A FIFO or a character device (`/dev/zero`,
 * `/dev/stdin` of a pipe) would otherwise block the read or fill memory
 * without end; here it is refused with a {@linkcode BootImageError} that
 * names the file.
 *
 * @module
 */

import { Errno } from "../errors.ts";
import { BootImageError } from "./boot_image_error.ts";

/** Default cap of {@linkcode readImageFile}: 1 GiB (a kernel is tens of MB, an initrd rarely more). */
export const MAX_IMAGE_FILE_SIZE = 1024 * 1024 * 1024;

/** Options of {@linkcode readImageFile}. */
export interface ReadImageOptions {
  /** What the file is, for messages (default `"image"`): `"kernel"`, `"initrd"`. */
  what?: string;
  /** The most bytes accepted (default {@linkcode MAX_IMAGE_FILE_SIZE}). */
  maxBytes?: number;
}

function refuse(problem: "bad-file" | "file-too-large", errno: number, detail: string): never {
  throw new BootImageError(problem, errno, detail);
}

function kind(info: Deno.FileInfo): string {
  if (info.isDirectory) return "a directory";
  if (info.isFifo) return "a FIFO";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSocket) return "a socket";
  return "not a regular file";
}

/**
 * Reads a kernel or initrd file whole. Refuses, with a
 * {@linkcode BootImageError} naming `path`: a path that is not a regular file
 * after following symlinks (`"bad-file"`, `EINVAL`: a FIFO is refused before
 * it is opened, so the call never blocks on it), a file that cannot be read
 * (`"bad-file"` with the system's reason), and one larger than `maxBytes`
 * (`"file-too-large"`, `EFBIG`), also when it grows while being read.
 *
 * @example
 * ```ts ignore
 * import { readImageFile } from "@deno-kvm/kvm/vmm";
 * const kernel = readImageFile("/boot/vmlinuz", { what: "kernel" });
 * readImageFile("/dev/zero", { what: "initrd" }); // BootImageError: ... is a character device
 * ```
 */
export function readImageFile(path: string, options: ReadImageOptions = {}): Uint8Array {
  return readImageFileWithInfo(path, options).bytes;
}

/**
 * {@linkcode readImageFile}, and the file's status (`fstat` of the
 * descriptor read) when the file did not change while it was read: the same
 * size, modification and change times after the read as before it. `info`
 * is then the status of the file whose content `bytes` are (what
 * `VmlinuxCacheOptions.imageInfo` needs); undefined otherwise.
 */
export function readImageFileWithInfo(
  path: string,
  options: ReadImageOptions = {},
): { bytes: Uint8Array; info?: Deno.FileInfo } {
  const what = options.what ?? "image";
  const max = options.maxBytes ?? MAX_IMAGE_FILE_SIZE;
  if (!Number.isSafeInteger(max) || max < 0) {
    throw new RangeError(`readImageFile: maxBytes ${max} is not a non-negative integer`);
  }
  const failed = (e: unknown): never =>
    refuse(
      "bad-file",
      e instanceof Deno.errors.NotFound ? Errno.ENOENT : Errno.EACCES,
      `cannot read the ${what} ${path}: ${e instanceof Error ? e.message : String(e)}`,
    );
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    return failed(e);
  }
  const check = (info: Deno.FileInfo) => {
    if (!info.isFile) {
      refuse("bad-file", Errno.EINVAL, `the ${what} ${path} is ${kind(info)}, not a regular file`);
    }
    if (info.size > max) {
      refuse(
        "file-too-large",
        Errno.EFBIG,
        `the ${what} ${path} is ${info.size} bytes, more than the ${max} accepted`,
      );
    }
  };
  check(info);
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (e) {
    return failed(e);
  }
  try {
    // The path may have been replaced between stat and open: check what was opened.
    const opened = file.statSync();
    check(opened);
    if (opened.ino !== info.ino || opened.dev !== info.dev) {
      refuse("bad-file", Errno.EINVAL, `the ${what} ${path} changed while it was opened`);
    }
    // Read at most max + 1 bytes: a file that grows past the cap is caught.
    let buffer = new Uint8Array(Math.min(opened.size, max) + 1);
    let length = 0;
    for (;;) {
      if (length === buffer.length) {
        if (length > max) break;
        const bigger = new Uint8Array(Math.min(buffer.length * 2, max + 1));
        bigger.set(buffer);
        buffer = bigger;
      }
      let n: number | null;
      try {
        n = file.readSync(buffer.subarray(length));
      } catch (e) {
        return failed(e);
      }
      if (n === null || n === 0) break;
      length += n;
    }
    if (length > max) {
      refuse(
        "file-too-large",
        Errno.EFBIG,
        `the ${what} ${path} grew past the ${max} bytes accepted while it was read`,
      );
    }
    const bytes = buffer.subarray(0, length);
    let after: Deno.FileInfo | undefined;
    try {
      after = file.statSync();
    } catch {
      return { bytes };
    }
    const same = after.size === length && after.size === opened.size &&
      after.mtime?.getTime() === opened.mtime?.getTime() &&
      after.ctime?.getTime() === opened.ctime?.getTime();
    return same ? { bytes, info: after } : { bytes };
  } finally {
    file.close();
  }
}
