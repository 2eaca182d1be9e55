/**
 * The per-user cache directory (the native shim's builds, extracted kernels):
 * `$DENO_KVM_CACHE`, else `$XDG_CACHE_HOME/deno-kvm`, else `~/.cache/deno-kvm`.
 *
 * Entries are trusted only when they are ours (owner and mode checked, see
 * {@linkcode untrustedReason}) and their content matches the SHA-256 stored
 * beside them ({@linkcode readVerified}); new entries are written to
 * exclusively created files with random names ({@linkcode writeExclusive}).
 *
 * @module
 */

import type { Hash } from "node:crypto";

/**
 * `createHash` of `node:crypto`, loaded on the first hash rather than with
 * this module: every vCPU Worker imports this module (through the shim
 * loader) and never hashes, and loading Node's crypto costs a Worker about
 * 0.45 s of its 1.1 s start in the sandbox's emulator (`bench/RESULTS.md`,
 * issue 17). `process.getBuiltinModule` (Deno 2.1) imports a built-in
 * synchronously.
 */
function createHash(algorithm: string): Hash {
  const process = (globalThis as { process?: { getBuiltinModule?(id: string): unknown } })
    .process;
  const crypto = process?.getBuiltinModule?.("node:crypto") as
    | typeof import("node:crypto")
    | undefined;
  if (!crypto) throw new Error("hashing needs Deno 2.1 or later (process.getBuiltinModule)");
  return crypto.createHash(algorithm);
}

/** The cache directory, or undefined when no variable names one (or env access is denied). */
export function userCacheDir(): string | undefined {
  const env = (name: string) => {
    try {
      return Deno.env.get(name) || undefined;
    } catch {
      return undefined;
    }
  };
  const explicit = env("DENO_KVM_CACHE");
  if (explicit) return explicit;
  const xdg = env("XDG_CACHE_HOME") ?? (env("HOME") ? `${env("HOME")}/.cache` : undefined);
  return xdg ? `${xdg}/deno-kvm` : undefined;
}

let probedUid: number | undefined;

/**
 * The effective user id: `Deno.uid()` when `--allow-sys` permits it, else
 * the owner of `/proc/self` (the process's own directory; Deno wants `-A`
 * for it), else the owner of a temporary file this process creates (with
 * `--allow-write`: the README's permissions need nothing more), else
 * undefined.
 */
export function currentUid(): number | undefined {
  try {
    const uid = Deno.uid();
    if (uid !== null) return uid;
  } catch {
    // No --allow-sys=uid: ask the kernel through procfs instead.
  }
  try {
    const uid = Deno.statSync("/proc/self").uid;
    if (uid !== null) return uid;
  } catch {
    // Deno asks for --allow-all to stat /proc.
  }
  if (probedUid !== undefined) return probedUid;
  let probe: string | undefined;
  try {
    // A new file belongs to the process's effective uid.
    probe = Deno.makeTempFileSync({ prefix: ".deno-kvm-uid-" });
    probedUid = Deno.lstatSync(probe).uid ?? undefined;
  } catch {
    // No --allow-write either.
  } finally {
    if (probe) {
      try {
        Deno.removeSync(probe);
      } catch {
        // Already gone.
      }
    }
  }
  return probedUid;
}

/**
 * Why the existing cache entry or directory `path` must not be trusted, or
 * undefined when it is ours: owned by the current user and not writable by
 * group or others (so nobody else could have planted or changed it). With
 * `kind: "file"` the path must be a regular file and is not followed if it is
 * a symlink; a directory may be reached through symlinks (`~/.cache` often
 * is one), its target is what is checked.
 */
export function untrustedReason(path: string, kind: "file" | "directory"): string | undefined {
  let info: Deno.FileInfo;
  try {
    info = kind === "file" ? Deno.lstatSync(path) : Deno.statSync(path);
  } catch (e) {
    return `cannot stat ${path}: ${e instanceof Error ? e.message : String(e)}`;
  }
  if (kind === "file" && !info.isFile) {
    return `${path} is ${info.isSymlink ? "a symlink" : "not a regular file"}`;
  }
  if (kind === "directory" && !info.isDirectory) return `${path} is not a directory`;
  const uid = currentUid();
  if (uid === undefined) return `cannot tell who owns ${path} (run Deno with --allow-sys=uid)`;
  if (info.uid !== uid) {
    return `${path} is owned by uid ${info.uid}, not by the current user (uid ${uid})`;
  }
  const mode = info.mode ?? 0o777;
  if (mode & 0o022) {
    return `${path} is writable by ${mode & 0o020 ? "its group" : "others"} (mode ${
      (mode & 0o7777).toString(8).padStart(4, "0")
    })`;
  }
  return undefined;
}

/**
 * Creates `path` (and missing parents) with mode 0700 where absent, and
 * returns why it must not be trusted as a cache directory (see
 * {@linkcode untrustedReason}), or undefined when it is ours. Throws what
 * `Deno.mkdirSync` throws when it cannot be created.
 */
export function ensureCacheDir(path: string): string | undefined {
  Deno.mkdirSync(path, { recursive: true, mode: 0o700 });
  return untrustedReason(path, "directory");
}

/**
 * Creates a new file in `dir` under a random name (`prefix` + random +
 * `suffix`), exclusively (`O_CREAT | O_EXCL`: an existing file or symlink
 * of that name fails the call, nothing is followed) with mode 0600, writes
 * `data` to it, flushes it to disk (`fdatasync`: a later rename never
 * exposes a file whose data a crash could lose) and returns its path.
 */
