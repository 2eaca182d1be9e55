// The fuzz targets: each turns one seeded PRNG into an input (random or a
// mutation of a valid sample), feeds it to a loader or a device model, and
// checks what it promises. A target may end in the typed error its module
// documents; anything else (an untyped exception, a broken invariant) is a
// finding. Hangs and memory growth are caught by the driver (fuzz.ts).

import { SETUP_HEADER_OFFSET, setupHeaderFields } from "../../src/boot/boot_params.ts";
import { BootImageError } from "../../src/boot/boot_image_error.ts";
import { parseBzImage, planLinuxBoot } from "../../src/boot/bzimage.ts";
import { parseElfKernel } from "../../src/boot/elf.ts";
import { checkGuestLayout } from "../../src/boot/layout.ts";
import { compactElf, extractVmlinux } from "../../src/boot/vmlinux.ts";
import { decompressXz, XzError } from "../../src/boot/xz.ts";
import { Bus } from "../../src/devices/bus.ts";
import { CmosRtc, I8042, registerLegacyDevices } from "../../src/devices/legacy.ts";
import { COM1_PORT, Uart16550 } from "../../src/devices/uart_16550.ts";
import { KvmError } from "../../src/errors.ts";
import { mutate, type Prng } from "./prng.ts";
import { tinyBzImage, tinyElf, tinyXz } from "./samples.ts";

/** A broken promise found by a target (never an allowed error). */
export class FuzzInvariantError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "FuzzInvariantError";
  }
}

function expect(condition: boolean, message: string): void {
  if (!condition) throw new FuzzInvariantError(message);
}

/** One fuzz target. */
export interface FuzzTarget {
  /** Its name on the command line. */
  name: string;
  /** The typed errors its module documents: ending in one of them is a valid result. */
  allowed: readonly (abstract new (...args: never[]) => Error)[];
  /** One iteration. */
  run(rng: Prng): void;
  /**
   * Releases what its iterations opened (a file, say), once `fuzzTarget` has
   * run its last iteration; the next iteration opens them again.
   */
  close?(): void;
}

const MiB = 1024 * 1024;
const HEADER_OFFSETS = Object.values(setupHeaderFields).map((f) => SETUP_HEADER_OFFSET + f.offset);
// e_phoff, e_phentsize, e_phnum, e_entry and every program header field of the tiny ELF.
const ELF_OFFSETS = [
  24,
  32,
  54,
  56,
  ...[0, 1].flatMap((i) => [0, 8, 16, 24, 32, 40].map((o) => 64 + i * 56 + o)),
];
const BZIMAGE = tinyBzImage();
const ELF = tinyElf();
const XZ = tinyXz();
const XZ_SAMPLES = [
  XZ,
  ...["randomNone", "textCrc64", "x86Crc32"].map((name) =>
    Deno.readFileSync(new URL(`../unit/data/${name}.xz`, import.meta.url))
  ),
];
// Allocated once per length: placement reads only the length.
const INITRD_LENGTHS = [1, 4095, 4096, 4097, MiB + 1, 30 * MiB, 62 * MiB, 63 * MiB + 4095];
const INITRDS = new Map<number, Uint8Array>();
const MEMORY_SIZES = [
  0,
  4096,
  1 * MiB,
  2 * MiB,
  16 * MiB,
  18 * MiB,
  64 * MiB,
  3072 * MiB + 2 * MiB,
];

function randomMemory(rng: Prng): number {
  return rng.chance(0.8) ? rng.pick(MEMORY_SIZES) : rng.below(256) * 2 * MiB + rng.below(3) * 4096;
}

function randomCmdline(rng: Prng): string {
  const length = rng.pick([0, 10, 255, 2047, 2048, 4096, 0x7fbff, 0x7fc00, MiB]);
  return "x".repeat(length);
}

