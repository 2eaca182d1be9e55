// A cache hit loaded from its file straight into guest RAM (issue 17: the boot CLI's later
// boot, `lookupVmlinuxAsync` with `direct`): the segments land where the read-back kernel's
// would, the whole file is checked in place before anything runs, and a damaged or truncated
// entry is never run. Guest RAM is an ArrayBuffer here (writeLinuxBoot only reads and writes
// it through guestMemory/writeGuest); tests/kvm/boot_cli_cache_test.ts boots the real thing.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { BootImageError } from "../../src/boot/boot_image_error.ts";
import { planLinuxBoot, writeLinuxBoot } from "../../src/boot/bzimage.ts";
import { cachedVmlinuxAsync, lookupVmlinuxAsync } from "../../src/boot/vmlinux.ts";
import type { Vm } from "../../src/kvm/vm.ts";
import { tinyBzImage } from "../fuzz/samples.ts";

const RAM = 64 * 2 ** 20;

/** Guest RAM as writeLinuxBoot sees it. */
function ram(): { vm: Vm; bytes: Uint8Array } {
  const bytes = new Uint8Array(RAM);
  const guestMemory = (gpa: number, length: number) => bytes.subarray(gpa, gpa + length);
  const vm = {
    guestMemory,
    writeGuest: (gpa: number, data: Uint8Array) => guestMemory(gpa, data.length).set(data),
  } as unknown as Vm;
  return { vm, bytes };
}

/** The segments of a plan as they lie in `bytes`. */
function loaded(bytes: Uint8Array, plan: ReturnType<typeof planLinuxBoot>): Uint8Array[] {
  return plan.segments.map((s) =>
    bytes.slice(s.physicalAddress, s.physicalAddress + (s.fileSize ?? s.bytes.length))
  );
}

Deno.test("vmlinux cache, direct: a hit is read into guest RAM as the read-back kernel is, checked in place", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "vmlinux-direct-" });
  try {
    const image = tinyBzImage();
    const first = await cachedVmlinuxAsync(image, { directory: dir });
    strictEqual(await first.save(), undefined, "written");
    const reference = planLinuxBoot(image, { memorySize: RAM, vmlinux: first.vmlinux });
    const expected = ram();
    writeLinuxBoot(expected.vm, reference, { memoryIsZero: true });

    const lookup = await lookupVmlinuxAsync(image, { directory: dir, direct: true });
    const hit = lookup.hit!;
    ok(hit.file, "a direct hit leaves the kernel in its file");
    strictEqual(hit.file.size, first.vmlinux.length);
    const plan = planLinuxBoot(image, { memorySize: RAM, vmlinuxFile: hit.file });
    deepStrictEqual(
      plan.segments.map((s) => [s.physicalAddress, s.memorySize, s.fileOffset, s.fileSize]),
      reference.segments.map((s) => [s.physicalAddress, s.memorySize, s.fileOffset, s.fileSize]),
    );
    const got = ram();
    writeLinuxBoot(got.vm, plan, { memoryIsZero: true });
    hit.close();
    deepStrictEqual(loaded(got.bytes, plan), loaded(expected.bytes, reference));
    ok(got.bytes.every((b, i) => b === expected.bytes[i]), "the same guest RAM");

    // One bit flipped in the last segment, the size unchanged: found in guest RAM, before a run.
    const bytes = Deno.readFileSync(first.path!);
    const last = reference.segments[reference.segments.length - 1];
    bytes[last.fileOffset! + (last.fileSize! >> 1)] ^= 0x01;
    Deno.writeFileSync(first.path!, bytes);
    const damaged = await lookupVmlinuxAsync(image, { directory: dir, direct: true });
    const damagedPlan = planLinuxBoot(image, { memorySize: RAM, vmlinuxFile: damaged.hit!.file });
    throws(
      () => writeLinuxBoot(ram().vm, damagedPlan, { memoryIsZero: true }),
      (e: unknown) => e instanceof BootImageError && e.problem === "damaged-cache-entry",
    );
    damaged.hit!.close();
    // Decompressed again and replaced: the next lookup's kernel loads and checks.
    const again = await damaged.extractAgain();
    strictEqual(again.source, "extracted");
    strictEqual(await again.save(), undefined, "replaced");
    const fixed = await lookupVmlinuxAsync(image, { directory: dir, direct: true });
    writeLinuxBoot(
      ram().vm,
      planLinuxBoot(image, { memorySize: RAM, vmlinuxFile: fixed.hit!.file }),
      { memoryIsZero: true },
    );
    fixed.hit!.close();

    // Truncated (shorter than its check says): a miss, never opened for loading.
    Deno.truncateSync(first.path!, first.vmlinux.length - 1);
    const truncated = await lookupVmlinuxAsync(image, { directory: dir, direct: true });
    strictEqual(truncated.hit, undefined);
    // A file larger than the guest's RAM allows is refused from its size, never read.
    await (await lookupVmlinuxAsync(image, { directory: dir })).extractAgain().then((x) =>
      x.save()
    );
    const small = await lookupVmlinuxAsync(image, {
      directory: dir,
      direct: true,
      maxOutput: first.vmlinux.length - 1,
    });
    strictEqual(small.hit, undefined);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
