// The boot CLI's first and later boot of a kernel (issue 17), on an empty cache
// of their own: the first boot finds no kernel and no host probe record. On a
// KVM that runs guest code at hardware speed it boots the bzImage as QEMU does
// and decompresses the kernel for the cache after the run; on a software KVM
// (kvm_pvm) it decompresses on the host before the guest runs. Either way the
// cache holds the kernel and the probe record afterwards, and the next boot
// reads both back, the kernel checked against its MD5, and the boot after that
// trusts the unchanged entry by its status: a bit flipped on disk is found
// before the guest runs, and the entry replaced.
// Each boot is cut short by --timeout (the guest's boot is not what is tested
// here).

import { ok } from "node:assert/strict";
import { hostKernelPath } from "../../src/boot/initramfs.ts";
import { bzImagePayload } from "../../src/boot/vmlinux.ts";
import { STAMP_SETTLED_MS } from "../../src/cache_dir.ts";

const CLI = new URL("../../examples/boot_linux.ts", import.meta.url).pathname;
const kernelPath = hostKernelPath();
const xz = (() => {
  try {
    return kernelPath !== undefined &&
      bzImagePayload(Deno.readFileSync(kernelPath)).format === "xz";
  } catch {
    return false;
  }
})();

/** Waits until `path` last changed more than STAMP_SETTLED_MS ago. */
async function settle(path: string): Promise<void> {
  const info = Deno.statSync(path);
  const newest = Math.max(info.ctime!.getTime(), info.mtime!.getTime());
  const wait = newest + STAMP_SETTLED_MS + 50 - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
}

async function boot(cache: string): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--no-check",
      CLI,
      "--kernel",
      kernelPath!,
      "--memory",
      "256M",
      "--cpus",
      "2",
      "--timeout",
      "3",
      "--trace",
      "--cmdline",
      "console=ttyS0 panic=-1 pci=off quiet",
    ],
    env: { DENO_KVM_CACHE: cache },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    signal: AbortSignal.timeout(600_000), // the watchdog: a boot never hangs the suite
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  ok(out.code === 124, `the boot ends by its --timeout (exit 124), got ${out.code}:\n${stderr}`);
  return stderr;
}

Deno.test({
  name:
    "boot CLI: a first boot fills the kernel cache and the probe record, a later boot reads both",
  ignore: !xz,
  async fn() {
    const cache = Deno.makeTempDirSync({ prefix: "boot-cli-cache-" });
    try {
      const first = await boot(cache);
      ok(/kernel cache miss/.test(first), first);
      ok(/host probed \(\d+ ms; probed/.test(first), first);
      if (/the guest decompresses this boot/.test(first)) {
        // A hardware-speed KVM: the bzImage was booted, the kernel cached after the run.
        ok(!/uncompressed kernel ready/.test(first), first);
        ok(/cached the decompressed kernel in /.test(first), first);
      } else {
        // A software KVM: decompressed before the guest ran, cached after it.
        ok(/uncompressed kernel ready \(extracted\)/.test(first), first);
        ok(/kernel cache written/.test(first), first);
      }
      const names = [...Deno.readDirSync(`${cache}/kernels`)].map((e) => e.name)
        .filter((name) => !name.endsWith(".stamp")).sort();
      ok(names.length === 2 && names[1] === `${names[0]}.md5`, names.join(", "));
      const entry = `${cache}/kernels/${names[0]}`;
      // Settled (see fileStamp): the later boot checks the entry's MD5 once and remembers the
      // entry's status and the bzImage's key; the boot after that hashes neither.
      await settle(entry);
      const later = await boot(cache);
      ok(/kernel cache hit, MD5 checked/.test(later), later);
      ok(/uncompressed kernel ready \(cache\)/.test(later), later);
      const again = await boot(cache);
      ok(/kernel cache hit, unchanged since its MD5 was checked/.test(again), again);
      ok(/key remembered/.test(again), again);
      ok(/uncompressed kernel ready \(cache\)/.test(again), again);
      // A bit flipped on disk, the size unchanged, left to settle: its status changed, so it is
      // never run as it is (the MD5 check sees it), decompressed again and the entry replaced;
      // the boot after that reads it back intact.
      const bytes = Deno.readFileSync(entry);
      bytes[bytes.length >> 1] ^= 0x01;
      Deno.writeFileSync(entry, bytes);
      await settle(entry);
      const damaged = await boot(cache);
      ok(/kernel cache miss|is damaged: its MD5 differs/.test(damaged), damaged);
      ok(!/uncompressed kernel ready \(cache\)/.test(damaged), damaged);
      ok(/cached the decompressed kernel in |kernel cache written/.test(damaged), damaged);
      const repaired = await boot(cache);
      ok(/kernel cache hit/.test(repaired) && !/is damaged/.test(repaired), repaired);
      // A probe that timed out (a loaded host) is not recorded: then the next boot probes again.
      const recorded = [...Deno.readDirSync(`${cache}/probes`)].length === 1;
      if (recorded) ok(/host probed \(\d+ ms; read back from the cache/.test(later), later);
      else console.log("  (the host probe was not recorded: a probe timed out)");
    } finally {
      Deno.removeSync(cache, { recursive: true });
    }
  },
});
