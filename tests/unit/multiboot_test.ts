// The Multiboot v1 loader (src/boot/multiboot.ts) on synthetic images, and the
// isa-debug-exit port's status rule. No KVM needed.

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  findMultibootHeader,
  isMultiboot,
  MULTIBOOT_HEADER_MAGIC,
  MultibootError,
  MultibootInfoFlag,
  type MultibootProblem,
  parseMultiboot,
  planMultibootBoot,
  writeMultibootBoot,
} from "../../src/boot/multiboot.ts";
import { DebugExit, debugExitStatus } from "../../src/devices/debug_exit.ts";

/** A Multiboot header: magic, flags, checksum, then the five a.out-kludge address fields. */
function header(flags: number, fields: number[] = [], checksumDelta = 0): Uint8Array {
  const h = new Uint8Array(12 + 4 * fields.length);
  const v = new DataView(h.buffer);
  v.setUint32(0, MULTIBOOT_HEADER_MAGIC, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, (-(MULTIBOOT_HEADER_MAGIC + flags) + checksumDelta) >>> 0, true);
  fields.forEach((f, i) => v.setUint32(12 + 4 * i, f, true));
  return h;
}

/**
 * A minimal ELF32 (EM_386) executable with one PT_LOAD segment: `code` at
 * file offset 0x100 loaded at `paddr`, `bss` zero bytes after it, entry at
 * `entry` (default paddr). The Multiboot header sits at file offset 0x80.
 */
function elf32(
  opts: {
    paddr?: number;
    entry?: number;
    bss?: number;
    machine?: number;
    flags?: number;
    filesz?: number;
  } = {},
): Uint8Array {
  const paddr = opts.paddr ?? 0x100000;
  const code = new Uint8Array([0xb8, 0x2a, 0, 0, 0, 0xf4]); // mov eax, 42; hlt
  const image = new Uint8Array(0x100 + code.length);
  const v = new DataView(image.buffer);
  image.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1], 0); // ELF, 32-bit, little-endian, version 1
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, opts.machine ?? 3, true); // EM_386
  v.setUint32(24, opts.entry ?? paddr, true); // e_entry
  v.setUint32(28, 52, true); // e_phoff
  v.setUint16(42, 32, true); // e_phentsize
  v.setUint16(44, 1, true); // e_phnum
  // Program header at 52: PT_LOAD, offset 0x100, vaddr = paddr, filesz, memsz.
  v.setUint32(52, 1, true);
  v.setUint32(56, 0x100, true);
  v.setUint32(60, paddr, true);
  v.setUint32(64, paddr, true);
  v.setUint32(68, opts.filesz ?? code.length, true);
  v.setUint32(72, code.length + (opts.bss ?? 0), true);
  image.set(header(opts.flags ?? 0), 0x80);
  image.set(code, 0x100);
  return image;
}

function assertProblem(fn: () => unknown, problem: MultibootProblem): MultibootError {
  let e: unknown;
  try {
    fn();
  } catch (caught) {
    e = caught;
  }
  assert(e instanceof MultibootError, `expected a MultibootError (${problem}), got ${e}`);
  assertEquals(e.problem, problem, e.message);
  assertEquals(e.operation, "load multiboot kernel");
  return e;
}

Deno.test("multiboot: finds the header in an ELF32 image and loads its PT_LOAD segment", () => {
  const img = parseMultiboot(elf32({ bss: 0x2000 }));
  assertEquals(img.header.offset, 0x80);
  assertEquals(img.format, "elf");
  assertEquals(img.entry, 0x100000);
  assertEquals(img.segments.length, 1);
  assertEquals(img.segments[0].address, 0x100000);
  assertEquals(img.segments[0].bytes.length, 6);
  assertEquals(img.segments[0].memorySize, 6 + 0x2000);
  assertEquals(img.end, 0x100000 + 6 + 0x2000);
  assert(isMultiboot(elf32()));
});

Deno.test("multiboot: loads below 1 MiB (kvm-unit-tests' realmode.flat is linked at 32 KiB)", () => {
  assertEquals(parseMultiboot(elf32({ paddr: 0x8000 })).start, 0x8000);
});

