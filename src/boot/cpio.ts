/**
 * A minimal writer for the cpio "newc" format (magic `070701`), the format the Linux kernel
 * unpacks as an initramfs. Only what an initramfs needs: directories, regular files, symlinks
 * and device nodes. Hard links are never written (every entry has nlink 1), which also makes
 * several archives safe to concatenate: the kernel only matches inode numbers for nlink >= 2.
 *
 * @module
 */

/** Mask of the file type bits of `st_mode`. */
export const S_IFMT = 0o170000;
/** Directory type bits of `st_mode`. */
export const S_IFDIR = 0o040000;
/** Regular file type bits of `st_mode`. */
export const S_IFREG = 0o100000;
/** Symbolic link type bits of `st_mode`. */
export const S_IFLNK = 0o120000;
/** Character device type bits of `st_mode`. */
export const S_IFCHR = 0o020000;

/** Receives the archive's bytes in order; may be async (a file or a compression stream). */
export type CpioSink = (chunk: Uint8Array) => void | Promise<void>;

const encoder = new TextEncoder();
const HEADER_SIZE = 110;
const ZERO = new Uint8Array(512);

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) {
    throw new RangeError(`cpio: field out of range: ${n}`);
  }
  return n.toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Strips leading "/" and "./" and collapses repeated slashes: cpio names are relative. */
export function normalizeName(name: string): string {
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.some((p) => p === "..")) throw new Error(`cpio: ".." in name: ${name}`);
  return parts.join("/");
}

interface Header {
  ino: number;
  mode: number;
  mtime: number;
  size: number;
  rdevMajor: number;
  rdevMinor: number;
  name: string;
}

/** Encodes one header plus its NUL-terminated name, padded so the data starts 4-aligned. */
function encodeHeader(h: Header): Uint8Array {
  const name = encoder.encode(h.name + "\0");
  const fields = [
    h.ino,
    h.mode,
    0, // uid: root
    0, // gid: root
    (h.mode & S_IFMT) === S_IFDIR ? 2 : 1, // nlink
    h.mtime,
    h.size,
    0, // devmajor
    0, // devminor
    h.rdevMajor,
    h.rdevMinor,
    name.length,
    0, // check: unused by newc
  ];
  const text = "070701" + fields.map(hex8).join("");
  const out = new Uint8Array(HEADER_SIZE + name.length + pad4(HEADER_SIZE + name.length));
  out.set(encoder.encode(text), 0);
  out.set(name, HEADER_SIZE);
  return out;
}

/**
 * Streams a newc archive into a sink. Parent directories are emitted automatically (the kernel
 * does not create missing parents), each at most once per archive.
 */
export class CpioWriter {
  #sink: CpioSink;
  #ino = 1;
  #size = 0;
  #dirs = new Set<string>();
  #finished = false;

  /** @param sink receives every chunk in order */
  constructor(sink: CpioSink) {
    this.#sink = sink;
  }

  /** Bytes written so far. */
  get size(): number {
    return this.#size;
  }

  async #write(chunk: Uint8Array): Promise<void> {
    if (chunk.length === 0) return;
    this.#size += chunk.length;
    await this.#sink(chunk);
  }

  async #entry(h: Omit<Header, "ino">, data?: Uint8Array): Promise<void> {
    if (this.#finished) throw new Error("cpio: archive already finished");
    await this.#write(encodeHeader({ ...h, ino: this.#ino++ }));
    if (data) {
      await this.#write(data);
      await this.#write(ZERO.subarray(0, pad4(data.length)));
    }
  }

  async #parents(name: string): Promise<void> {
    const parts = name.split("/");
    for (let i = 1; i < parts.length; i++) {
      await this.dir(parts.slice(0, i).join("/"));
    }
  }

  /** Adds a directory (and its parents) unless this archive already holds it. */
  async dir(name: string, perm = 0o755, mtime = 0): Promise<void> {
    const n = normalizeName(name);
    if (n === "" || this.#dirs.has(n)) return;
    await this.#parents(n);
    this.#dirs.add(n);
    await this.#entry({
      name: n,
      mode: S_IFDIR | (perm & 0o7777),
      mtime,
      size: 0,
      rdevMajor: 0,
      rdevMinor: 0,
    });
  }

  /** Adds a regular file with the given contents. */
  async file(name: string, data: Uint8Array, perm = 0o644, mtime = 0): Promise<void> {
    const n = normalizeName(name);
    await this.#parents(n);
    await this.#entry(
      {
        name: n,
        mode: S_IFREG | (perm & 0o7777),
        mtime,
        size: data.length,
        rdevMajor: 0,
        rdevMinor: 0,
      },
      data,
    );
  }

  /** Adds a symbolic link pointing at `target` (stored verbatim). */
  async symlink(name: string, target: string, mtime = 0): Promise<void> {
    const n = normalizeName(name);
    const data = encoder.encode(target);
    await this.#parents(n);
    await this.#entry({
      name: n,
      mode: S_IFLNK | 0o777,
      mtime,
      size: data.length,
      rdevMajor: 0,
      rdevMinor: 0,
    }, data);
  }

  /** Adds a character device node, e.g. `/dev/console` (5, 1). */
  async charDevice(name: string, major: number, minor: number, perm = 0o600): Promise<void> {
    const n = normalizeName(name);
    await this.#parents(n);
    await this.#entry({
      name: n,
      mode: S_IFCHR | (perm & 0o7777),
      mtime: 0,
      size: 0,
      rdevMajor: major,
      rdevMinor: minor,
    });
  }

  /**
   * Writes the `TRAILER!!!` entry and zero-pads the archive to a multiple of 512 bytes, so a
   * further archive appended to it starts aligned (the kernel requires 4-byte alignment).
   */
  async finish(): Promise<void> {
    await this.#entry({
      name: "TRAILER!!!",
      mode: 0,
      mtime: 0,
      size: 0,
      rdevMajor: 0,
      rdevMinor: 0,
    });
    this.#finished = true;
    await this.#write(ZERO.subarray(0, (512 - (this.#size % 512)) % 512));
  }
}

/** Convenience for small archives: runs `build` against an in-memory writer, returns the bytes. */
export async function buildCpio(build: (w: CpioWriter) => Promise<void>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const w = new CpioWriter((c) => {
    chunks.push(c.slice());
  });
  await build(w);
  await w.finish();
  const out = new Uint8Array(w.size);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}
