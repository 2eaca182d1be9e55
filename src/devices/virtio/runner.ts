/**
 * The device side of virtio-mmio: serves the queues of a set of devices from
 * their shared state words (see `state.ts`). The device thread (`worker.ts`)
 * calls {@linkcode VirtioRunner.service} whenever its wake-up eventfd fires;
 * tests call it directly, in-process, with a fake guest RAM.
 *
 * Per device it builds each queue once the driver set `DRIVER_OK` and the
 * queue's `QueueReady` (validating it, see `queue.ts`), then hands available
 * chains to the backend. A driver error (`VirtioError`) sets
 * `DEVICE_NEEDS_RESET` and the configuration-change interrupt bit, and the
 * device is left alone until the driver resets it (spec 2.1.2).
 *
 * @module
 */

import {
  INT_CONFIG,
  INT_VRING,
  Status,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./constants.ts";
import type { VirtioBackend, VirtioFront } from "./device.ts";
import type { VirtioMemory } from "./memory.ts";
import { SplitQueue, VirtioError } from "./queue.ts";
import { QUEUE_WORDS, QueueWord, Word, wordsToAddress } from "./state.ts";

/** One device as the runner serves it. */
export interface RunnerDevice {
  /** What the driver was shown (queue maxima, features). */
  front: VirtioFront;
  /** The state words shared with the transport. */
  state: Int32Array;
  /** The work on the queues. */
  backend: VirtioBackend;
  /**
   * Raises the device's interrupt (an irqfd write, or a test's callback);
   * `cause` is `INT_VRING` or `INT_CONFIG`; for `INT_VRING`, `queues` has
   * bit q set for each queue q whose used ring wants the interrupt (bit 31
   * also for the queues above; 0 for `INT_CONFIG`). virtio-mmio has one
   * interrupt for all; virtio-pci sends each queue's MSI-X vector.
   */
  interrupt: (cause: number, queues: number) => void;
  /** Told about each driver error (for logs); optional. */
  onError?: (message: string) => void;
}

/**
 * Sets the interrupt's status bit (virtio-mmio's `InterruptStatus`; not for a
 * virtio-pci device, whose MSI-X message says the cause and whose ISR nothing
 * would clear) and raises it.
 */
function raise(device: RunnerDevice, cause: number, queues: number): void {
  if (Atomics.load(device.state, Word.MSI_X) === 0) Atomics.or(device.state, Word.INTERRUPT, cause);
  device.interrupt(cause, queues);
}

/**
 * How many times one pass serves a queue again because the driver added
 * chains while it was served (with `VIRTIO_F_EVENT_IDX` such a driver may
 * not kick): bounds one queue's share of a pass; what is left is served by
 * the next pass, which {@linkcode VirtioRunner.pending} asks for at once.
 */
const MAX_REPASSES = 64;

interface Served {
  device: RunnerDevice;
  queues: (SplitQueue | null)[];
  epoch: number;
  /** Whether the backend was told the current driver's features (`activate`). */
  active: boolean;
}

/**
 * Serves several devices' queues on the calling thread.
 *
 * @example
 * ```ts
 * import { VirtioMemory, VirtioRunner } from "@deno-kvm/kvm/vmm";
 * const memory = new VirtioMemory([{ gpa: 0, bytes: new Uint8Array(1 << 20) }]);
 * const runner = new VirtioRunner(memory, []);
 * runner.service(); // nothing to serve
 * ```
 */
export class VirtioRunner {
  #memory: VirtioMemory;
  #devices: Served[];
  /**
   * Whether the last {@linkcode service} left chains it saw added without a
   * kick (see `MAX_REPASSES`): the caller serves again without waiting.
   */
  pending = false;

  /** Serves `devices` in `memory`. */
  constructor(memory: VirtioMemory, devices: readonly RunnerDevice[]) {
    this.#memory = memory;
    this.#devices = devices.map((device) => ({
      device,
      queues: device.front.queueMax.map(() => null),
      epoch: Atomics.load(device.state, Word.EPOCH),
      active: false,
    }));
  }

  /**
   * Serves pending resets, then every ready queue of every running device.
   * Returns how many devices raised an interrupt.
   */
  service(): number {
    this.pending = false;
    let raised = 0;
    for (const served of this.#devices) {
      if (Atomics.load(served.device.state, Word.RESET_REQUEST) !== 0) this.#reset(served);
      if (this.#serve(served)) raised++;
    }
    return raised;
  }

  /** Resets one device now (the in-process form of the transport's reset). */
  reset(index: number): void {
    const served = this.#devices[index];
    if (served) this.#reset(served);
  }

  /** Closes every backend. */
  close(): void {
    for (const { device } of this.#devices) device.backend.close();
  }

  #reset(served: Served): void {
    const s = served.device.state;
    served.queues.fill(null);
    served.active = false;
    served.device.backend.reset();
    for (let i = 0; i < s.length; i++) {
      if (i !== Word.RESET_REQUEST && i !== Word.EPOCH) Atomics.store(s, i, 0);
    }
    served.epoch = Atomics.add(s, Word.EPOCH, 1) + 1;
    Atomics.store(s, Word.RESET_REQUEST, 0);
    Atomics.notify(s, Word.RESET_REQUEST);
  }

  /** Serves one device; true when it raised its interrupt. */
  #serve(served: Served): boolean {
    const { device } = served;
    const s = device.state;
    const status = Atomics.load(s, Word.STATUS);
    if (!(status & Status.DRIVER_OK) || (status & (Status.DEVICE_NEEDS_RESET | Status.FAILED))) {
      return false;
    }
    let queues = 0; // bit q: queue q wants its interrupt
    if (!served.active) {
      served.active = true;
      device.backend.activate?.(
        BigInt(Atomics.load(s, Word.DRIVER_FEATURES_LO) >>> 0) |
          BigInt(Atomics.load(s, Word.DRIVER_FEATURES_HI) >>> 0) << 32n,
      );
    }
    try {
      // Highest index first: a transmit queue (odd, after its receive queue: net, console) is
      // served before the receive queue, so an answer the host made while a frame was sent
      // (over a tap, the host's TCP ACK is queued before `writev` returns) is received in the
      // same pass and under the same interrupt, not after another wake-up of the device thread.
      for (let q = served.queues.length - 1; q >= 0; q--) {
        const base = Word.QUEUES + QUEUE_WORDS * q;
        if (Atomics.load(s, base + QueueWord.READY) === 0) {
          served.queues[q] = null; // disabled by the driver
          continue;
        }
        let queue = served.queues[q];
        if (queue === null) queue = served.queues[q] = this.#build(device, base, q);
        // With EVENT_IDX the driver kicks only past avail_event, which `rearm` moves after each
        // pass (kicks stay off while the device is busy); chains added meanwhile are served here.
        for (let pass = 0;; pass++) {
          if (queue.hasAvailable) device.backend.process(q, queue);
          if (!queue.rearm()) break;
          if (pass === MAX_REPASSES) {
            this.pending = true;
            break;
          }
        }
        if (queue.needsInterrupt()) queues |= 1 << Math.min(q, 31);
      }
    } catch (e) {
      if (!(e instanceof VirtioError)) throw e;
      device.onError?.(e.message);
      served.queues.fill(null);
      Atomics.or(s, Word.STATUS, Status.DEVICE_NEEDS_RESET);
      raise(device, INT_CONFIG, 0);
      return true;
    }
    if (queues === 0) return false;
    raise(device, INT_VRING, queues);
    return true;
  }

  #build(device: RunnerDevice, base: number, q: number): SplitQueue {
    const s = device.state;
    // Both ring features are among the low 32 bits.
    const features = BigInt(Atomics.load(s, Word.DRIVER_FEATURES_LO) >>> 0);
    return SplitQueue.create(
      this.#memory,
      {
        size: Atomics.load(s, base + QueueWord.NUM) >>> 0,
        desc: wordsToAddress(s, base + QueueWord.DESC_LO),
        avail: wordsToAddress(s, base + QueueWord.AVAIL_LO),
        used: wordsToAddress(s, base + QueueWord.USED_LO),
      },
      device.front.queueMax[q],
      (features & VIRTIO_RING_F_INDIRECT_DESC) !== 0n,
      (features & VIRTIO_F_EVENT_IDX) !== 0n,
    );
  }
}
