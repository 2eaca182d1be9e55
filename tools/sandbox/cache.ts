/**
 * The sandbox's on-disk cache: the built base initramfs and the extracted kernel, each named by
 * a hash of its ingredients, so a changed deno or kernel gets a fresh file.
 *
 * @module
 */

import { join } from "node:path";

/** The cache directory: `$DENO_KVM_SANDBOX_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/deno-kvm/sandbox`. */
export function cacheDir(): string {
  const explicit = Deno.env.get("DENO_KVM_SANDBOX_CACHE");
  if (explicit) return explicit;
  const xdg = Deno.env.get("XDG_CACHE_HOME") || join(Deno.env.get("HOME") ?? "/tmp", ".cache");
  return join(xdg, "deno-kvm", "sandbox");
}

/** Identifies a file by path, size and (optionally) modification time. */
export async function fingerprint(path: string, withMtime = true): Promise<string> {
  const st = await Deno.stat(path);
  return `${path}:${st.size}` + (withMtime ? `:${st.mtime?.getTime() ?? 0}` : "");
}

/** A short hex hash (64 bits of SHA-256) of the given strings. */
export async function hashKey(parts: string[]): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(parts.join("\n")));
  return Array.from(new Uint8Array(digest).subarray(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

const DAY_MS = 24 * 3600 * 1000;

/**
 * Deletes cached files named `<prefix>*` other than `keep` once a day old, and leftover `.tmp`
 * files of interrupted builds. Called after a build, so switching deno or kernel versions does
 * not pile up 100 MB files, while a file another run may be reading right now is left alone.
 */
export async function pruneCache(dir: string, prefix: string, keep: string): Promise<void> {
  const now = Date.now();
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.name.startsWith(prefix) || join(dir, e.name) === keep) continue;
      const p = join(dir, e.name);
      const st = await Deno.stat(p);
      if (now - (st.mtime?.getTime() ?? now) > (e.name.endsWith(".tmp") ? DAY_MS / 24 : DAY_MS)) {
        await Deno.remove(p).catch(() => {});
      }
    }
  } catch {
    // pruning is best effort
  }
}
