// Issue 12, "bounded under hostile input": each finding of 2026-11-29 as a
// regression test. Sizes, counts and ring indices come from guests, files and
// caches; the library checks them and stays bounded in memory and work.

import { ok, strictEqual, throws } from "node:assert/strict";
import { planLinuxBoot } from "../../src/boot/bzimage.ts";
import { checkGuestLayout } from "../../src/boot/layout.ts";
import { readImageFile } from "../../src/boot/read_image.ts";
import { cachedVmlinux, compactElf, extractVmlinux } from "../../src/boot/vmlinux.ts";
import { Bus } from "../../src/devices/bus.ts";
import { Uart16550 } from "../../src/devices/uart_16550.ts";
import { KvmError } from "../../src/errors.ts";
import { CoalescedRing } from "../../src/kvm/coalesced_ring.ts";
import { elfWithNoteSize, tinyBzImage } from "../fuzz/samples.ts";
import { refused } from "./boot_refusal.ts";

const MiB = 1024 * 1024;

Deno.test("hostile: the UART holds at most its capacity, however much is offered", () => {
  const uart = new Uart16550();
  const byte = new Uint8Array([0x01]);
  uart.write(2, byte); // FCR: FIFOs on (16 bytes)
  const chunk = new Uint8Array(MiB).fill(0x61);
  let taken = 0;
  // 16 MiB offered to a guest that never reads.
  for (let i = 0; i < 16; i++) taken += uart.receive(chunk) ?? chunk.length;
  strictEqual(taken, uart.inputCapacity + 16, "the queue and the 16-byte FIFO, no more");
  strictEqual(uart.pendingInput, taken);
  strictEqual(uart.inputRoom, 0);
  strictEqual(uart.receive(chunk), 0, "full: nothing taken");
  // The guest reads 3 bytes; the room comes back for exactly 3 more.
  for (let i = 0; i < 3; i++) uart.read(0, byte); // RBR
  strictEqual(uart.inputRoom, 3);
  strictEqual(uart.receive(new TextEncoder().encode("bcdef")), 3, "the caller keeps 'ef'");
});

