/**
 * The one guest layout check of the boot path: every region the loader
 * writes (zero page, command line, page tables, MP table, kernel segments,
 * initrd, ...) lies inside guest RAM and no two overlap. The loaders take
 * sizes from files (a setup header's `cmdline_size`, an ELF's `p_memsz`, an
 * initrd's length), so nothing is written before the whole layout passes.
 *
 * @module
 */

import { Errno } from "../errors.ts";
import { hex } from "../kvm/constants.ts";
import { BootImageError } from "./boot_image_error.ts";

/** One range of guest physical memory the boot path writes or reserves. */
export interface GuestRegion {
  /** What it holds, for messages: `"command line"`, `"kernel segment 2"`. */
  readonly name: string;
  /** First guest physical address. */
  readonly address: number;
  /** Length in bytes (an empty region is ignored). */
  readonly size: number;
}

/** A range of guest RAM: `[start, end)`. */
export interface RamRange {
  /** First address. */
  readonly start: number;
  /** First address past the range. */
  readonly end: number;
}

function span(r: GuestRegion): string {
  return `${r.name} (${hex(r.address)}..${hex(r.address + r.size)})`;
}

/**
 * Checks that every region lies inside one of the `ram` ranges and that no
 * two regions overlap. Throws a {@linkcode BootImageError} (`"bad-layout"`,
 * `ENOMEM` for a region outside RAM, `EINVAL` for an overlap or a region whose
 * address or size is not a non-negative safe integer) naming the regions.
 *
 * @example
 * ```ts
 * import { checkGuestLayout } from "@deno-kvm/kvm/vmm";
 * const ram = [{ start: 0, end: 0x9fc00 }, { start: 0x100000, end: 0x4000000 }];
 * try {
 *   checkGuestLayout([
 *     { name: "command line", address: 0x20000, size: 0x100000 },
 *     { name: "MP table", address: 0x9fc00, size: 0x400 },
 *   ], ram);
 * } catch (e) {
 *   console.log((e as Error).message); // ... command line (0x20000..0x120000) is outside guest RAM ...
 * }
 * ```
 */
export function checkGuestLayout(
  regions: readonly GuestRegion[],
  ram: readonly RamRange[],
): void {
  const used: GuestRegion[] = [];
  for (const r of regions) {
    if (
      !Number.isSafeInteger(r.address) || !Number.isSafeInteger(r.size) || r.address < 0 ||
      r.size < 0 || !Number.isSafeInteger(r.address + r.size)
    ) {
      throw new BootImageError(
        "bad-layout",
        Errno.EINVAL,
        `${r.name}: address ${r.address} and size ${r.size} are not a valid guest range`,
      );
    }
    if (r.size === 0) continue;
    if (!ram.some((m) => r.address >= m.start && r.address + r.size <= m.end)) {
      throw new BootImageError(
        "bad-layout",
        Errno.ENOMEM,
        `${span(r)} is outside guest RAM (${
          ram.map((m) => `${hex(m.start)}..${hex(m.end)}`).join(", ")
        })`,
      );
    }
    used.push(r);
  }
  used.sort((a, b) => a.address - b.address);
  for (let i = 1; i < used.length; i++) {
    const before = used[i - 1];
    if (before.address + before.size > used[i].address) {
      throw new BootImageError(
        "bad-layout",
        Errno.EINVAL,
        `${span(before)} overlaps ${span(used[i])}`,
      );
    }
  }
}
