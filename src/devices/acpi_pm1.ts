/**
 * The ACPI PM1a register blocks of QEMU's PIIX4 power management, as one
 * {@linkcode BusDevice} of 6 ports (the FADT's `pm1a_evt_blk`, 4 bytes, then
 * `pm1a_cnt_blk`, 2 bytes; `src/boot/acpi.ts` places them at 0x600):
 *
 * - offset 0, PM1 status: event flags (timer overflow, power button, RTC
 *   alarm, wake); writing a 1 clears a flag.
 * - offset 2, PM1 enable: which of those flags raise the SCI (and, for the
 *   RTC alarm, may wake a sleeping machine).
 * - offset 4, PM1 control: SCI_EN (reads 1: the machine starts in ACPI
 *   mode), SLP_TYP and the write-only SLP_EN. Writing SLP_EN asks the VMM to
 *   enter the sleep state SLP_TYP names. The values follow QEMU's DSDT
 *   (`\_S3` = 1, `\_S4` = 2, `\_S5` = 0): 0 powers off, 1 suspends to RAM
 *   (S3), 2 hibernates (S4: QEMU powers off too); 3-7 do nothing.
 *
 * The VMM does the sleeping: it gets {@linkcode AcpiPm1Options.onSleep} and,
 * when the machine wakes, calls {@linkcode AcpiPm1.wake} (which sets WAK_STS
 * and the waking event's flag, as the chipset does).
 *
 * @example
 * ```ts
 * import { AcpiPm1 } from "@deno-kvm/kvm/vmm";
 * const sleeps: string[] = [];
 * const pm = new AcpiPm1({ onSleep: (state) => sleeps.push(state) });
 * pm.write(4, new Uint8Array([0x00, 0x24])); // SLP_TYP 1 | SLP_EN
 * console.log(sleeps); // [ "S3" ]
 * ```
 *
 * @module
 */

import type { BusDevice } from "./bus_device.ts";

/** PM1 status/enable bits (ACPI 4.8.3.1). */
export const Pm1Event = {
  /** The PM timer's bit 23 toggled. */
  TIMER: 1 << 0,
  /** The global lock was released. */
  GLOBAL: 1 << 5,
  /** The power button was pressed. */
  POWER_BUTTON: 1 << 8,
  /** The sleep button was pressed. */
  SLEEP_BUTTON: 1 << 9,
  /** The RTC alarm fired. */
  RTC: 1 << 10,
  /** The machine woke from a sleep state (status only). */
  WAKE: 1 << 15,
} as const;

/** PM1 control bits. */
const CNT_SCI_EN = 1 << 0;
const CNT_SLP_TYP_SHIFT = 10;
const CNT_SLP_TYP_MASK = 7 << CNT_SLP_TYP_SHIFT;
const CNT_SLP_EN = 1 << 13;
/** Status bits the hardware can set (the rest read 0). */
const STATUS_BITS = Pm1Event.TIMER | Pm1Event.GLOBAL | Pm1Event.POWER_BUTTON |
  Pm1Event.SLEEP_BUTTON | Pm1Event.RTC | Pm1Event.WAKE;
/** Enable bits that exist (WAK has no enable). */
const ENABLE_BITS = STATUS_BITS & ~Pm1Event.WAKE;

/** The sleep states a guest can ask for. */
export type AcpiSleepState = "S3" | "S4" | "S5";

/** Options of {@linkcode AcpiPm1}. */
export interface AcpiPm1Options {
  /**
   * The guest set SLP_EN: it asks for `state` (with `slpTyp`, the raw field).
   * Called on the vCPU's thread, during the port write.
   */
  onSleep: (state: AcpiSleepState, slpTyp: number) => void;
  /** Drives the SCI line (the FADT's `sci_int`): raised while an enabled event is pending. */
  sci?: (level: boolean) => void;
}

/** The PM1a event and control registers. */
export class AcpiPm1 implements BusDevice {
  #status = 0;
  #enable = 0;
  #control = CNT_SCI_EN;
  #sciLevel = false;
  #onSleep: (state: AcpiSleepState, slpTyp: number) => void;
  #sci?: (level: boolean) => void;

  /** Creates the registers: no event pending or enabled, SCI_EN set. */
  constructor(options: AcpiPm1Options) {
    this.#onSleep = options.onSleep;
    this.#sci = options.sci;
  }

  /** PM1 status. */
  get status(): number {
    return this.#status;
  }

  /** PM1 enable. */
  get enable(): number {
    return this.#enable;
  }

  /** PM1 control as it reads (SLP_EN always 0). */
  get control(): number {
    return this.#control;
  }

  /** Whether the guest enabled `event` (a {@linkcode Pm1Event} bit) as a wake or SCI source. */
  enabled(event: number): boolean {
    return (this.#enable & event) !== 0;
  }

  /** Sets status flags (`Pm1Event` bits), e.g. when the RTC alarm fires; may raise the SCI. */
  raise(events: number): void {
    this.#status |= events & STATUS_BITS;
    this.#updateSci();
  }

  /**
   * The machine woke from a sleep state because of `event` (a
   * {@linkcode Pm1Event} bit, or 0 when none is named): sets WAK_STS and the
   * event's flag, clears SLP_TYP.
   */
  wake(event = 0): void {
    this.#control &= ~CNT_SLP_TYP_MASK;
    this.raise(Pm1Event.WAKE | event);
  }

  /** Reads the 6 bytes of status, enable and control. */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const reg = at < 2 ? this.#status : at < 4 ? this.#enable : at < 6 ? this.#control : 0;
      data[i] = (reg >> ((at & 1) * 8)) & 0xff;
    }
  }

  /**
   * Writes status (1s clear flags), enable, or control (SLP_EN: a sleep
   * request; a byte write to control's high byte sets SLP_TYP/SLP_EN alone).
   */
  write(offset: number, data: Uint8Array): void {
    let sleep = -1;
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const byte = data[i];
      const shift = (at & 1) * 8;
      if (at < 2) {
        this.#status &= ~(byte << shift);
      } else if (at < 4) {
        this.#enable = ((this.#enable & ~(0xff << shift)) | (byte << shift)) & ENABLE_BITS;
      } else if (at < 6) {
        const value = (this.#control & ~(0xff << shift)) | (byte << shift);
        if (value & CNT_SLP_EN) sleep = (value & CNT_SLP_TYP_MASK) >> CNT_SLP_TYP_SHIFT;
        // SLP_EN is write-only; SCI_EN stays set (there is no legacy mode to return to).
        this.#control = (value & ~CNT_SLP_EN) | CNT_SCI_EN;
      }
    }
    this.#updateSci();
    // SLP_TYP values the DSDT does not name (3-7) do nothing, as in QEMU.
    if (sleep >= 0 && sleep <= 2) {
      this.#onSleep(sleep === 1 ? "S3" : sleep === 2 ? "S4" : "S5", sleep);
    }
  }

  #updateSci(): void {
    const level = (this.#status & this.#enable) !== 0;
    if (level !== this.#sciLevel) {
      this.#sciLevel = level;
      this.#sci?.(level);
    }
  }
}
