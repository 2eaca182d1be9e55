/**
 * The virtio-mmio transport, version 2 (virtio 1.x spec 4.2): a device's
 * registers and configuration space in one 4 KiB window, as a
 * {@linkcode BusDevice}.
 *
 * Register accesses run on the vCPU thread that trapped them; the queues are
 * served on another thread (see `runtime.ts`). The two share the driver's
 * setup through the state words of `state.ts`. Two calls go to that thread
 * through a {@linkcode VirtioLink}: a notification (only when no ioeventfd
 * took the `QueueNotify` write in the kernel) and a reset, which waits until
 * the device thread stopped using the queues: after a reset the driver may
 * free the rings, so no late used-ring write may follow it.
 *
 * Registers are 32-bit (spec 4.2.2.2: the driver uses 32-bit accesses);
 * other widths read 0 and are ignored, except in the configuration space,
 * which reads at any width.
 *
 * @module
 */

import type { BusDevice } from "../bus_device.ts";
import { loadLe, storeLe } from "../bus_device.ts";
import {
  MmioReg,
  Status,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_MAGIC,
  VIRTIO_VENDOR_ID,
} from "./constants.ts";
import type { VirtioFront } from "./device.ts";
import { QUEUE_WORDS, QueueWord, Word } from "./state.ts";

/** How a transport reaches the thread that serves its device. */
export interface VirtioLink {
  /** The driver kicked a queue, or set `DRIVER_OK`: look at the queues. */
  notify(): void;
  /**
   * Reset the device: drop its queues and clear its state words; return only
   * once the device thread no longer touches the old queues.
   */
  reset(): void;
}

const QUEUE_REGS: Record<number, number> = {
  [MmioReg.QUEUE_DESC_LOW]: QueueWord.DESC_LO,
  [MmioReg.QUEUE_DESC_HIGH]: QueueWord.DESC_HI,
  [MmioReg.QUEUE_DRIVER_LOW]: QueueWord.AVAIL_LO,
  [MmioReg.QUEUE_DRIVER_HIGH]: QueueWord.AVAIL_HI,
  [MmioReg.QUEUE_DEVICE_LOW]: QueueWord.USED_LO,
  [MmioReg.QUEUE_DEVICE_HIGH]: QueueWord.USED_HI,
};

/**
 * One virtio-mmio device window.
 *
 * @example
 * ```ts
 * import { createDeviceState, rngFront, VirtioMmioTransport } from "@deno-kvm/kvm/vmm";
 * const state = createDeviceState(1);
 * const transport = new VirtioMmioTransport(rngFront(), state, {
 *   notify() {},
 *   reset() {},
 * });
 * const data = new Uint8Array(4);
 * transport.read(0, data); // "virt"
 * ```
 */
export class VirtioMmioTransport implements BusDevice {
  /** What the driver sees. */
  readonly front: VirtioFront;
  /** The state shared with the device thread. */
  readonly state: Int32Array;
  #link: VirtioLink;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #queueSel = 0;

  /** A window for `front`, sharing `state` (from `createDeviceState`) with the device thread. */
  constructor(front: VirtioFront, state: Int32Array, link: VirtioLink) {
    this.front = front;
    this.state = state;
    this.#link = link;
  }

