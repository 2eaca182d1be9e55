/**
 * A 16550A UART (the PC's COM1 at 0x3f8, IRQ 4): what Linux's 8250 driver
 * needs to find a 16550A with FIFOs and to run a console on it, interrupt
 * driven or polled.
 *
 * Transmission is instant: a byte written to THR goes to the output sink at
 * once, so THR and the transmitter are always empty again when the guest
 * looks. Received bytes queue on the host side and enter the 16-byte FIFO
 * (1 byte with FIFOs off) as the guest reads them out. The host-side queue
 * has a fixed capacity ({@linkcode UART_INPUT_CAPACITY} by default): a guest
 * that never reads cannot make the host hold more, and `receive` says how
 * many bytes it took so the caller can offer the rest later (backpressure).
 *
 * The interrupt output is a level: the device calls `irq(level)` whenever it
 * changes. Give it `(level) => vm.setIrqLine(4, level)`.
 *
 * The model sees only register offsets 0..7 ({@linkcode BusDevice}): insert
 * it on a port bus at 0x3f8 (COM1), 0x2f8 (COM2), or on an MMIO bus anywhere.
 *
 * @module
 */

import type { BusDevice } from "./bus_device.ts";

/** COM1's base port. */
export const COM1_PORT = 0x3f8;
/** COM1's ISA interrupt. */
export const COM1_IRQ = 4;

// Register offsets.
const RBR_THR_DLL = 0;
const IER_DLM = 1;
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

// IER bits.
const IER_RDI = 0x01; // received data available
const IER_THRI = 0x02; // transmitter holding register empty
const IER_RLSI = 0x04; // receiver line status
const IER_MSI = 0x08; // modem status

// IIR values (bit 0 set: nothing pending; bits 6-7: FIFOs enabled).
const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_TIMEOUT = 0x0c;
const IIR_FIFO_ENABLED = 0xc0;

// FCR bits.
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const FCR_TRIGGER_SHIFT = 6;

const LCR_DLAB = 0x80;

// MCR bits.
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;

// LSR bits.
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_BI = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

// MSR bits.
const MSR_DCTS = 0x01;
const MSR_DDSR = 0x02;
const MSR_TERI = 0x04;
const MSR_DDCD = 0x08;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const MSR_DELTAS = MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD;

const FIFO_SIZE = 16;
/** Default capacity of the host-side input queue, in bytes (besides the 16-byte FIFO). */
export const UART_INPUT_CAPACITY = 64 * 1024;
const TRIGGER_LEVELS = [1, 4, 8, 14];

/** Options of {@linkcode Uart16550}. */
export interface Uart16550Options {
  /** Receives each transmitted byte (not called in loopback mode). */
  output?: (byte: number) => void;
  /** Called with the new level (true = asserted) each time the interrupt output changes. */
  irq?: (level: boolean) => void;
  /**
   * Bytes the host-side input queue holds besides the FIFO (default
   * {@linkcode UART_INPUT_CAPACITY}, at least 1). {@linkcode Uart16550.receive}
   * takes no more than the room left.
   */
  inputCapacity?: number;
}

/**
 * A 16550A UART: eight byte-wide registers at offsets 0..7 of its range.
 *
 * @example
 * ```ts
 * import { Bus, COM1_PORT, Uart16550 } from "@deno-kvm/kvm/vmm";
 * let text = "";
 * const uart = new Uart16550({ output: (b) => text += String.fromCharCode(b) });
 * const bus = new Bus({ space: "pio" });
 * bus.insert(COM1_PORT, 8, uart);
 * const data = new Uint8Array(1);
 * data[0] = 0x68;
 * bus.write(COM1_PORT, data); // THR
 * uart.receive(new TextEncoder().encode("x"));
 * bus.read(COM1_PORT + 5, data); // LSR: data ready, transmitter empty
 * console.log(text, data[0].toString(16)); // h 61
 * ```
 */
export class Uart16550 implements BusDevice {
  #output: (byte: number) => void;
  #irq: (level: boolean) => void;
  #dll = 0x0c; // 9600 baud, as a BIOS leaves it
  #dlm = 0;
  #ier = 0;
  #lcr = 0x03; // 8N1
  #mcr = MCR_OUT2;
  #lsrErrors = 0; // OE / BI, cleared by reading LSR
  #msr = MSR_DCD | MSR_DSR | MSR_CTS;
  #scr = 0;
  #fcr = 0;
  #thrPending = false; // THR-empty interrupt condition, cleared by IIR read or THR write
  #rx = new Uint8Array(FIFO_SIZE);
  #rxHead = 0;
  #rxCount = 0;
  #queue: Uint8Array; // ring of host bytes waiting for FIFO space, fixed size
  #queueHead = 0;
  #queueCount = 0;
  #level = false;

