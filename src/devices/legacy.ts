/**
 * The little PC devices a booting Linux kernel touches besides the UART: the
 * i8042 keyboard controller (for its reset line), the CMOS RTC, the PCI
 * configuration ports (answered as "no PCI"), and ports that only need a
 * quiet answer. Each is a {@linkcode BusDevice}: it sees offsets from where
 * it is inserted.
 *
 * @module
 */

import { type Bus, deviceWindow } from "./bus.ts";
import { type BusDevice, storeLe } from "./bus_device.ts";

/** A range that drops writes and reads as `value` (all-ones by default) at every offset. */
export class QuietPorts implements BusDevice {
  #value: number | undefined;
  /**
   * Creates the device.
   * @param value what reads return (little-endian, as wide as the access); omitted: all-ones
   */
  constructor(value?: number) {
    this.#value = value;
  }
  /** Gives the fixed value. */
  read(_offset: number, data: Uint8Array): void {
    if (this.#value === undefined) data.fill(0xff);
    else storeLe(data, this.#value);
  }
  /** Drops the write. */
  write(): void {}
}

/** i8042 status bits. */
const STATUS_OBF = 0x01; // output buffer full: data for the CPU at 0x60
const STATUS_SYS = 0x04; // system flag: self test passed
const STATUS_CMD = 0x08; // last write was to the command port

/** i8042 controller commands understood. */
const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_AUX_DISABLE = 0xa7;
const CMD_AUX_ENABLE = 0xa8;
const CMD_AUX_TEST = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_KBD_DISABLE = 0xad;
const CMD_KBD_ENABLE = 0xae;
const CMD_AUX_LOOP = 0xd3;
const CMD_PULSE_RESET = 0xfe;

/** The i8042's data register, as an offset from its base (port 0x60). */
export const I8042_DATA = 0;
/** The i8042's status (read) and command (write) register: offset 4 (port 0x64). */
export const I8042_COMMAND = 4;

/**
 * The i8042 keyboard controller, reduced to what a guest kernel needs: its
 * self test, the command byte, and the CPU reset line (command `0xfe` on port
 * 0x64, Linux's `reboot=k`, its default on a machine without ACPI). No
 * keyboard or mouse is attached: the AUX port reports a stuck clock, so
 * Linux gives up on it without waiting for timeouts, and keyboard commands
 * get no answer.
 *
 * Its registers are at offsets {@linkcode I8042_DATA} (0) and
 * {@linkcode I8042_COMMAND} (4), as at 0x60 and 0x64; offsets between read
 * as all-ones. On a PC, port 0x61 between them belongs to the PIT's speaker
 * gate: {@linkcode registerLegacyDevices} inserts the two registers as two
 * one-port ranges (see `deviceWindow`).
 *
 * @example
 * ```ts
 * import { I8042, I8042_COMMAND } from "@deno-kvm/kvm/vmm";
 * let reset = false;
 * const kbc = new I8042(() => reset = true);
 * kbc.write(I8042_COMMAND, new Uint8Array([0xfe])); // pulse the reset line
 * console.log(reset); // true
 * ```
 */
export class I8042 implements BusDevice {
  #onReset: () => void;
  #ctr = 0x61; // keyboard interrupt on, translation on, AUX disabled (as firmware leaves it)
  #status = STATUS_SYS;
  #output = 0;
  #pendingCommand = 0; // a command waiting for its data byte at 0x60

  /**
   * Creates the controller, self test passed, nothing in its buffers.
   * @param onReset called when the guest pulses the reset line
   */
  constructor(onReset: () => void) {
    this.#onReset = onReset;
  }

  #reply(byte: number): void {
    this.#output = byte;
    this.#status |= STATUS_OBF;
  }

  /** Offset 4 (0x64) reads the status, offset 0 (0x60) the output buffer. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === I8042_COMMAND) {
      data[0] = this.#status;
    } else if (offset === I8042_DATA) {
      this.#status &= ~STATUS_OBF;
      data[0] = this.#output;
    } else {
      data.fill(0xff);
    }
  }

  /** Offset 4 (0x64) takes commands, offset 0 (0x60) their data (or bytes for the keyboard). */
  write(offset: number, data: Uint8Array): void {
    const value = data[0];
    if (offset === I8042_COMMAND) {
      this.#status |= STATUS_CMD;
      this.#pendingCommand = 0;
      switch (value) {
        case CMD_READ_CTR:
          this.#reply(this.#ctr);
          break;
        case CMD_WRITE_CTR:
        case CMD_AUX_LOOP:
          this.#pendingCommand = value;
          break;
        case CMD_SELF_TEST:
          this.#reply(0x55);
          break;
        case CMD_KBD_TEST:
          this.#reply(0x00);
          break;
        case CMD_AUX_TEST:
          this.#reply(0x01); // clock line stuck low: no AUX port
          break;
        case CMD_AUX_DISABLE:
          this.#ctr |= 0x20;
          break;
        case CMD_AUX_ENABLE:
          this.#ctr &= ~0x20;
          break;
        case CMD_KBD_DISABLE:
          this.#ctr |= 0x10;
          break;
        case CMD_KBD_ENABLE:
          this.#ctr &= ~0x10;
          break;
        case CMD_PULSE_RESET:
          this.#onReset();
          break;
        default:
          // Output port pulses 0xf0-0xff: bit 0 clear pulses the reset line.
          if (value >= 0xf0 && (value & 1) === 0) this.#onReset();
      }
      return;
    }
    if (offset !== I8042_DATA) return;
    this.#status &= ~STATUS_CMD;
    const command = this.#pendingCommand;
    this.#pendingCommand = 0;
    if (command === CMD_WRITE_CTR) this.#ctr = value;
    // AUX loopback without an AUX port: the byte does not come back (AUX data flag clear).
    else if (command === CMD_AUX_LOOP) this.#reply(0x00);
    // Bytes for the keyboard itself: no keyboard, no answer.
  }
}

/** Binary-coded decimal of 0..99. */
function bcd(n: number): number {
  return ((n / 10) | 0) * 16 + (n % 10);
}

/**
 * The CMOS RTC and NVRAM at offsets 0 (index, port 0x70) and 1 (data, port
 * 0x71): the clock reads the host's UTC time in BCD, 24-hour mode; status D
 * reports a valid battery; other NVRAM bytes are plain storage.
 */
export class CmosRtc implements BusDevice {
  #index = 0;
  #ram = new Uint8Array(128);
  #now: () => Date;