Deno.test("multiboot: the a.out kludge loads by the header's addresses", () => {
  // Header at file offset 0x40 describing itself at 0x200040: the file from 0 loads at 0x200000.
  const image = new Uint8Array(0x100);
  image.set(header(1 << 16, [0x200040, 0x200000, 0x200100, 0x201000, 0x200080]), 0x40);
  const img = parseMultiboot(image);
  assertEquals(img.format, "aout-kludge");
  assertEquals(img.entry, 0x200080);
  assertEquals(img.segments[0].address, 0x200000);
  assertEquals(img.segments[0].bytes.length, 0x100);
  assertEquals(img.segments[0].memorySize, 0x1000);
});

Deno.test("multiboot: the information structure has memory sizes, a memory map, the command line and modules", () => {
  const env = new TextEncoder().encode("NR_CPUS=2\nTEST_DEVICE=0\n");
  const modules = [{ data: env, cmdline: "env" }];
  const plan = planMultibootBoot(elf32({ bss: 0x3000 }), {
    memorySize: 256 << 20,
    cmdline: "x86/test.flat arg",
    modules,
  });
  // The info page follows the kernel (bss included), page-aligned; the module has its own page.
  assertEquals(plan.infoAddress, 0x104000);
  assertEquals(plan.modules[0].start, 0x105000);
  assertEquals(plan.modules[0].end, 0x105000 + env.length);
  const v = new DataView(plan.info.buffer);
  const flags = v.getUint32(0, true);
  for (
    const f of [
      MultibootInfoFlag.MEMORY,
      MultibootInfoFlag.CMDLINE,
      MultibootInfoFlag.MODS,
      MultibootInfoFlag.MMAP,
    ]
  ) {
    assert(flags & f, `flag ${f}`);
  }
  assertEquals(v.getUint32(4, true), 639); // mem_lower, KiB
  assertEquals(v.getUint32(8, true), (256 - 1) * 1024); // mem_upper, KiB above 1 MiB
  const at = (address: number) => address - plan.infoAddress;
  const cstring = (address: number) => {
    const from = at(address);
    return new TextDecoder().decode(plan.info.subarray(from, plan.info.indexOf(0, from)));
  };
  assertEquals(cstring(v.getUint32(16, true)), "x86/test.flat arg");
  assertEquals(v.getUint32(20, true), 1); // mods_count
  const mod = at(v.getUint32(24, true));
  assertEquals(v.getUint32(mod, true), 0x105000);
  assertEquals(v.getUint32(mod + 4, true), 0x105000 + env.length);
  assertEquals(cstring(v.getUint32(mod + 8, true)), "env");
  // The memory map: usable 0-0x9fc00 and 1 MiB-256 MiB, with size fields of 20.
  const mmapLength = v.getUint32(44, true);
  const mmap = at(v.getUint32(48, true));
  const ranges: [number, number, number][] = [];
  for (let o = mmap; o < mmap + mmapLength; o += v.getUint32(o, true) + 4) {
    ranges.push([
      Number(v.getBigUint64(o + 4, true)),
      Number(v.getBigUint64(o + 12, true)),
      v.getUint32(o + 20, true),
    ]);
  }
  assertEquals(ranges[0], [0, 0x9fc00, 1]);
  assertEquals(ranges.at(-1), [0x100000, (256 - 1) << 20, 1]);

  // Written where planned: the segment's bytes, the info, the module.
  const ram = new Uint8Array(2 << 20);
  ram.fill(0xaa, 0x100006, 0x100010); // dirty bss must be zeroed
  writeMultibootBoot((address, bytes) => ram.set(bytes, address), plan, modules);
  assertEquals(ram[0x100000], 0xb8);
  assertEquals(ram[0x100006], 0);
  assertEquals(ram.subarray(0x105000, 0x105000 + env.length), env);
  assertEquals(ram.subarray(0x104000, 0x104000 + plan.info.length), plan.info);
});

Deno.test("multiboot: RAM above the low limit is mapped at 4 GiB and in the memory map", () => {
  const plan = planMultibootBoot(elf32(), { memorySize: 4 * 2 ** 30 });
  assertEquals(plan.lowMemorySize, 3 * 2 ** 30);
  assertEquals(plan.highMemorySize, 2 ** 30);
  assertEquals(plan.memoryMap.at(-1), { base: 4 * 2 ** 30, length: 2 ** 30, type: 1 });
});

