/**
 * Collects the project's files for the guest's /project: what git would commit (tracked plus
 * untracked-but-not-ignored files), plus extra paths such as git-ignored build outputs.
 *
 * @module
 */

import { join, relative, resolve } from "node:path";
import type { CpioWriter } from "./cpio.ts";

/** Directories never copied when walking without git. */
const SKIP_DIRS = new Set([".git", "node_modules"]);

async function walk(root: string, rel: string, out: Set<string>, skip: boolean): Promise<void> {
  const abs = join(root, rel);
  let st: Deno.FileInfo;
  try {
    st = await Deno.lstat(abs);
  } catch {
    return; // vanished while listing (deleted tracked file, or a concurrent edit)
  }
  if (!st.isDirectory) {
    out.add(rel);
    return;
  }
  for await (const e of Deno.readDir(abs)) {
    if (skip && SKIP_DIRS.has(e.name)) continue;
    await walk(root, rel === "" ? e.name : `${rel}/${e.name}`, out, skip);
  }
}

async function gitFiles(root: string): Promise<string[] | null> {
  try {
    const out = await new Deno.Command("git", {
      args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd: root,
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return null;
    return new TextDecoder().decode(out.stdout).split("\0").filter(Boolean);
  } catch {
    return null; // git not installed
  }
}

/**
 * Lists the files to copy, relative to `root` and sorted: `git ls-files -co --exclude-standard`
 * (or a walk skipping .git and node_modules outside a git checkout), plus every file under each
 * of `extraPaths`, ignored or not. Directories listed by git (submodules) are walked.
 */
export async function listProjectFiles(root: string, extraPaths: string[]): Promise<string[]> {
  const files = new Set<string>();
  const listed = await gitFiles(root);
  if (listed) {
    for (const rel of listed) await walk(root, rel, files, true);
  } else {
    await walk(root, "", files, true);
  }
  for (const extra of extraPaths) {
    const rel = relative(root, resolve(root, extra));
    if (rel.startsWith("..")) throw new Error(`sandbox: extra path outside the project: ${extra}`);
    await walk(root, rel, files, false);
  }
  return [...files].sort();
}

/** Copies the listed files into `w` under `guestDir`, keeping permissions, mtimes and symlinks. */
export async function writeProject(
  w: CpioWriter,
  root: string,
  files: string[],
  guestDir: string,
): Promise<void> {
  await w.dir(guestDir);
  for (const rel of files) {
    const abs = join(root, rel);
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(abs);
    } catch {
      continue; // vanished since listing
    }
    const mtime = Math.floor((st.mtime?.getTime() ?? 0) / 1000);
    const name = `${guestDir}/${rel}`;
    if (st.isSymlink) await w.symlink(name, await Deno.readLink(abs), mtime);
    else if (st.isFile) {
      await w.file(name, await Deno.readFile(abs), (st.mode ?? 0o644) & 0o777, mtime);
    }
  }
}