  /**
   * Creates the RTC with valid status registers.
   * @param now the clock source (default: the host's clock)
   */
  constructor(now: () => Date = () => new Date()) {
    this.#now = now;
    this.#ram[0x0a] = 0x26; // status A: 32.768 kHz time base, 1024 Hz rate, no update in progress
    this.#ram[0x0b] = 0x02; // status B: 24-hour, BCD, no interrupts
    this.#ram[0x0d] = 0x80; // status D: valid RAM and time
  }

  /** Offset 0 (0x70) reads the index, offset 1 (0x71) the selected register. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = offset === 0 ? this.#index : this.#register();
  }

  #register(): number {
    const t = this.#now();
    switch (this.#index) {
      case 0x0a:
        // UIP: set in each second's last 2 ms (the 244 µs before the update and the update
        // itself), so a guest can wait for a second to begin (kvm-unit-tests' s3 does).
        return (this.#ram[0x0a] & 0x7f) | (t.getTime() % 1000 >= 998 ? 0x80 : 0);
      case 0x00:
        return bcd(t.getUTCSeconds());
      case 0x02:
        return bcd(t.getUTCMinutes());
      case 0x04:
        return bcd(t.getUTCHours());
      case 0x06:
        return t.getUTCDay() + 1;
      case 0x07:
        return bcd(t.getUTCDate());
      case 0x08:
        return bcd(t.getUTCMonth() + 1);
      case 0x09:
        return bcd(t.getUTCFullYear() % 100);
      case 0x32:
        return bcd(Math.floor(t.getUTCFullYear() / 100));
      case 0x0c:
        return 0; // status C: no interrupt flags
      default:
        return this.#ram[this.#index];
    }
  }

  /** Offset 0 (0x70) selects a register (bit 7 is the NMI mask), offset 1 (0x71) writes it. */
  write(offset: number, data: Uint8Array): void {
    const value = data[0];
    if (offset === 0) {
      this.#index = value & 0x7f;
      return;
    }
    // The clock registers and status C/D are not writable storage here; the alarm (1, 3, 5) is.
    const i = this.#index;
    if (i >= 0x0e || i === 0x0a || i === 0x0b || i === 0x01 || i === 0x03 || i === 0x05) {
      this.#ram[i] = value;
    }
  }

  /** The stored value of register `index`: the alarm (1, 3, 5), status B (0x0b), NVRAM. */
  register(index: number): number {
    return this.#ram[index & 0x7f];
  }
}

/** Options of {@linkcode registerLegacyDevices}. */
export interface LegacyDevicesOptions {
  /** Called when the guest resets the machine through the keyboard controller. */
  onReset: () => void;
  /** Whether the in-kernel PIT handles 0x40-0x43 and 0x61 (default true: not registered here). */
  inKernelPit?: boolean;
}

/** The devices {@linkcode registerLegacyDevices} put on the bus. */
export interface LegacyDevices {
  /** The keyboard controller on 0x60 and 0x64. */
  i8042: I8042;
  /** The CMOS RTC on 0x70-0x71. */
  cmos: CmosRtc;
}

/**
 * Puts the devices a booting Linux expects on a PC onto the port bus `bus`: the i8042
 * (0x60, 0x64), the CMOS RTC (0x70-0x71), and quiet answers on the POST code
 * port 0x80, the 0xed delay port, port 0x92 (A20 gate), the PCI
 * configuration mechanism (0xcf8-0xcff, all-ones: no PCI bus), the second
 * PIC's and the DMA controllers' leftovers, and, without an in-kernel PIT,
 * 0x40-0x43 and 0x61.
 */
export function registerLegacyDevices(bus: Bus, options: LegacyDevicesOptions): LegacyDevices {
  const i8042 = new I8042(options.onReset);
  const cmos = new CmosRtc();
  bus.insert(0x60, 1, i8042);
  // 0x61 between the two registers is the PIT's (in the kernel, or quiet below).
  bus.insert(0x64, 1, deviceWindow(i8042, I8042_COMMAND));
  bus.insert(0x70, 2, cmos);
  bus.insert(0x80, 1, new QuietPorts(0)); // POST codes / I/O delay
  bus.insert(0xed, 1, new QuietPorts(0)); // alternative I/O delay port
  bus.insert(0x92, 1, new QuietPorts(0x02)); // system control port A: A20 on
  bus.insert(0xcf8, 8, new QuietPorts()); // PCI config mechanism #1: no host bridge
  bus.insert(0x00, 0x10, new QuietPorts()); // DMA controller 1
  bus.insert(0xc0, 0x20, new QuietPorts()); // DMA controller 2
  bus.insert(0x81, 0xf, new QuietPorts()); // DMA page registers
  if (options.inKernelPit === false) {
    bus.insert(0x40, 4, new QuietPorts(0));
    bus.insert(0x61, 1, new QuietPorts(0x20));
  }
  return { i8042, cmos };
}