  /** The selected queue's first state word, or -1 when `QueueSel` names no queue. */
  #queueWord(): number {
    return this.#queueSel < this.front.queueMax.length
      ? Word.QUEUES + QUEUE_WORDS * this.#queueSel
      : -1;
  }

  /** Reads a register or configuration bytes. */
  read(offset: number, data: Uint8Array): void {
    if (offset >= MmioReg.CONFIG) {
      const config = this.front.config;
      for (let i = 0; i < data.length; i++) {
        const at = offset - MmioReg.CONFIG + i;
        data[i] = at < config.length ? config[at] : 0;
      }
      return;
    }
    storeLe(data, data.length === 4 ? this.#register(offset) : 0);
  }

  #register(offset: number): number {
    const s = this.state;
    switch (offset) {
      case MmioReg.MAGIC:
        return VIRTIO_MMIO_MAGIC;
      case MmioReg.VERSION:
        return 2;
      case MmioReg.DEVICE_ID:
        return this.front.deviceId;
      case MmioReg.VENDOR_ID:
        return VIRTIO_VENDOR_ID;
      case MmioReg.DEVICE_FEATURES: {
        if (this.#deviceFeaturesSel > 1) return 0;
        return Number((this.front.features >> BigInt(32 * this.#deviceFeaturesSel)) & 0xffffffffn);
      }
      case MmioReg.QUEUE_NUM_MAX:
        return this.front.queueMax[this.#queueSel] ?? 0;
      case MmioReg.QUEUE_READY: {
        const q = this.#queueWord();
        return q < 0 ? 0 : Atomics.load(s, q + QueueWord.READY);
      }
      case MmioReg.INTERRUPT_STATUS: {
        // Read-to-clear, as virtio-pci's ISR: a driver reads the status once per interrupt and
        // handles every bit it got (Linux's vm_interrupt reads it, acknowledges that value, then
        // handles it), so the bits are taken here and `InterruptACK` has nothing left to clear.
        // The runtime lets the kernel swallow ACK writes (an ioeventfd): one exit to user space
        // per interrupt instead of two. A bit the device sets after this read comes with a new
        // interrupt and is read then; a late ACK can never clear it.
        const bits = Atomics.exchange(s, Word.INTERRUPT, 0);
        if (bits !== 0) Atomics.add(s, Word.ACKS, 1);
        return bits;
      }
      case MmioReg.STATUS:
        return Atomics.load(s, Word.STATUS);
      case MmioReg.CONFIG_GENERATION:
        return 0; // the configuration space never changes
      default:
        return 0;
    }
  }

  /** Writes a register (configuration space writes are ignored: nothing there is writable). */
  write(offset: number, data: Uint8Array): void {
    if (offset >= MmioReg.CONFIG || data.length !== 4) return;
    const value = loadLe(data);
    const s = this.state;
    switch (offset) {
      case MmioReg.DEVICE_FEATURES_SEL:
        this.#deviceFeaturesSel = value;
        return;
      case MmioReg.DRIVER_FEATURES_SEL:
        this.#driverFeaturesSel = value;
        return;
      case MmioReg.DRIVER_FEATURES:
        // Only while negotiating (spec 3.1.1: before FEATURES_OK).
        if (Atomics.load(s, Word.STATUS) & Status.FEATURES_OK) return;
        if (this.#driverFeaturesSel === 0) Atomics.store(s, Word.DRIVER_FEATURES_LO, value | 0);
        else if (this.#driverFeaturesSel === 1) {
          Atomics.store(s, Word.DRIVER_FEATURES_HI, value | 0);
        }
        return;
      case MmioReg.QUEUE_SEL:
        this.#queueSel = value;
        return;
      case MmioReg.QUEUE_NOTIFY:
        this.#link.notify();
        return;
      case MmioReg.INTERRUPT_ACK:
        return; // the read of InterruptStatus cleared what this acknowledges (see there)
      case MmioReg.STATUS:
        this.#writeStatus(value);
        return;
    }
    const q = this.#queueWord();
    if (q < 0) return;
    if (offset === MmioReg.QUEUE_READY) {
      Atomics.store(s, q + QueueWord.READY, value & 1);
      if (Atomics.load(s, Word.STATUS) & Status.DRIVER_OK) this.#link.notify();
      return;
    }
    // A live queue's setup is fixed until it is disabled or the device reset (spec 4.2.2.3).
    if (Atomics.load(s, q + QueueWord.READY) !== 0) return;
    if (offset === MmioReg.QUEUE_NUM) Atomics.store(s, q + QueueWord.NUM, value | 0);
    else if (offset in QUEUE_REGS) Atomics.store(s, q + QUEUE_REGS[offset], value | 0);
  }

  #writeStatus(value: number): void {
    if (value === 0) {
      this.#link.reset();
      this.#deviceFeaturesSel = this.#driverFeaturesSel = this.#queueSel = 0;
      return;
    }
    writeDeviceStatus(this.front, this.state, this.#link, value);
  }
}

/**
 * A driver's non-zero write of the device status, for either transport
 * (virtio-mmio's `Status`, virtio-pci's `device_status`; 0, the reset, is
 * the transport's): `FEATURES_OK` is kept only for an accepted subset of the
 * offer that includes `VERSION_1`, `DEVICE_NEEDS_RESET` survives, and the
 * device thread is told when `DRIVER_OK` appears.
 */
export function writeDeviceStatus(
  front: VirtioFront,
  s: Int32Array,
  link: VirtioLink,
  value: number,
): void {
  const old = Atomics.load(s, Word.STATUS);
  let next = value & 0xff;
  if ((next & Status.FEATURES_OK) && !(old & Status.FEATURES_OK)) {
    // The device keeps FEATURES_OK only for a subset of its offer that includes VERSION_1.
    const accepted = BigInt(Atomics.load(s, Word.DRIVER_FEATURES_LO) >>> 0) |
      BigInt(Atomics.load(s, Word.DRIVER_FEATURES_HI) >>> 0) << 32n;
    if ((accepted & ~front.features) !== 0n || !(accepted & VIRTIO_F_VERSION_1)) {
      next &= ~Status.FEATURES_OK;
    }
  }
  // NEEDS_RESET is the device's to set; the driver can clear it only by a reset.
  next |= old & Status.DEVICE_NEEDS_RESET;
  // Status bits are only ever added, except by reset; a concurrent NEEDS_RESET survives the CAS loop.
  for (;;) {
    const current = Atomics.load(s, Word.STATUS);
    if (
      Atomics.compareExchange(
        s,
        Word.STATUS,
        current,
        next | (current & Status.DEVICE_NEEDS_RESET),
      ) === current
    ) break;
  }
  if ((next & Status.DRIVER_OK) && !(old & Status.DRIVER_OK)) link.notify();
}
