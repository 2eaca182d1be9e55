/**
 * The ACPI power-management timer: a free-running 24-bit counter at
 * 3.579545 MHz, read with a 32-bit `in` from the port the FADT names in
 * `pm_tmr_blk`. Here it follows the host's monotonic clock.
 *
 * @example
 * ```ts
 * import { AcpiPmTimer } from "@deno-kvm/kvm/vmm";
 * const timer = new AcpiPmTimer();
 * const a = timer.portRead();
 * console.log(a >= 0 && a < 1 << 24); // true
 * ```
 *
 * @module
 */

import type { PortDevice } from "./io_bus.ts";

/** The PM timer's frequency in Hz. */
export const ACPI_PM_TIMER_HZ = 3_579_545;

/** The PM timer device (4 ports; reads give the counter, writes are ignored). */
export class AcpiPmTimer implements PortDevice {
  #start = performance.now();

  /** The counter's 24 bits (reads of any size see its low bytes). */
  portRead(): number {
    const ticks = Math.floor((performance.now() - this.#start) * (ACPI_PM_TIMER_HZ / 1000));
    return ticks % 0x1000000;
  }

  /** The timer is read-only. */
  portWrite(): void {}
}