export function writeExclusive(
  dir: string,
  data: Uint8Array,
  prefix = ".tmp-",
  suffix = "",
): string {
  const path = `${dir}/${prefix}${crypto.randomUUID()}${suffix}`;
  const file = Deno.openSync(path, { write: true, createNew: true, mode: 0o600 });
  try {
    let written = 0;
    while (written < data.length) written += file.writeSync(data.subarray(written));
    file.syncDataSync();
  } catch (e) {
    file.close();
    Deno.removeSync(path);
    throw e;
  }
  file.close();
  return path;
}

/**
 * {@linkcode writeExclusive} on Deno's blocking threads: the whole write is
 * one operation, so it goes on while this thread is busy (building a VM, say).
 */
export async function writeExclusiveAsync(
  dir: string,
  data: Uint8Array,
  prefix = ".tmp-",
  suffix = "",
): Promise<string> {
  const path = `${dir}/${prefix}${crypto.randomUUID()}${suffix}`;
  try {
    // createNew: O_CREAT | O_EXCL, as above.
    await Deno.writeFile(path, data, { createNew: true, mode: 0o600 });
    using file = await Deno.open(path, { write: true });
    await file.syncData();
  } catch (e) {
    // Not someone else's file of that name: ours, partly written.
    if (!(e instanceof Deno.errors.AlreadyExists)) await Deno.remove(path).catch(() => {});
    throw e;
  }
  return path;
}

/** The SHA-256 of `data` in hex: the content check of cache entries. */
export function sha256Hex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * The MD5 of `data` (of its parts one after another, without joining them) in
 * hex: the damage check of kernel cache entries (see `boot/vmlinux.ts`).
 */
export function md5Hex(data: Uint8Array | readonly Uint8Array[]): string {
  const hash = createHash("md5");
  for (const part of data instanceof Uint8Array ? [data] : data) hash.update(part);
  return hash.digest("hex");
}

/**
 * {@linkcode sha256Hex} on one of Deno's blocking threads (WebCrypto's
 * digest): only the copy of `data` it takes runs on this thread.
 */
export async function sha256HexAsync(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>),
  );
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Whether `path` holds exactly the bytes whose {@linkcode sha256Hex} is
 * stored in `path + ".sha256"` (both files ours, see
 * {@linkcode untrustedReason}). Returns the verified bytes, or undefined when
 * the hash file is missing or untrusted or the content differs (a truncated
 * or flipped file).
 */
export function readVerified(path: string, bytes?: Uint8Array): Uint8Array | undefined {
  const hashPath = `${path}.sha256`;
  if (untrustedReason(hashPath, "file")) return undefined;
  try {
    const stored = Deno.readTextFileSync(hashPath).trim();
    const data = bytes ?? Deno.readFileSync(path);
    return sha256Hex(data) === stored ? data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How long a file must have been left unchanged before its status may stand
 * for its content (see {@linkcode fileStamp}), in ms.
 */
export const STAMP_SETTLED_MS = 2_000;

/**
 * A file's status as one line (device, inode, size, modification and
 * change times), to remember that its content was hashed or checked: while a
 * later status gives the same line, the content is the same, and the hash
 * need not be computed again (what `make`, git's index and ccache rely on).
 * Every write, truncation or rename of the file sets its change time to the
 * current time, and no system call sets it to anything else. Undefined when
 * a time is unknown, or when the file changed less than
 * {@linkcode STAMP_SETTLED_MS} before `now` or after it (a clock set back):
 * a change in the same tick of the file system's clock as the status taken
 * would keep the change time (and Deno reports the change time in whole
 * seconds), so only a settled file's status is recorded: a change after it
 * gets a later change time.
 * Damage that bypasses the file system (a failing disk) is not seen by it.
 */
export function fileStamp(info: Deno.FileInfo, now: number = Date.now()): string | undefined {
  const mtime = info.mtime?.getTime();
  const ctime = info.ctime?.getTime();
  if (mtime === undefined || ctime === undefined || !info.isFile) return undefined;
  if (!(now - ctime >= STAMP_SETTLED_MS) || !(now - mtime >= STAMP_SETTLED_MS)) return undefined;
  return `stamp ${info.dev} ${info.ino} ${info.size} ${mtime} ${ctime}`;
}

/**
 * The stamp line kept in the cache file `path`, when it is ours (see
 * {@linkcode untrustedReason}) and holds one; undefined otherwise.
 */
export function readStamp(path: string): string | undefined {
  if (untrustedReason(path, "file")) return undefined;
  try {
    const text = Deno.readTextFileSync(path);
    return /^stamp \d+ \d+ \d+ \d+ \d+\n[0-9a-f]{0,128}\n?$/.test(text) ? text : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Keeps `text` in the cache file `path`: written by {@linkcode writeExclusive}
 * and renamed over it, so a reader sees the old file or the new one. Best
 * effort: a stamp that could not be written is only a hash computed again.
 * Returns why it could not be written, or undefined.
 */
export function writeStamp(path: string, text: string): string | undefined {
  let temporary: string | undefined;
  try {
    temporary = writeExclusive(
      path.slice(0, path.lastIndexOf("/")),
      new TextEncoder().encode(text),
      ".stamp-",
      ".tmp",
    );
    Deno.renameSync(temporary, path);
    return undefined;
  } catch (e) {
    if (temporary) {
      try {
        Deno.removeSync(temporary);
      } catch {
        // Renamed after all, or removed by another.
      }
    }
    return e instanceof Error ? e.message : String(e);
  }
}