/** A plan's promises: every region inside RAM and apart, the initrd below its limit. */
function checkPlan(plan: ReturnType<typeof planLinuxBoot>, initrdLength: number): void {
  checkGuestLayout(plan.regions, [
    { start: 0, end: 0xa0000 },
    { start: 0x100000, end: plan.lowMemorySize },
    { start: 2 ** 32, end: 2 ** 32 + plan.highMemorySize },
  ]);
  if (initrdLength > 0) {
    expect(plan.initrdAddress % 4096 === 0, "initrd not page aligned");
    expect(plan.initrdAddress >= plan.kernelEnd, "initrd below the kernel's end");
    expect(plan.initrdAddress + initrdLength <= plan.lowMemorySize, "initrd past low RAM");
  }
  expect(plan.zeroPage.length === 4096, "zero page size");
}

/** Every target, in the order `deno task fuzz` runs them. */
export const TARGETS: readonly FuzzTarget[] = [
  {
    name: "bzimage",
    allowed: [BootImageError],
    run(rng) {
      const image = rng.chance(0.05)
        ? rng.bytes(rng.below(2048))
        : mutate(rng, BZIMAGE, HEADER_OFFSETS);
      parseBzImage(image);
      const initrd = rng.chance(0.5) ? new Uint8Array(rng.below(4 * MiB)) : undefined;
      const plan = planLinuxBoot(image, {
        memorySize: randomMemory(rng),
        cmdline: randomCmdline(rng),
        initrd,
      });
      checkPlan(plan, initrd?.length ?? 0);
    },
  },
  {
    name: "vmlinux",
    allowed: [BootImageError],
    run(rng) {
      // The whole path of a host-decompressed boot: payload, xz, ELF, compaction, plan.
      const image = mutate(rng, BZIMAGE, [...HEADER_OFFSETS, 0x248, 0x24c]);
      const vmlinux = extractVmlinux(image);
      const compact = compactElf(vmlinux);
      const plan = planLinuxBoot(image, { memorySize: randomMemory(rng), vmlinux: compact });
      checkPlan(plan, 0);
    },
  },
  {
    name: "elf",
    allowed: [BootImageError],
    run(rng) {
      const image = mutate(rng, ELF, ELF_OFFSETS);
      const elf = parseElfKernel(image);
      expect(elf.segments.every((s) => s.bytes.length <= image.length), "segment past the file");
      const compact = compactElf(image, { inPlace: rng.chance(0.5) });
      expect(compact.length <= Math.max(image.length, 64 + 56 * 65535) + 16 * 65535, "grew");
      const plan = planLinuxBoot(compact, { memorySize: randomMemory(rng) });
      checkPlan(plan, 0);
    },
  },
  {
    name: "xz",
    allowed: [XzError],
    run(rng) {
      const sample = rng.pick(XZ_SAMPLES);
      // Bytes inside the compressed data (past the stream and block headers,
      // before the index): the CRCs of the headers still match, so the LZMA2
      // decoder itself meets the garbage.
      const inner = Array.from(
        { length: 16 },
        () => 24 + rng.below(Math.max(1, sample.length - 64)),
      );
      const input = rng.chance(0.05)
        ? rng.bytes(rng.below(512))
        : mutate(rng, sample, rng.chance(0.7) ? inner : []);
      const out = decompressXz(input, { maxOutput: 16 * MiB });
      expect(out.length <= 16 * MiB, "output past maxOutput");
    },
  },
  {
    name: "initrd",
    allowed: [BootImageError],
    run(rng) {
      // Placement only: a valid kernel, hostile sizes and limits.
      const image = tinyBzImage({
        initrdAddrMax: rng.interesting32(),
        initSize: rng.chance(0.5) ? rng.interesting32() : 0x1000000,
        cmdlineSize: rng.interesting32(),
      });
      const length = rng.pick(INITRD_LENGTHS);
      const initrd = INITRDS.get(length) ??
        INITRDS.set(length, new Uint8Array(length)).get(length)!;
      const plan = planLinuxBoot(image, {
        memorySize: randomMemory(rng),
        cmdline: randomCmdline(rng),
        initrd,
      });
      checkPlan(plan, length);
    },
  },
  {
    name: "uart",
    allowed: [],
    run(rng) {
      let level = false;
      const capacity = 1 + rng.below(64);
      const uart = new Uart16550({ inputCapacity: capacity, irq: (l) => level = l });
      for (let i = 0; i < 200; i++) {
        const offset = rng.below(9);
        const data = rng.bytes(rng.pick([1, 2, 4]));
        switch (rng.below(4)) {
          case 0:
            uart.write(offset, data);
            break;
          case 1: {
            uart.read(offset, data);
            expect(data.every((b, k) => k === 0 || b === 0), `read ${data} (8-bit registers)`);
            break;
          }
          case 2: {
            const bytes = rng.bytes(rng.below(100));
            const room = uart.inputRoom;
            const taken = uart.receive(bytes);
            expect(taken === Math.min(room, bytes.length), `took ${taken} of room ${room}`);
            break;
          }
          case 3:
            uart.sendBreak();
        }
        expect(uart.pendingInput <= capacity + 16, `holds ${uart.pendingInput} > ${capacity}+16`);
        expect(level === uart.irqLevel, "irq callback out of step");
      }
    },
  },
  {
    name: "i8042",
    allowed: [],
    run(rng) {
      const kbc = new I8042(() => {});
      for (let i = 0; i < 200; i++) {
        const offset = rng.pick([0, 4, rng.below(5)]);
        const data = rng.bytes(1);
        if (rng.chance(0.5)) kbc.write(offset, data);
        else kbc.read(offset, data);
      }
    },
  },
  {
    name: "cmos",
    allowed: [],
    run(rng) {
      const cmos = new CmosRtc(() => new Date(rng.below(2 ** 31) * 1000));
      for (let i = 0; i < 200; i++) {
        const data = rng.bytes(rng.pick([1, 2, 4]));
        if (rng.chance(0.5)) cmos.write(rng.below(2), data);
        else {
          cmos.read(rng.below(2), data);
          expect(data.every((b, k) => k === 0 || b === 0), `read ${data} (8-bit registers)`);
        }
      }
    },
  },
  {
    name: "bus",
    allowed: [KvmError],
    run(rng) {
      let reports = 0;
      const bus = new Bus({ space: "pio", onUnhandled: () => reports++ });
      registerLegacyDevices(bus, { onReset: () => {}, inKernelPit: rng.chance(0.5) });
      bus.insert(COM1_PORT, 8, new Uart16550());
      // A run area with guard bytes around the exit's data.
      const area = new Uint8Array(64).fill(0xa5);
      for (let i = 0; i < 50; i++) {
        const length = rng.below(33);
        const data = area.subarray(16, 16 + length);
        const size = rng.chance(0.9) ? rng.pick([1, 2, 4]) : rng.interesting32();
        const count = rng.chance(0.8) ? rng.below(10) : rng.interesting32();
        const port = rng.chance(0.8)
          ? rng.pick([0x60, 0x64, 0x70, 0x71, 0x80, 0xcf8, COM1_PORT + rng.below(8)])
          : rng.interesting32();
        try {
          bus.handlePio(rng.chance(0.5) ? "in" : "out", port, size, count, data);
        } catch (e) {
          if (!(e instanceof KvmError)) throw e;
        }
        for (let k = 0; k < 16; k++) {
          expect(area[k] === 0xa5 && area[48 + k] === 0xa5, "wrote outside the exit's data");
        }
        area.fill(0xa5, 16 + length, 48);
      }
      // The first 256 distinct ports, then the counts at powers of two (at most 9 more here).
      expect(reports <= 256 + 9, `${reports} unhandled reports`);
    },
  },
];
