/**
 * virtio-console (spec 5.3) as one port, the guest's `hvc0`: a receive queue
 * (0) the device fills with the host's input, and a transmit queue (1) whose
 * buffers it hands to the host. No multiport, no emergency write.
 *
 * Bytes cross threads in two {@linkcode ByteRing}s: output from the device
 * thread to the machine's thread (which drains it where it runs its vCPU and
 * is kicked when output arrives), input the other way (the device thread is
 * woken through its eventfd). A full output ring makes the device thread
 * wait for the machine to drain it: the guest's writes are back-pressured,
 * never dropped and never buffered without bound.
 *
 * @module
 */

import { ByteRing } from "./byte_ring.ts";
import {
  DeviceId,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./constants.ts";
import type { VirtioBackend, VirtioFront } from "./device.ts";
import type { SplitQueue } from "./queue.ts";

/** Bytes each direction's ring holds. */
export const CONSOLE_RING_BYTES = 64 * 1024;
const QUEUE_SIZE = 64;
const RX = 0;
const TX = 1;

/** The console's front: 80x25, one port. */
export function consoleFront(): VirtioFront {
  const config = new Uint8Array(12);
  const v = new DataView(config.buffer);
  v.setUint16(0, 80, true); // cols
  v.setUint16(2, 25, true); // rows
  v.setUint32(4, 1, true); // max_nr_ports
  return {
    deviceId: DeviceId.CONSOLE,
    features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX,
    queueMax: [QUEUE_SIZE, QUEUE_SIZE],
    config,
  };
}

/** The rings of one console, as posted to the device thread. */
export interface ConsoleRings {
  /** Host → guest. */
  input: SharedArrayBuffer;
  /** Guest → host. */
  output: SharedArrayBuffer;
}

/** Makes a console's rings. */
export function createConsoleRings(): ConsoleRings {
  return {
    input: new ByteRing(CONSOLE_RING_BYTES).buffer,
    output: new ByteRing(CONSOLE_RING_BYTES).buffer,
  };
}

/** The console's device side. */
export class ConsoleBackend implements VirtioBackend {
  #input: ByteRing;
  #output: ByteRing;
  #onOutput: () => void;
  #stopping: () => boolean;

  /**
   * `onOutput` runs when output arrives in an empty ring (the machine kicks
   * its vCPU thread to drain it); `stopping` ends a wait for room.
   */
  constructor(rings: ConsoleRings, onOutput: () => void, stopping: () => boolean = () => false) {
    this.#input = new ByteRing(rings.input);
    this.#output = new ByteRing(rings.output);
    this.#onOutput = onOutput;
    this.#stopping = stopping;
  }

  /** Serves the transmit queue, or moves input into the receive queue's buffers. */
  process(index: number, queue: SplitQueue): boolean {
    return index === TX ? this.#transmit(queue) : index === RX ? this.#receive(queue) : false;
  }

  #transmit(queue: SplitQueue): boolean {
    let used = false;
    while (queue.pop()) {
      const chain = queue.chain;
      for (let i = 0; i < chain.count; i++) {
        if (chain.writable[i]) continue;
        let b = chain.buffer(i);
        while (b.length > 0) {
          // One kick per batch: the machine drains everything when it looks.
          const wasEmpty = this.#output.available === 0;
          const n = this.#output.write(b);
          b = b.subarray(n);
          if (n > 0 && wasEmpty) this.#onOutput();
          if (b.length > 0) {
            if (this.#stopping()) return used;
            this.#output.waitForRoom(100);
          }
        }
      }
      queue.pushUsed(chain.head, 0);
      used = true;
    }
    return used;
  }

  #receive(queue: SplitQueue): boolean {
    let used = false;
    while (this.#input.available > 0 && queue.pop()) {
      const chain = queue.chain;
      let written = 0;
      for (let i = 0; i < chain.count; i++) {
        if (!chain.writable[i]) continue;
        const n = this.#input.read(chain.buffer(i));
        written += n;
        if (n < chain.lengths[i]) break;
      }
      queue.pushUsed(chain.head, written);
      used = true;
    }
    return used;
  }

  /** Nothing per driver (pending input stays for the next driver). */
  reset(): void {}

  /** Nothing to release. */
  close(): void {}
}

/**
 * The machine's end of a console: queue input for the guest, drain its output.
 *
 * @example
 * ```ts
 * import { ConsoleHost, createConsoleRings } from "@deno-kvm/kvm/vmm";
 * const host = new ConsoleHost(createConsoleRings(), () => {});
 * host.input(new TextEncoder().encode("ls\n"));
 * host.drain((bytes) => console.log(bytes.length));
 * ```
 */
export class ConsoleHost {
  /** The rings (post them to the device thread). */
  readonly rings: ConsoleRings;
  #input: ByteRing;
  #output: ByteRing;
  #wake: () => void;
  #chunk = new Uint8Array(4096);

  /** `wake` tells the device thread that input is waiting. */
  constructor(rings: ConsoleRings, wake: () => void) {
    this.rings = rings;
    this.#input = new ByteRing(rings.input);
    this.#output = new ByteRing(rings.output);
    this.#wake = wake;
  }

  /** Queues input for the guest; returns how many bytes fit (the rest: try again later). */
  input(bytes: Uint8Array): number {
    const n = this.#input.write(bytes);
    if (n > 0) this.#wake();
    return n;
  }

  /** Hands every waiting output byte to `sink`, in chunks (views valid during the call). */
  drain(sink: (bytes: Uint8Array) => void): void {
    for (;;) {
      const n = this.#output.read(this.#chunk);
      if (n === 0) return;
      sink(this.#chunk.subarray(0, n));
    }
  }
}