Deno.test("hostile: compactElf refuses a PT_NOTE larger than the file (no 1 GiB buffer)", () => {
  for (const size of [1n << 30n, 1n << 62n, 0xffffffffffffffffn]) {
    throws(
      () => compactElf(elfWithNoteSize(size)),
      refused("bad-elf", "ENOEXEC", /segment 1 \(type 4, .* runs past the end of the 256-byte/),
    );
  }
});

Deno.test("hostile: a bzImage's cmdline_size of 0xffffffff does not let 1 MiB of command line over the MP table", () => {
  const image = tinyBzImage({ cmdlineSize: 0xffffffff });
  const vmlinux = extractVmlinux(image);
  throws(
    () => planLinuxBoot(image, { memorySize: 64 * MiB, vmlinux, cmdline: "x".repeat(MiB) }),
    refused("cmdline-too-long", "E2BIG", /at most 523263 fit .* MP table at 0x9fc00/),
  );
  // The longest that fits is accepted and ends below the EBDA.
  const plan = planLinuxBoot(image, {
    memorySize: 64 * MiB,
    vmlinux,
    cmdline: "x".repeat(0x9fc00 - 0x20000 - 1),
  });
  strictEqual(plan.cmdline.length, 0x9fc00 - 0x20000);
});

Deno.test("hostile: Bus.handlePio checks count and size against the data", () => {
  const bus = new Bus({ space: "pio" });
  let writes = 0;
  bus.insert(0x3f8, 8, { read: (_offset, data) => data.fill(0x5a), write: () => writes++ });
  const area = new Uint8Array(16).fill(0xee);
  const data = area.subarray(4, 6); // 2 bytes of a larger run area
  for (
    const [size, count] of [[1, 3], [2, 2], [4, 1], [3, 1], [1, -1], [1, 1.5], [1, 2 ** 32]]
  ) {
    throws(() => bus.handlePio("in", 0x3f8, size, count, data), (e: unknown) => {
      ok(e instanceof KvmError && e.code === "EINVAL" && e.operation === "handle port I/O");
      return true;
    });
    throws(() => bus.handlePio("out", 0x3f8, size, count, data), KvmError);
  }
  ok(area.every((b) => b === 0xee), "nothing inside or outside data was written");
  strictEqual(writes, 0, "no device saw an access");
  bus.handlePio("in", 0x3f8, 1, 2, data);
  strictEqual(area[4] + area[5] + area[6], 0x5a + 0x5a + 0xee);
});

Deno.test("hostile: CoalescedRing.drain refuses a ring index past the ring instead of looping", () => {
  const page = new Uint8Array(4096);
  const view = new DataView(page.buffer);
  const ring = new CoalescedRing(page);
  view.setUint32(4, 5000, true); // last: past the 170 entries
  throws(() => ring.drain(() => {}), (e: unknown) => e instanceof KvmError && e.code === "EBADMSG");
  throws(() => ring.pending, KvmError);
  view.setUint32(0, 4096, true); // first past the ring too
  view.setUint32(4, 3, true);
  throws(() => ring.drain(() => {}), KvmError);
  // A valid ring drains and stops.
  view.setUint32(0, 168, true);
  view.setUint32(4, 2, true); // wraps: entries 168, 169, 0, 1
  strictEqual(ring.drain(() => {}), 4);
});

Deno.test("hostile: a flipped byte in a cached kernel is noticed and the entry replaced", () => {
  const directory = Deno.makeTempDirSync();
  try {
    const image = tinyBzImage();
    const first = cachedVmlinuxOf(image, directory);
    const path = first.path!;
    const bytes = Deno.readFileSync(path);
    bytes[bytes.length - 20] ^= 0x01; // inside the code: still a loadable ELF
    Deno.writeFileSync(path, bytes);
    const again = cachedVmlinuxOf(image, directory);
    strictEqual(again.source, "extracted", "the damaged entry was not used");
    ok(again.vmlinux.every((b, i) => b === first.vmlinux[i]));
    strictEqual(cachedVmlinuxOf(image, directory).source, "cache", "the replacement is used");
  } finally {
    Deno.removeSync(directory, { recursive: true });
  }
});

Deno.test("hostile: a cache directory writable by others, or someone else's, is not used", () => {
  const directory = Deno.makeTempDirSync();
  try {
    const image = tinyBzImage();
    const first = cachedVmlinuxOf(image, directory);
    Deno.chmodSync(directory, 0o777);
    const shared = cachedVmlinuxOf(image, directory);
    strictEqual(shared.source, "extracted");
    strictEqual(shared.path, undefined);
    ok(shared.cacheProblem?.includes(directory), `${shared.cacheProblem} names the directory`);
    Deno.chmodSync(directory, 0o700);
    Deno.chmodSync(first.path!, 0o666);
    strictEqual(cachedVmlinuxOf(image, directory).source, "extracted", "a world-writable entry");
    if (Deno.uid() === 0) {
      // As root (sudo -E): a cache of another user is not read.
      Deno.chownSync(directory, 65534, 65534);
      const other = cachedVmlinuxOf(image, directory);
      ok(other.cacheProblem?.includes("owned by uid 65534"), other.cacheProblem);
    }
  } finally {
    Deno.removeSync(directory, { recursive: true });
  }
});

function cachedVmlinuxOf(image: Uint8Array, directory: string) {
  return cachedVmlinux(image, { directory }) as ReturnType<typeof cachedVmlinux> & {
    cacheProblem?: string;
  };
}

Deno.test("hostile: readImageFile refuses FIFOs and devices without blocking, and caps the size", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const fifo = `${dir}/fifo`;
    const made = new Deno.Command("mkfifo", { args: [fifo] }).outputSync();
    ok(made.success);
    throws(
      () => readImageFile(fifo, { what: "kernel" }),
      refused("bad-file", "EINVAL", /the kernel .*\/fifo is a FIFO, not a regular file/),
    );
    throws(
      () => readImageFile("/dev/zero", { what: "initrd" }),
      refused("bad-file", "EINVAL", /the initrd \/dev\/zero is a character device/),
    );
    throws(() => readImageFile(dir), refused("bad-file", "EINVAL", /is a directory/));
    throws(
      () => readImageFile(`${dir}/missing`, { what: "kernel" }),
      refused("bad-file", "ENOENT", /cannot read the kernel .*missing/),
    );
    const file = `${dir}/initrd`;
    Deno.writeFileSync(file, new Uint8Array(5000).fill(7));
    throws(
      () => readImageFile(file, { what: "initrd", maxBytes: 4096 }),
      refused("file-too-large", "EFBIG", /initrd .* is 5000 bytes, more than the 4096 accepted/),
    );
    const bytes = readImageFile(file, { maxBytes: 5000 });
    strictEqual(bytes.length, 5000);
    ok(bytes.every((b) => b === 7));
    Deno.symlinkSync(file, `${dir}/link`);
    strictEqual(readImageFile(`${dir}/link`).length, 5000, "a symlink to a regular file is read");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("hostile: one layout check: every boot region inside RAM, none overlapping", () => {
  const ram = [{ start: 0, end: 0xa0000 }, { start: 0x100000, end: 0x400000 }];
  checkGuestLayout([
    { name: "zero page", address: 0x7000, size: 0x1000 },
    { name: "kernel", address: 0x100000, size: 0x300000 },
    { name: "empty", address: 0x50000000, size: 0 },
  ], ram);
  throws(
    () =>
      checkGuestLayout([
        { name: "command line", address: 0x20000, size: 0x100000 },
      ], ram),
    refused("bad-layout", "ENOMEM", /command line \(0x20000\.\.0x120000\) is outside guest RAM/),
  );
  throws(
    () =>
      checkGuestLayout([
        { name: "initrd", address: 0x300000, size: 0x1000 },
        { name: "kernel", address: 0x100000, size: 0x300000 },
      ], ram),
    refused("bad-layout", "EINVAL", /kernel \(0x100000\.\.0x400000\) overlaps initrd/),
  );
  throws(
    () => checkGuestLayout([{ name: "x", address: -1, size: 2 }], ram),
    refused("bad-layout", "EINVAL", /x: address -1/),
  );
  // A plan lists its regions, and they pass the same check.
  const plan = planLinuxBoot(tinyBzImage(), {
    memorySize: 64 * MiB,
    initrd: new Uint8Array(MiB),
    cmdline: "console=ttyS0",
  });
  ok(plan.regions.some((r) => r.name === "initrd" && r.address === plan.initrdAddress));
  ok(plan.regions.some((r) => r.name === "EBDA (MP table)"));
});