  /** Creates the UART in its reset state. */
  constructor(options: Uart16550Options = {}) {
    this.#output = options.output ?? (() => {});
    this.#irq = options.irq ?? (() => {});
    const capacity = options.inputCapacity ?? UART_INPUT_CAPACITY;
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new RangeError(`Uart16550: inputCapacity ${capacity} is not a positive integer`);
    }
    this.#queue = new Uint8Array(capacity);
  }

  /** Capacity of the host-side input queue in bytes (the FIFO holds 16 more). */
  get inputCapacity(): number {
    return this.#queue.length;
  }

  /** Whether the interrupt output is asserted. */
  get irqLevel(): boolean {
    return this.#level;
  }

  /** Bytes received from the host that the guest has not read yet (FIFO plus queue). */
  get pendingInput(): number {
    return this.#rxCount + this.#queueCount;
  }

  /** Bytes {@linkcode receive} would take now: the room left in the FIFO and the queue. */
  get inputRoom(): number {
    return Math.max(0, this.#capacity() - this.#rxCount) + this.#queue.length - this.#queueCount;
  }

  /**
   * Queues bytes for the guest to read (keyboard input, a paste) and returns
   * how many it took: all of them while there is room, fewer (maybe 0) when the
   * FIFO and the input queue ({@linkcode inputCapacity}) are full. Offer the
   * rest again later, after the guest has read some (backpressure: memory
   * stays bounded however much is offered and however little the guest reads).
   */
  receive(bytes: Uint8Array): number {
    const queue = this.#queue;
    let taken = 0;
    // Straight into the FIFO while it has room and nothing is queued before.
    while (taken < bytes.length && this.#queueCount === 0 && this.#rxCount < this.#capacity()) {
      this.#push(bytes[taken++]);
    }
    while (taken < bytes.length && this.#queueCount < queue.length) {
      queue[(this.#queueHead + this.#queueCount) % queue.length] = bytes[taken++];
      this.#queueCount++;
    }
    if (taken > 0) this.#update();
    return taken;
  }

  #fifoEnabled(): boolean {
    return (this.#fcr & FCR_ENABLE) !== 0;
  }

  #capacity(): number {
    return this.#fifoEnabled() ? FIFO_SIZE : 1;
  }

  #push(byte: number): boolean {
    if (this.#rxCount >= this.#capacity()) {
      this.#lsrErrors |= LSR_OE;
      return false;
    }
    this.#rx[(this.#rxHead + this.#rxCount) % FIFO_SIZE] = byte;
    this.#rxCount++;
    return true;
  }

  /** Moves queued host bytes into the FIFO while it has room. */
  #refill(): void {
    const queue = this.#queue;
    while (this.#queueCount > 0 && this.#rxCount < this.#capacity()) {
      this.#push(queue[this.#queueHead]);
      this.#queueHead = (this.#queueHead + 1) % queue.length;
      this.#queueCount--;
    }
  }

  #pop(): number {
    if (this.#rxCount === 0) return 0;
    const byte = this.#rx[this.#rxHead];
    this.#rxHead = (this.#rxHead + 1) % FIFO_SIZE;
    this.#rxCount--;
    this.#refill();
    return byte;
  }

  /** The IIR value: the highest-priority pending, enabled interrupt. */
  #iir(): number {
    const fifo = this.#fifoEnabled() ? IIR_FIFO_ENABLED : 0;
    if ((this.#ier & IER_RLSI) && this.#lsrErrors) return IIR_RLSI | fifo;
    if ((this.#ier & IER_RDI) && this.#rxCount > 0) {
      // Below the trigger level, a FIFO reports a character timeout instead.
      const trigger = this.#fifoEnabled() ? TRIGGER_LEVELS[this.#fcr >> FCR_TRIGGER_SHIFT] : 1;
      return (this.#rxCount >= trigger ? IIR_RDI : IIR_TIMEOUT) | fifo;
    }
    if ((this.#ier & IER_THRI) && this.#thrPending) return IIR_THRI | fifo;
    if ((this.#ier & IER_MSI) && (this.#msr & MSR_DELTAS)) return IIR_MSI | fifo;
    return IIR_NO_INT | fifo;
  }

  #update(): void {
    const level = (this.#iir() & IIR_NO_INT) === 0;
    if (level !== this.#level) {
      this.#level = level;
      this.#irq(level);
    }
  }

  /** The modem status inputs as loopback wires them: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD. */
  #loopbackMsr(mcr: number): number {
    return ((mcr & MCR_DTR) ? MSR_DSR : 0) | ((mcr & MCR_RTS) ? MSR_CTS : 0) |
      ((mcr & MCR_OUT1) ? MSR_RI : 0) | ((mcr & MCR_OUT2) ? MSR_DCD : 0);
  }

  /** Sets the status inputs, latching the delta bits (TERI only on RI's falling edge). */
  #setMsrInputs(inputs: number): void {
    const old = this.#msr;
    let deltas = old & MSR_DELTAS;
    if ((old ^ inputs) & MSR_CTS) deltas |= MSR_DCTS;
    if ((old ^ inputs) & MSR_DSR) deltas |= MSR_DDSR;
    if ((old ^ inputs) & MSR_DCD) deltas |= MSR_DDCD;
    if ((old & MSR_RI) && !(inputs & MSR_RI)) deltas |= MSR_TERI;
    this.#msr = (inputs & 0xf0) | deltas;
  }

  /**
   * Reads the register at `offset` into `data[0]`; wider reads see it in
   * their low byte, zeroes above (an 8-bit device).
   */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.#readRegister(offset);
  }

  #readRegister(offset: number): number {
    const dlab = (this.#lcr & LCR_DLAB) !== 0;
    let value: number;
    switch (offset) {
      case RBR_THR_DLL:
        value = dlab ? this.#dll : this.#pop();
        break;
      case IER_DLM:
        value = dlab ? this.#dlm : this.#ier;
        break;
      case IIR_FCR:
        value = this.#iir();
        // Reading IIR while it reports THR empty acknowledges that interrupt.
        if ((value & 0x0f) === IIR_THRI) this.#thrPending = false;
        break;
      case LCR:
        value = this.#lcr;
        break;
      case MCR:
        value = this.#mcr;
        break;
      case LSR:
        value = LSR_THRE | LSR_TEMT | this.#lsrErrors | (this.#rxCount > 0 ? LSR_DR : 0);
        this.#lsrErrors = 0;
        break;
      case MSR:
        value = this.#msr;
        this.#msr &= ~MSR_DELTAS;
        break;
      case SCR:
        value = this.#scr;
        break;
      default:
        value = 0xff;
    }
    this.#update();
    return value;
  }

  /** Writes `data[0]` to the register at `offset` (wider writes: their low byte). */
  write(offset: number, data: Uint8Array): void {
    const dlab = (this.#lcr & LCR_DLAB) !== 0;
    const value = data[0];
    switch (offset) {
      case RBR_THR_DLL:
        if (dlab) {
          this.#dll = value;
        } else if (this.#mcr & MCR_LOOP) {
          this.#push(value); // loopback: the transmitter feeds the receiver
          this.#thrPending = true;
        } else {
          this.#output(value);
          this.#thrPending = true; // sent at once: THR is empty again
        }
        break;
      case IER_DLM:
        if (dlab) {
          this.#dlm = value;
        } else {
          // Enabling the THR-empty interrupt while THR is empty raises it at once
          // (Linux's 8250 driver probes for exactly this).
          if ((value & IER_THRI) && !(this.#ier & IER_THRI)) this.#thrPending = true;
          this.#ier = value & 0x0f;
        }
        break;
      case IIR_FCR: {
        const enabling = (value & FCR_ENABLE) !== 0;
        if (enabling !== this.#fifoEnabled() || (value & FCR_CLEAR_RX)) {
          // Switching the FIFOs on or off, or the clear bit, empties the receiver.
          this.#rxHead = 0;
          this.#rxCount = 0;
        }
        this.#fcr = value & (FCR_ENABLE | 0xc0);
        this.#refill();
        break;
      }
      case LCR:
        this.#lcr = value;
        break;
      case MCR: {
        const wasLoop = (this.#mcr & MCR_LOOP) !== 0;
        this.#mcr = value & 0x1f;
        if (this.#mcr & MCR_LOOP) this.#setMsrInputs(this.#loopbackMsr(this.#mcr));
        else if (wasLoop) this.#setMsrInputs(MSR_DCD | MSR_DSR | MSR_CTS);
        break;
      }
      case LSR:
        break; // read-only (factory test register)
      case MSR:
        break; // read-only
      case SCR:
        this.#scr = value;
        break;
    }
    this.#update();
  }

  /** Signals a break condition to the guest (sysrq on a Linux console). */
  sendBreak(): void {
    this.#lsrErrors |= LSR_BI;
    this.#push(0);
    this.#update();
  }
}
