/**
 * Terminal input for a guest's UART, bounded end to end: the stdin pump
 * (`stdin_pump.ts`, a Worker) writes into a fixed shared ring and waits when
 * it is full; the run loop's `poll` moves bytes from the ring into a fixed
 * pending buffer (handling the Ctrl-A escape) and offers them to the UART,
 * whose `receive` takes only what it has room for. What it leaves stays
 * pending and is offered again on the next run-loop turn; while the pending
 * buffer is full the ring is not read, so the pump waits and the terminal's
 * own buffer holds the rest. Nothing grows with the input.
 *
 * @module
 */

/** Ctrl-A: the escape byte (as in QEMU's `-serial mon:stdio`). */
const CTRL_A = 0x01;
/** `x` after Ctrl-A quits. */
const QUIT = 0x78;

/** Options of {@linkcode ConsoleInput}. */
export interface ConsoleInputOptions {
  /** Offers bytes to the guest and returns how many it took (`Uart16550.receive`). */
  receive: (bytes: Uint8Array) => number;
  /** Called on Ctrl-A x. */
  quit: () => void;
  /** Size of the shared ring the pump fills (default 4096). */
  ringSize?: number;
  /** Size of the pending buffer between the ring and the UART (default 4096). */
  pendingSize?: number;
}

/** The run loop's side of the console input; see the module documentation. */
export class ConsoleInput {
  /** The ring to hand to the pump: two Int32 counters (write, read), then the bytes. */
  readonly ring: SharedArrayBuffer;
  #head: Int32Array;
  #ringBytes: Uint8Array;
  #pending: Uint8Array;
  #pendingLength = 0;
  #escape = false;
  #receive: (bytes: Uint8Array) => number;
  #quit: () => void;

  /** Creates the ring and the pending buffer (both fixed in size). */
  constructor(options: ConsoleInputOptions) {
    const ringSize = options.ringSize ?? 4096;
    // The counters wrap at 2^32; indices stay continuous across it only for a power of two.
    if (!Number.isInteger(ringSize) || ringSize < 1 || (ringSize & (ringSize - 1)) !== 0) {
      throw new RangeError(`ConsoleInput: ringSize ${ringSize} is not a power of two`);
    }
    this.ring = new SharedArrayBuffer(8 + ringSize);
    this.#head = new Int32Array(this.ring, 0, 2);
    this.#ringBytes = new Uint8Array(this.ring, 8);
    this.#pending = new Uint8Array(options.pendingSize ?? 4096);
    this.#receive = options.receive;
    this.#quit = options.quit;
  }

  /** Bytes waiting for room in the UART. */
  get pending(): number {
    return this.#pendingLength;
  }

  /**
   * Writes bytes into the ring as the pump does (for tests and for callers
   * without a pump); returns how many fitted.
   */
  push(bytes: Uint8Array): number {
    const size = this.#ringBytes.length;
    let w = Atomics.load(this.#head, 0);
    let n = 0;
    for (
      ;
      n < bytes.length && ((w - Atomics.load(this.#head, 1)) | 0) < size;
      n++, w = (w + 1) | 0
    ) {
      this.#ringBytes[(w >>> 0) % size] = bytes[n];
    }
    Atomics.store(this.#head, 0, w);
    return n;
  }

  /** One run-loop turn: offers the pending bytes, then what the ring holds, as room allows. */
  poll(): void {
    this.#offer();
    const size = this.#ringBytes.length;
    const w = Atomics.load(this.#head, 0);
    let r = Atomics.load(this.#head, 1);
    const pending = this.#pending;
    for (; r !== w && this.#pendingLength < pending.length; r = (r + 1) | 0) {
      const b = this.#ringBytes[(r >>> 0) % size];
      if (this.#escape) {
        this.#escape = false;
        if (b === QUIT) {
          this.#quit();
          r = (r + 1) | 0;
          break;
        }
        if (b === CTRL_A) pending[this.#pendingLength++] = CTRL_A;
        continue;
      }
      if (b === CTRL_A) this.#escape = true;
      else pending[this.#pendingLength++] = b;
    }
    Atomics.store(this.#head, 1, r);
    this.#offer();
  }

  #offer(): void {
    if (this.#pendingLength === 0) return;
    const taken = this.#receive(this.#pending.subarray(0, this.#pendingLength));
    this.#pending.copyWithin(0, taken, this.#pendingLength);
    this.#pendingLength -= taken;
  }
}