Deno.test("multiboot refuses: no header, a wrong checksum, a required video mode", () => {
  assertEquals(findMultibootHeader(new Uint8Array(8192)), null);
  assert(!isMultiboot(new Uint8Array(16)));
  assertProblem(() => parseMultiboot(new Uint8Array(8192)), "no-header");
  // A header past the first 8 KiB does not count.
  const late = new Uint8Array(8192 + 64);
  late.set(header(0), 8192);
  assertProblem(() => parseMultiboot(late), "no-header");
  const bad = new Uint8Array(64);
  bad.set(header(0, [], 1), 0);
  assertProblem(() => parseMultiboot(bad), "bad-checksum");
  assertProblem(() => parseMultiboot(elf32({ flags: 1 << 2 })), "unsupported-flags");
  assertProblem(() => parseMultiboot(elf32({ flags: 1 << 7 })), "unsupported-flags");
});

Deno.test("multiboot refuses malformed ELF images", () => {
  assertProblem(() => parseMultiboot(elf32({ machine: 40 })), "bad-elf"); // ARM
  assertProblem(() => parseMultiboot(elf32({ filesz: 0x10000 })), "bad-elf"); // past the file
  assertProblem(() => parseMultiboot(elf32({ entry: 0x500000 })), "bad-elf"); // entry outside
  const noElf = new Uint8Array(64);
  noElf.set(header(0), 0);
  assertProblem(() => parseMultiboot(noElf), "bad-elf");
});

Deno.test("multiboot refuses inconsistent a.out-kludge fields", () => {
  const image = new Uint8Array(0x100);
  image.set(header(1 << 16, [0x200040, 0x200080, 0, 0, 0x200080]), 0x40); // load_addr > header_addr
  assertProblem(() => parseMultiboot(image), "bad-address-fields");
  image.set(header(1 << 16, [0x200040, 0x200000, 0x300000, 0, 0x200080]), 0x40); // load end past the file
  assertProblem(() => parseMultiboot(image), "bad-address-fields");
  image.set(header(1 << 16, [0x200040, 0x200000, 0x200100, 0x2000f0, 0x200080]), 0x40); // bss end < load end
  assertProblem(() => parseMultiboot(image), "bad-address-fields");
  const cut = new Uint8Array(0x50);
  cut.set(header(1 << 16, [0x200040]), 0x40); // the address fields cut off
  assertProblem(() => parseMultiboot(cut), "bad-address-fields");
});

Deno.test("multiboot refuses images and modules that do not fit in RAM, and bad memory sizes", () => {
  assertProblem(
    () => planMultibootBoot(elf32({ paddr: 0x400000 }), { memorySize: 4 << 20 }),
    "does-not-fit",
  );
  assertProblem(
    () =>
      planMultibootBoot(elf32(), {
        memorySize: 2 << 20,
        modules: [{ data: new Uint8Array(2 << 20) }],
      }),
    "does-not-fit",
  );
  assertProblem(() => planMultibootBoot(elf32(), { memorySize: 1 << 20 }), "bad-memory-size");
  assertProblem(() => planMultibootBoot(elf32(), { memorySize: (4 << 20) + 1 }), "bad-memory-size");
});

Deno.test("debug exit: a write of code ends with status code << 1 | 1", () => {
  assertEquals(debugExitStatus(0), 1); // kvm-unit-tests: pass
  assertEquals(debugExitStatus(1), 3); // fail
  assertEquals(debugExitStatus(38), 77); // skip (report_summary returns 77 >> 1)
  assertEquals(debugExitStatus(0x1ff, 1), 0x1ff); // a byte write keeps 8 bits
  const seen: number[] = [];
  const dev = new DebugExit((s) => seen.push(s));
  dev.write(0, new Uint8Array([1, 0, 0, 0])); // outl of 1
  assertEquals(seen, [3]);
  assertEquals(dev.status, 3);
  const data = new Uint8Array(4).fill(0xee);
  dev.read(0, data);
  assertEquals([...data], [0, 0, 0, 0]);
});
