/**
 * QEMU's `pc-testdev`, the test device kvm-unit-tests' `x86/run` adds to
 * every machine, as two {@linkcode BusDevice}s:
 *
 * - {@linkcode PcTestdevIrq}, 24 ports at {@linkcode PC_TESTDEV_IRQ_PORT}
 *   (0x2000): a write to port 0x2000 + n sets ISA IRQ line n to the
 *   written value's truth (non-zero raises it, zero lowers it). `realmode`
 *   raises IRQ 11 this way (`test_sti_inhibit`), `ioapic` drives its pins.
 * - {@linkcode PcTestdevPort}, 4 ports at {@linkcode PC_TESTDEV_PORT} (0xe0):
 *   a scratch register that reads back what was last written (`emulator`'s
 *   string I/O checks).
 * - {@linkcode PcTestdevIomem}, 64 KiB of MMIO at
 *   {@linkcode PC_TESTDEV_IOMEM_ADDRESS} (0xff000000) that behaves as memory:
 *   every access exits to the VMM, so KVM's instruction emulator runs on it
 *   (`lam`, `emulator`: `IORAM_BASE_PHYS`).
 *
 * @example
 * ```ts
 * import { PcTestdevIrq } from "@deno-kvm/kvm/vmm";
 * const lines: string[] = [];
 * const dev = new PcTestdevIrq((irq, level) => lines.push(`${irq}=${level}`));
 * dev.write(11, new Uint8Array([1, 0, 0, 0]));
 * dev.write(11, new Uint8Array([0, 0, 0, 0]));
 * console.log(lines.join(" ")); // 11=true 11=false
 * ```
 *
 * @module
 */

import type { BusDevice } from "./bus_device.ts";

/** The first port of the IRQ lines (port 0x2000 + n drives IRQ n). */
export const PC_TESTDEV_IRQ_PORT = 0x2000;
/** How many IRQ lines the device drives (its port count): the IOAPIC's 24 pins. */
export const PC_TESTDEV_IRQ_LINES = 24;
/** The scratch register's port. */
export const PC_TESTDEV_PORT = 0xe0;
/** The scratch register's width in ports. */
export const PC_TESTDEV_PORT_SIZE = 4;
/** Guest-physical address of the MMIO memory (in the 32-bit hole, below the BIOS). */
export const PC_TESTDEV_IOMEM_ADDRESS = 0xff000000;
/** Its size in bytes. */
export const PC_TESTDEV_IOMEM_SIZE = 0x10000;

/** The IRQ-line part of `pc-testdev`: writes drive ISA IRQ lines, reads give 0. */
export class PcTestdevIrq implements BusDevice {
  #setIrq: (irq: number, level: boolean) => void;

  /**
   * Creates the device.
   * @param setIrq drives one interrupt line (the VMM's `Vm.setIrqLine`)
   */
  constructor(setIrq: (irq: number, level: boolean) => void) {
    this.#setIrq = setIrq;
  }

  /** Reads give 0 (the lines are write-only, as in QEMU). */
  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  /** Any non-zero byte raises line `offset`, all-zero lowers it. */
  write(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset >= PC_TESTDEV_IRQ_LINES) return;
    let level = false;
    for (let i = 0; i < data.length; i++) if (data[i] !== 0) level = true;
    this.#setIrq(offset, level);
  }
}

/** The scratch-register part of `pc-testdev`: 4 bytes that read back what was written. */
export class PcTestdevPort implements BusDevice {
  #bytes = new Uint8Array(PC_TESTDEV_PORT_SIZE);

  /** Reads the register's bytes from `offset` (bytes past its end read as 0). */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at < PC_TESTDEV_PORT_SIZE ? this.#bytes[at] : 0;
    }
  }

  /** Stores `data` at `offset` (bytes past the register's end are dropped). */
  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length && offset + i < PC_TESTDEV_PORT_SIZE; i++) {
      this.#bytes[offset + i] = data[i];
    }
  }
}

/** The MMIO part of `pc-testdev`: 64 KiB that read back what was written, zero at first. */
export class PcTestdevIomem implements BusDevice {
  #bytes = new Uint8Array(PC_TESTDEV_IOMEM_SIZE);

  /** Copies the bytes at `offset` (bytes past the end read as 0). */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at < PC_TESTDEV_IOMEM_SIZE ? this.#bytes[at] : 0;
    }
  }

  /** Stores `data` at `offset` (bytes past the end are dropped). */
  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length && offset + i < PC_TESTDEV_IOMEM_SIZE; i++) {
      this.#bytes[offset + i] = data[i];
    }
  }
}
