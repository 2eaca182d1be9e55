/**
 * The ACPI power-management timer: a free-running 24-bit counter at
 * 3.579545 MHz, read with a 32-bit `in` from the port the FADT names in
 * `pm_tmr_blk`. Here it follows the host's monotonic clock.
 *
 * @example
 * ```ts
 * import { AcpiPmTimer } from "@deno-kvm/kvm/vmm";
 * const timer = new AcpiPmTimer();
 * const data = new Uint8Array(4);
 * timer.read(0, data); // the guest's inl from pm_tmr_blk
 * const ticks = new DataView(data.buffer).getUint32(0, true);
 * console.log(ticks < 1 << 24); // true
 * ```
 *
 * @module
 */

import { type BusDevice, storeLe } from "./bus_device.ts";

/** The PM timer's frequency in Hz. */
export const ACPI_PM_TIMER_HZ = 3_579_545;

/** The PM timer device: one 32-bit register (4 ports); reads give the counter, writes are ignored. */
export class AcpiPmTimer implements BusDevice {
  #start = performance.now();

  /** The counter, 24 bits of it: ticks of {@linkcode ACPI_PM_TIMER_HZ} since the device was made. */
  get ticks(): number {
    const ticks = Math.floor((performance.now() - this.#start) * (ACPI_PM_TIMER_HZ / 1000));
    return ticks % 0x1000000;
  }

  /** The counter's bytes from `offset` on (little-endian; a 32-bit read at 0 sees all of it). */
  read(offset: number, data: Uint8Array): void {
    storeLe(data, offset < 4 ? Math.floor(this.ticks / 2 ** (8 * offset)) : 0);
  }

  /** The timer is read-only. */
  write(): void {}
}
