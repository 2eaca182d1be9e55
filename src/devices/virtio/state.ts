/**
 * The state a virtio transport (virtio-mmio or virtio-pci) shares with the thread that runs its
 * device: 32-bit words in a `SharedArrayBuffer`. The transport (on a vCPU
 * thread, behind the bus) writes what the driver sets up; the device thread
 * reads the queue configuration from it and sets interrupt and
 * `DEVICE_NEEDS_RESET` bits in it. Only `Atomics` touch it, from both sides.
 *
 * @module
 */

/** Word offsets of one device's state. */
export const Word = {
  /** Device status (spec 2.1). */
  STATUS: 0,
  /** `InterruptStatus` bits. */
  INTERRUPT: 1,
  /** 1 while the transport waits for the device thread to reset the device. */
  RESET_REQUEST: 2,
  /** Driver features, low 32 bits. */
  DRIVER_FEATURES_LO: 3,
  /** Driver features, high 32 bits. */
  DRIVER_FEATURES_HI: 4,
  /** Bumped by every reset, so the device thread drops queues it built before. */
  EPOCH: 5,
  /**
   * Bumped by every `InterruptStatus` read that took bits (the read clears them, see `mmio.ts`):
   * the device thread's stall report sees the driver's handler run.
   */
  ACKS: 6,
  /**
   * 1 for a virtio-pci device (`pci.ts`): its interrupts are MSI-X messages
   * through the vectors below, and no `InterruptStatus`/ISR bit is set (no
   * INTx, so nothing would clear it). 0 for virtio-mmio.
   */
  MSI_X: 7,
  /** virtio-pci: the MSI-X vector of configuration changes (`NO_VECTOR`, 0xffff: none). */
  CONFIG_VECTOR: 8,
  /**
   * virtio-pci: bit v set while vector v cannot be sent (its table entry or
   * the whole function masked, or MSI-X off); the device thread then sets
   * its bit in {@linkcode Word.VECTOR_PENDING} instead.
   */
  VECTOR_MASKED: 9,
  /** virtio-pci: the MSI-X pending bits (the PBA), sent by whoever unmasks or sees the unmask. */
  VECTOR_PENDING: 10,
  /** First queue's words. */
  QUEUES: 11,
} as const;

/** Word offsets inside one queue's block of {@linkcode QUEUE_WORDS}. */
export const QueueWord = {
  /** `QueueReady`. */
  READY: 0,
  /** `QueueNum`. */
  NUM: 1,
  /** Descriptor table address, low half. */
  DESC_LO: 2,
  /** Descriptor table address, high half. */
  DESC_HI: 3,
  /** Available ring address, low half. */
  AVAIL_LO: 4,
  /** Available ring address, high half. */
  AVAIL_HI: 5,
  /** Used ring address, low half. */
  USED_LO: 6,
  /** Used ring address, high half. */
  USED_HI: 7,
  /** virtio-pci: the MSI-X vector of the queue's used-buffer interrupts (`NO_VECTOR`: none). */
  VECTOR: 8,
} as const;

/** Words per queue. */
export const QUEUE_WORDS = 9;

/** A fresh shared state for a device with `queues` queues. */
export function createDeviceState(queues: number): Int32Array {
  const words = Word.QUEUES + QUEUE_WORDS * queues;
  return new Int32Array(new SharedArrayBuffer(4 * words));
}

/** The 64-bit address in two words (unsigned halves), as a number (exact below 2^53). */
export function wordsToAddress(state: Int32Array, low: number): number {
  return (Atomics.load(state, low + 1) >>> 0) * 0x1_0000_0000 + (Atomics.load(state, low) >>> 0);
}
