// The kernel cache's stamps (issue 17: a later boot hashed a 35 MB entry and an 8 MB bzImage,
// seconds in the sandbox's emulator): once a settled file has been hashed, its status (device,
// inode, size, times) stands for its content, and any change through the file system (which
// sets the change time) makes the next lookup hash it again. A flipped bit is still never run.

import { deepStrictEqual, notStrictEqual, ok, strictEqual } from "node:assert/strict";
import { fileStamp, sha256HexAsync, STAMP_SETTLED_MS } from "../../src/cache_dir.ts";
import { readImageFileWithInfo } from "../../src/boot/read_image.ts";
import { cachedVmlinuxAsync, lookupVmlinuxAsync } from "../../src/boot/vmlinux.ts";
import { tinyBzImage } from "../fuzz/samples.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until every file in `paths` last changed more than STAMP_SETTLED_MS ago. */
async function settle(...paths: string[]): Promise<void> {
  const newest = Math.max(...paths.flatMap((p) => {
    const info = Deno.statSync(p);
    return [info.ctime!.getTime(), info.mtime!.getTime()];
  }));
  await sleep(Math.max(0, newest + STAMP_SETTLED_MS + 50 - Date.now()));
}

/** One lookup with the image read from `imagePath`: what it found and its steps. */
async function look(dir: string, imagePath: string) {
  const { bytes, info } = readImageFileWithInfo(imagePath, { what: "kernel" });
  ok(info, "the image did not change while read: its status comes with it");
  let phase = "";
  const lookup = await lookupVmlinuxAsync(bytes, {
    directory: dir,
    map: true,
    imageInfo: info,
    onPhase: (what) => phase = what,
  });
  const vmlinux = lookup.hit ? lookup.hit.vmlinux.slice() : undefined;
  lookup.hit?.close();
  return { vmlinux, phase };
}

Deno.test("fileStamp: only a settled file's status, and another one after a change", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "stamp-" });
  try {
    const path = `${dir}/f`;
    Deno.writeFileSync(path, new Uint8Array(10));
    const info = Deno.statSync(path);
    strictEqual(fileStamp(info), undefined, "changed just now: not yet");
    const [mtime, ctime] = [info.mtime!.getTime(), info.ctime!.getTime()];
    const now = Math.max(mtime, ctime) + STAMP_SETTLED_MS;
    strictEqual(fileStamp(info, now), `stamp ${info.dev} ${info.ino} 10 ${mtime} ${ctime}`);
    strictEqual(fileStamp(info, now - 1), undefined, "changed less than 2 s before");
    strictEqual(fileStamp(info, Math.min(mtime, ctime) - 1), undefined, "a clock set back");
    strictEqual(fileStamp(Deno.statSync(dir), now + 10_000), undefined, "not a regular file");
    await sleep(50); // past the file system clock's tick
    Deno.writeFileSync(path, new Uint8Array(10)); // same size, same bytes
    notStrictEqual(fileStamp(Deno.statSync(path), now + 10_000), fileStamp(info, now + 10_000));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vmlinux cache stamps: hashed once, then vouched for by the status until a change", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vmlinux-stamp-" });
  try {
    const imagePath = `${dir}/bzImage`;
    const image = tinyBzImage();
    Deno.writeFileSync(imagePath, image);
    const cache = `${dir}/kernels`;
    const first = await cachedVmlinuxAsync(image, { directory: cache });
    strictEqual(await first.save(), undefined, "written");
    const entry = first.path!;
    const expected = first.vmlinux.slice();

    // Fresh files are hashed, and nothing is remembered of them.
    let got = await look(cache, imagePath);
    deepStrictEqual(got.vmlinux, expected);
    ok(/hit, MD5 checked.*key \d+ ms, map \d+ ms, MD5/.test(got.phase), got.phase);
    ok(![...Deno.readDirSync(cache)].some((e) => e.name.endsWith(".stamp")), "no stamp yet");

    // Settled: hashed once more, and both stamps written.
    await settle(imagePath, entry);
    got = await look(cache, imagePath);
    deepStrictEqual(got.vmlinux, expected);
    ok(/hit, MD5 checked.*key \d+ ms, map \d+ ms, MD5/.test(got.phase), got.phase);
    const stamps = [...Deno.readDirSync(cache)].map((e) => e.name).filter((n) =>
      n.endsWith(".stamp")
    ).sort();
    strictEqual(stamps.length, 2, stamps.join(", "));
    ok(/^image-\d+-\d+\.stamp$/.test(stamps[0]) && stamps[1] === `${entry.split("/").pop()}.stamp`);

    // Unchanged since: neither file is hashed, the same kernel comes back.
    got = await look(cache, imagePath);
    deepStrictEqual(got.vmlinux, expected);
    ok(
      /hit, unchanged since its MD5 was checked.*key remembered \d+ ms, .*unchanged since checked/
        .test(got.phase),
      got.phase,
    );

    // A stamp that is not ours alone (writable by the group) is not believed.
    Deno.chmodSync(`${cache}/${stamps[0]}`, 0o620);
    got = await look(cache, imagePath);
    ok(/key \d+ ms/.test(got.phase) && !/key remembered/.test(got.phase), got.phase);
    Deno.chmodSync(`${cache}/${stamps[0]}`, 0o600);

    // One bit flipped on disk, the size unchanged, then left to settle: its status changed,
    // so the entry is hashed again and the damage found; it is never returned.
    const bytes = Deno.readFileSync(entry);
    bytes[bytes.length >> 1] ^= 0x01;
    Deno.writeFileSync(entry, bytes);
    await settle(entry);
    got = await look(cache, imagePath);
    strictEqual(got.vmlinux, undefined, got.phase);
    ok(/kernel cache miss/.test(got.phase), got.phase);

    // The bzImage rewritten (same bytes): its key is computed again, not taken from the stamp.
    await sleep(50);
    Deno.writeFileSync(imagePath, image);
    await settle(imagePath);
    got = await look(cache, imagePath);
    ok(/key \d+ ms/.test(got.phase) && !/key remembered/.test(got.phase), got.phase);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("vmlinux cache: an empty cache is a miss without hashing; the key is computed on save", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vmlinux-empty-" });
  try {
    const image = tinyBzImage();
    const phases: string[] = [];
    const options = { directory: dir, map: true, onPhase: (what: string) => phases.push(what) };
    const lookup = await lookupVmlinuxAsync(image, options);
    strictEqual(lookup.hit, undefined);
    ok(/kernel cache miss .*empty cache/.test(phases[0]) && !/key/.test(phases[0]), phases[0]);
    const extracted = await lookup.extract();
    strictEqual(extracted.path, undefined, "no key yet");
    strictEqual(await extracted.save(), undefined, "written");
    strictEqual(extracted.path, `${dir}/vmlinux-${await sha256HexAsync(image)}.elf`);
    ok(/kernel cache written .*with the bzImage's SHA-256/.test(phases.at(-1)!), phases.at(-1));
    const again = await lookupVmlinuxAsync(image, options);
    ok(again.hit, "read back under the key computed on save");
    deepStrictEqual(again.hit.vmlinux.slice(), extracted.vmlinux.slice());
    again.hit.close();
    extracted.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
