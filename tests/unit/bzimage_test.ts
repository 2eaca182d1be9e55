// The bzImage loader's checks, without KVM: a real distribution kernel parses
// and plans; every bad input is refused with a typed error before a VM exists.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { BootParams, E820_RAM, E820_RESERVED } from "../../src/boot/boot_params.ts";
import {
  CMDLINE_ADDRESS,
  KERNEL_LOAD_ADDRESS,
  parseBzImage,
  planLinuxBoot,
} from "../../src/boot/bzimage.ts";
import { buildMpTable } from "../../src/boot/mptable.ts";
import { hostKernelPath } from "../../examples/initramfs.ts";
import { refused } from "./boot_refusal.ts";

const MiB = 1024 * 1024;

const kernelPath = hostKernelPath();
const image = kernelPath ? Deno.readFileSync(kernelPath) : undefined;
const ignore = image === undefined;

Deno.test({
  name: "bzimage: a distribution kernel parses and plans a 256 MiB boot",
  ignore,
  fn() {
    const k = parseBzImage(image!);
    ok(k.protocol >= 0x20c, `protocol ${k.protocol.toString(16)} has the 64-bit entry`);
    ok(k.has64BitEntry);
    strictEqual(k.setupSize, (k.setupSects + 1) * 512);
    ok(k.cmdlineSize >= 255);
    ok(k.initSize > 0 && k.relocatable);
    const initrd = new Uint8Array(3 * MiB + 123);
    const plan = planLinuxBoot(image!, {
      memorySize: 256 * MiB,
      cmdline: "console=ttyS0",
      initrd,
    });
    strictEqual(plan.entryMode, "64");
    strictEqual(plan.entry, KERNEL_LOAD_ADDRESS + 0x200);
    // The initrd sits page aligned, as high as the RAM allows, above the kernel.
    strictEqual(plan.initrdAddress % 4096, 0);
    ok(plan.initrdAddress + initrd.length <= 256 * MiB);
    ok(256 * MiB - (plan.initrdAddress + initrd.length) < 4096);
    ok(plan.initrdAddress >= plan.kernelEnd);
    const zp = new BootParams(plan.zeroPage);
    strictEqual(zp.hdr.header, 0x53726448);
    strictEqual(zp.hdr.typeOfLoader, 0xff);
    ok(zp.hdr.loadflags & 0x80, "CAN_USE_HEAP");
    strictEqual(zp.hdr.cmdLinePtr, CMDLINE_ADDRESS);
    strictEqual(zp.hdr.ramdiskImage, plan.initrdAddress);
    strictEqual(zp.hdr.ramdiskSize, initrd.length);
    strictEqual(zp.e820Entries, 4);
    deepStrictEqual(plan.e820.map((e) => e.type), [
      E820_RAM,
      E820_RESERVED,
      E820_RESERVED,
      E820_RAM,
    ]);
    strictEqual(plan.e820[3].addr + plan.e820[3].size, 256 * MiB);
    strictEqual(new TextDecoder().decode(plan.cmdline), "console=ttyS0\0");
  },
});

Deno.test({
  name: "bzimage: memory beyond 3 GiB continues above 4 GiB in the E820 map",
  ignore,
  fn() {
    const plan = planLinuxBoot(image!, { memorySize: 4096 * MiB });
    strictEqual(plan.lowMemorySize, 3072 * MiB);
    strictEqual(plan.highMemorySize, 1024 * MiB);
    deepStrictEqual(plan.e820.at(-1), { addr: 4096 * MiB, size: 1024 * MiB, type: E820_RAM });
  },
});

Deno.test("bzimage: a file that is not a bzImage is refused", () => {
  const elf = new Uint8Array(4096);
  elf.set([0x7f, 0x45, 0x4c, 0x46]); // an ELF header, say
  throws(() => parseBzImage(elf), refused("not-bzimage", "ENOEXEC", /not a Linux bzImage/));
  throws(
    () => planLinuxBoot(new Uint8Array(100), { memorySize: 256 * MiB }),
    refused("not-bzimage", "ENOEXEC", /too short/),
  );
});

Deno.test({
  name: "bzimage: a truncated image is refused",
  ignore,
  fn() {
    const half = image!.subarray(0, image!.length >> 1);
    throws(() => parseBzImage(half), refused("truncated", "ENOEXEC", /truncated.*syssize/));
    const headerOnly = image!.subarray(0, 0x210);
    throws(() => parseBzImage(headerOnly), refused("truncated", "ENOEXEC", /setup header/));
  },
});

Deno.test({
  name: "bzimage: an old boot protocol is refused",
  ignore,
  fn() {
    const old = image!.slice();
    new DataView(old.buffer).setUint16(0x206, 0x0204, true);
    throws(() => parseBzImage(old), refused("unsupported-protocol", "ENOEXEC", /2\.04/));
  },
});

Deno.test({
  name: "bzimage: a command line longer than cmdline_size is refused",
  ignore,
  fn() {
    const size = parseBzImage(image!).cmdlineSize;
    const cmdline = "x".repeat(size + 1);
    throws(
      () => planLinuxBoot(image!, { memorySize: 256 * MiB, cmdline }),
      refused("cmdline-too-long", "E2BIG", new RegExp(`${size + 1} bytes.*at most ${size}`)),
    );
    // Exactly cmdline_size bytes still fit.
    planLinuxBoot(image!, { memorySize: 256 * MiB, cmdline: "x".repeat(size) });
  },
});

Deno.test({
  name: "bzimage: an initrd larger than RAM allows is refused",
  ignore,
  fn() {
    throws(
      () => planLinuxBoot(image!, { memorySize: 128 * MiB, initrd: new Uint8Array(100 * MiB) }),
      refused("initrd-too-large", "EFBIG", /initrd \(104857600 bytes\) does not fit/),
    );
  },
});

Deno.test({
  name: "bzimage: memory too small for the kernel is refused",
  ignore,
  fn() {
    throws(
      () => planLinuxBoot(image!, { memorySize: 32 * MiB }),
      refused("memory-too-small", "ENOMEM", /32 MiB of RAM is too small.*init_size/),
    );
    throws(
      () => planLinuxBoot(image!, { memorySize: 1000 }),
      refused("memory-too-small", "EINVAL", /multiple of 4 KiB/),
    );
  },
});

Deno.test("mptable: checksums, one processor entry per vCPU, the IOAPIC after them", () => {
  const table = buildMpTable(2, 0x9fc00);
  const sum = (b: Uint8Array) => b.reduce((a, x) => (a + x) & 0xff, 0);
  strictEqual(new TextDecoder().decode(table.subarray(0, 4)), "_MP_");
  strictEqual(sum(table.subarray(0, 16)), 0, "floating pointer checksum");
  const view = new DataView(table.buffer);
  strictEqual(view.getUint32(4, true), 0x9fc10, "points to the table right after it");
  const length = view.getUint16(16 + 4, true);
  strictEqual(new TextDecoder().decode(table.subarray(16, 20)), "PCMP");
  strictEqual(sum(table.subarray(16, 16 + length)), 0, "configuration table checksum");
  // Entries: processor 0 (BSP), processor 1, bus, IOAPIC with id 2.
  const first = 16 + 44;
  deepStrictEqual([table[first], table[first + 1], table[first + 3]], [0, 0, 3]);
  deepStrictEqual([table[first + 20], table[first + 21], table[first + 23]], [0, 1, 1]);
  strictEqual(table[first + 40], 1, "bus entry");
  deepStrictEqual([table[first + 48], table[first + 49]], [2, 2], "IOAPIC id 2");
});
