/**
 * The virtio-pci transport (virtio 1.x spec 4.1, "modern" devices only) with
 * MSI-X, and the little PCI it needs: configuration mechanism #1 on ports
 * 0xcf8-0xcff ({@linkcode PciConfigPorts}), a host bridge at 00:00.0 and one
 * function per virtio device on bus 0.
 *
 * Why: with virtio-mmio every interrupt costs the guest an exit to user space
 * (its handler reads `InterruptStatus`). With MSI-X the interrupt's vector
 * says what happened: the device thread's irqfd write becomes an MSI in the
 * kernel (a `KVM_SET_GSI_ROUTING` MSI route per unmasked vector) and the
 * guest's handler goes straight to the used rings, with no exit at all.
 *
 * Each device has one 32-bit memory BAR ({@linkcode VIRTIO_PCI_BAR_SIZE})
 * holding the common configuration, the ISR byte, the device configuration,
 * one notify word per queue (an ioeventfd each: kicks never exit), the MSI-X
 * table and the PBA. The MSI-X table has one vector for configuration
 * changes and one per queue ({@linkcode virtioPciVectorCount}), as QEMU's:
 * Linux's driver then gives every queue its own vector (its first choice),
 * so a network card's receive and transmit completions are separate
 * interrupts, each running only its own queue's handler.
 *
 * The `VIRTIO_PCI_CAP_PCI_CFG` capability (spec 4.1.4.9, which every device
 * must have) reaches the same registers through configuration space, for a
 * driver (firmware) that has not mapped the BAR: it sets the capability's
 * BAR, offset and length, then each read or write of its data window is one
 * access of the BAR's registers.
 *
 * What is left out, on purpose: legacy INTx (the interrupt pin is 0: a
 * driver without MSI-X finds no interrupt), moving the BAR (the register takes the
 * guest's writes, so sizing works, but the device keeps decoding at the
 * address it was given: firmware-assigned BARs inside the root bridge's
 * window are kept by Linux), and I/O BARs.
 *
 * Config and BAR accesses run on the vCPU thread that trapped them; the
 * queues are served by the device thread through the state words shared
 * with virtio-mmio (`state.ts`), which this transport fills the same way.
 *
 * @module
 */

import type { BusDevice } from "../bus_device.ts";
import { loadLe, storeLe } from "../bus_device.ts";
import { INT_CONFIG, Status } from "./constants.ts";
import type { VirtioFront } from "./device.ts";
import { type VirtioLink, writeDeviceStatus } from "./mmio.ts";
import { QUEUE_WORDS, QueueWord, Word } from "./state.ts";

/** The first port of PCI configuration mechanism #1 (address at 0xcf8, data at 0xcfc). */
export const PCI_CONFIG_PORT = 0xcf8;
/** Ports of configuration mechanism #1. */
export const PCI_CONFIG_PORTS_LENGTH = 8;
/** Size of a virtio-pci function's memory BAR. */
export const VIRTIO_PCI_BAR_SIZE = 0x8000;
/**
 * The most MSI-X table entries a virtio-pci function has: vector numbers are
 * bits of 32-bit state words (`Word.VECTOR_MASKED`, `Word.VECTOR_PENDING`).
 */
export const VIRTIO_PCI_MAX_VECTORS = 32;

/**
 * MSI-X table entries of a virtio-pci function for `front`: one for
 * configuration changes, then one per queue (at most
 * {@linkcode VIRTIO_PCI_MAX_VECTORS}; a driver then shares vectors between queues).
 */
export function virtioPciVectorCount(front: VirtioFront): number {
  return Math.min(VIRTIO_PCI_MAX_VECTORS, 1 + front.queueMax.length);
}
/** The PCI vendor id of virtio devices (Red Hat, formerly Qumranet). */
export const VIRTIO_PCI_VENDOR = 0x1af4;
/** `VIRTIO_MSI_NO_VECTOR`: no vector assigned. */
export const NO_VECTOR = 0xffff;

/** Where each structure sits in the BAR. */
export const VirtioPciBar = {
  /** `struct virtio_pci_common_cfg`. */
  COMMON: 0x0000,
  /** The ISR status byte (read-to-clear). */
  ISR: 0x1000,
  /** The device-specific configuration. */
  DEVICE: 0x2000,
  /** The notify words: queue q at `NOTIFY + q * NOTIFY_MULTIPLIER`. */
  NOTIFY: 0x3000,
  /** The MSI-X table (16 bytes per vector). */
  MSIX_TABLE: 0x4000,
  /** The MSI-X pending bit array. */
  MSIX_PBA: 0x5000,
} as const;
/** `notify_off_multiplier`: bytes between two queues' notify words. */
export const VIRTIO_PCI_NOTIFY_MULTIPLIER = 4;

/** Length of `struct virtio_pci_common_cfg` (virtio 1.0: up to `queue_device`). */
const COMMON_LENGTH = 0x38;
/** Each region's span in the BAR (the next region starts a page later). */
const REGION_SPAN = 0x1000;

/** Common configuration offsets (spec 4.1.4.3). */
const Common = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
} as const;

/** `queue_desc` .. `queue_device`, as 32-bit halves, to the queue's state words. */
const QUEUE_ADDRESS_WORDS = [
  QueueWord.DESC_LO,
  QueueWord.DESC_HI,
  QueueWord.AVAIL_LO,
  QueueWord.AVAIL_HI,
  QueueWord.USED_LO,
  QueueWord.USED_HI,
];

/** One MSI message: the address the guest programmed and its data. */
export interface MsiMessage {
  /** Address, low 32 bits (0xfeeXXXXX on x86). */
  addressLo: number;
  /** Address, high 32 bits. */
  addressHi: number;
  /** Data (vector and delivery mode on x86). */
  data: number;
}

/** How a virtio-pci transport reaches the device thread and the VM's interrupt routing. */
export interface VirtioPciLink extends VirtioLink {
  /**
   * Vector `vector`'s message was programmed (or changed) and the vector is
   * unmasked: from now on its irqfd must raise this MSI.
   */
  route(vector: number, message: MsiMessage): void;
  /** Sends vector `vector` now (a pending interrupt on unmask): write its irqfd. */
  fire(vector: number): void;
}

/** One function's configuration space, as configuration mechanism #1 reaches it. */
export interface PciFunction {
  /** Reads `data.length` bytes (1, 2 or 4, inside one dword) at `offset` (0-255). */
  readConfig(offset: number, data: Uint8Array): void;
  /** Writes `data` (1, 2 or 4 bytes, inside one dword) at `offset` (0-255). */
  writeConfig(offset: number, data: Uint8Array): void;
}

/**
 * A 256-byte configuration space: the bytes and which bits the guest may
 * write; a write changes only those (everything else reads as built).
 */
export class PciConfigSpace implements PciFunction {
  /** The bytes the guest reads. */
  readonly bytes: Uint8Array = new Uint8Array(256);
  /** Writable bits, per byte. */
  readonly writable: Uint8Array = new Uint8Array(256);
  #view = new DataView(this.bytes.buffer);

  /** A header for `vendor:device` of class `classCode` (24 bits: class, subclass, prog-if). */
  constructor(vendor: number, device: number, classCode: number, revision = 0) {
    this.#view.setUint16(0x00, vendor, true);
    this.#view.setUint16(0x02, device, true);
    this.bytes[0x08] = revision;
    this.bytes[0x09] = classCode & 0xff;
    this.bytes[0x0a] = (classCode >> 8) & 0xff;
    this.bytes[0x0b] = (classCode >> 16) & 0xff;
    // Command: I/O and memory decode, bus master, INTx disable may be set by the driver.
    this.writable[0x04] = 0x07;
    this.writable[0x05] = 0x04;
    this.writable[0x0c] = 0xff; // cache line size
    this.writable[0x0d] = 0xff; // latency timer
    this.writable[0x3c] = 0xff; // interrupt line (firmware's note, unused)
  }

  /** Sets a 16-bit field. */
  set16(offset: number, value: number): void {
    this.#view.setUint16(offset, value, true);
  }

  /** Sets a 32-bit field. */
  set32(offset: number, value: number): void {
    this.#view.setUint32(offset, value >>> 0, true);
  }

  /** A 16-bit field. */
  get16(offset: number): number {
    return this.#view.getUint16(offset, true);
  }

  /** A 32-bit field. */
  get32(offset: number): number {
    return this.#view.getUint32(offset, true);
  }

  /** Reads the bytes at `offset` (wrapped into the 256 bytes: a bound for any caller). */
  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.bytes[(offset + i) & 0xff];
  }

  /** Writes the writable bits of the bytes at `offset`. */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = (offset + i) & 0xff;
      const mask = this.writable[at];
      this.bytes[at] = (this.bytes[at] & ~mask) | (data[i] & mask);
    }
  }
}

/** The host bridge at 00:00.0 (class 0x0600: Linux's `pci_sanity_check` looks for one). */
export function pciHostBridge(): PciConfigSpace {
  // Red Hat's id for a generic host bridge (QEMU's "gpex"): no driver binds to it.
  return new PciConfigSpace(0x1b36, 0x0008, 0x060000);
}

/**
 * PCI configuration mechanism #1 for bus 0: the address register at 0xcf8
 * (32-bit accesses only) and the data window at 0xcfc-0xcff. Device `n` of
 * `devices` is 00:n.0; every other function, bus or a disabled address reads
 * all ones (no device) and ignores writes.
 *
 * @example
 * ```ts
 * import { PCI_CONFIG_PORT, PciConfigPorts, pciHostBridge } from "@deno-kvm/kvm/vmm";
 * const ports = new PciConfigPorts([pciHostBridge()]);
 * const word = new Uint8Array(4);
 * new DataView(word.buffer).setUint32(0, 0x8000_0000, true); // 00:00.0, register 0
 * ports.write(0, word);
 * ports.read(4, word); // vendor and device of the host bridge
 * console.log(PCI_CONFIG_PORT.toString(16), new DataView(word.buffer).getUint16(0, true).toString(16));
 * ```
 */
export class PciConfigPorts implements BusDevice {
  #devices: readonly (PciFunction | undefined)[];
  #address = 0;

  /** Bus 0's functions 0, by device number (at most 32). */
  constructor(devices: readonly (PciFunction | undefined)[]) {
    this.#devices = devices.slice(0, 32);
  }

  /** The function the address register selects, or undefined (then the bus reads all ones). */
  #selected(): PciFunction | undefined {
    const a = this.#address;
    // Enable bit, bus 0, function 0; bits 30-24 (AMD's extended registers) must be clear.
    if ((a & 0x8000_0000) === 0 || (a & 0x7fff_0700) !== 0) return undefined;
    return this.#devices[(a >>> 11) & 0x1f];
  }

  /** A read of the address register or the data window. */
  read(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      if (offset === 0 && data.length === 4) storeLe(data, this.#address);
      else data.fill(0xff);
      return;
    }
    const fn = this.#selected();
    const register = (this.#address & 0xfc) + (offset - 4);
    if (!fn || (register & 3) + data.length > 4) data.fill(0xff);
    else fn.readConfig(register, data);
  }

  /** A write of the address register or the data window. */
  write(offset: number, data: Uint8Array): void {
    if (offset < 4) {
      // Linux's type 1 probe writes a byte to 0xcfb first (a type 2 leftover): ignored.
      if (offset === 0 && data.length === 4) this.#address = loadLe(data);
      return;
    }
    const fn = this.#selected();
    const register = (this.#address & 0xfc) + (offset - 4);
    if (fn && (register & 3) + data.length <= 4) fn.writeConfig(register, data);
  }
}

/** PCI class codes of the virtio devices (as QEMU gives them; Linux matches ids, not classes). */
function classOf(deviceId: number): number {
  switch (deviceId) {
    case 1:
      return 0x020000; // network, Ethernet
    case 2:
      return 0x010000; // mass storage, SCSI
    case 3:
      return 0x078000; // communication, other
    default:
      return 0x00ff00; // unclassified
  }
}

/** Capability offsets in the configuration space. */
const Cap = {
  COMMON: 0x40,
  NOTIFY: 0x50,
  ISR: 0x64,
  DEVICE: 0x74,
  MSIX: 0x84,
  /** `struct virtio_pci_cfg_cap`: the window onto the BAR (the last capability). */
  PCI_CFG: 0x90,
} as const;
/** `cfg_type` of the configuration-space window onto the BAR. */
const VIRTIO_PCI_CAP_PCI_CFG = 5;
/** Where `pci_cfg_data` starts in `struct virtio_pci_cfg_cap`. */
const PCI_CFG_DATA = 16;
/** The MSI-X capability's message control: enable and function mask bits. */
const MSIX_ENABLE = 0x8000;
const MSIX_FUNCTION_MASK = 0x4000;

/**
 * Sends vector `vector` of a virtio-pci device from the device thread:
 * through `send(vector)` (its irqfd) when it is unmasked, else as a pending
 * bit that the unmask sends.
 */
function raiseVector(state: Int32Array, vector: number, send: (vector: number) => void): void {
  const bit = 1 << vector;
  if ((Atomics.load(state, Word.VECTOR_MASKED) & bit) === 0) {
    send(vector);
    return;
  }
  Atomics.or(state, Word.VECTOR_PENDING, bit);
  // Unmasked meanwhile: the transport may have looked at the pending bits before this one was
  // set. Whoever takes the bit (an atomic and) sends it, so it goes out exactly once.
  if (
    (Atomics.load(state, Word.VECTOR_MASKED) & bit) === 0 &&
    (Atomics.and(state, Word.VECTOR_PENDING, ~bit) & bit) !== 0
  ) send(vector);
}

/**
 * Sends `cause` (`INT_VRING` or `INT_CONFIG`) of a virtio-pci device from
 * the device thread, on the vectors the driver chose: the configuration
 * vector, or for `INT_VRING` the vector of each queue in `queues` (bit q:
 * queue q; bit 31 also stands for the queues above), each vector once
 * however many of those queues share it. A vector is sent through
 * `send(vector)` (its irqfd) when unmasked, else left pending for the
 * unmask. No allocation: it runs per interrupt.
 */
export function raiseMsix(
  state: Int32Array,
  cause: number,
  queues: number,
  send: (vector: number) => void,
): void {
  if (cause === INT_CONFIG) {
    const vector = Atomics.load(state, Word.CONFIG_VECTOR);
    if (vector < VIRTIO_PCI_MAX_VECTORS) raiseVector(state, vector, send); // else NO_VECTOR
    return;
  }
  let sent = 0; // vectors sent, as bits
  const count = (state.length - Word.QUEUES) / QUEUE_WORDS;
  for (let q = 0; q < count; q++) {
    if ((queues & (1 << Math.min(q, 31))) === 0) continue;
    const vector = Atomics.load(state, Word.QUEUES + QUEUE_WORDS * q + QueueWord.VECTOR);
    if (vector >= VIRTIO_PCI_MAX_VECTORS || (sent & (1 << vector)) !== 0) continue;
    sent |= 1 << vector;
    raiseVector(state, vector, send);
  }
}

/**
 * One virtio-pci function: its configuration space (a {@linkcode PciFunction}
 * for {@linkcode PciConfigPorts}) and its BAR's registers (a
 * {@linkcode BusDevice} to insert on the MMIO bus at {@linkcode barAddress}
 * for {@linkcode VIRTIO_PCI_BAR_SIZE} bytes).
 *
 * @example
 * ```ts
 * import { createDeviceState, rngFront, VirtioPciTransport } from "@deno-kvm/kvm/vmm";
 * const state = createDeviceState(1);
 * const transport = new VirtioPciTransport(rngFront(), state, {
 *   notify() {},
 *   reset() {},
 *   route() {},
 *   fire() {},
 * }, 0xd000_0000);
 * const id = new Uint8Array(4);
 * transport.readConfig(0, id); // f4 1a 44 10: vendor 0x1af4, device 0x1044 (entropy)
 * ```
 */
export class VirtioPciTransport implements BusDevice, PciFunction {
  /** What the driver sees. */
  readonly front: VirtioFront;
  /** The state shared with the device thread. */
  readonly state: Int32Array;
  /** Where the BAR was placed (the device decodes there; see the module's notes). */
  readonly barAddress: number;
  /** The configuration space. */
  readonly config: PciConfigSpace;
  #link: VirtioPciLink;
  #deviceFeatureSel = 0;
  #driverFeatureSel = 0;
  #queueSel = 0;
  /** MSI-X table entries ({@linkcode virtioPciVectorCount}). */
  readonly vectors: number;
  /** The MSI-X table: address low, address high, data, vector control per entry. */
  #table: Uint32Array;
  /** `pci_cfg_data`'s first 1, 2 and 4 bytes (the window's accesses, made once). */
  #windowData: Uint8Array[] = [];
  /** What each vector was last routed to (valid where `#routedOk`), to route only changes. */
  #routed: Uint32Array;
  #routedOk: Uint8Array;

  /**
   * A function for `front`, sharing `state` (from `createDeviceState`) with the device thread,
   * its BAR at `barAddress` (in the root bridge's memory window, aligned to its size).
   */
  constructor(front: VirtioFront, state: Int32Array, link: VirtioPciLink, barAddress: number) {
    this.front = front;
    this.state = state;
    this.#link = link;
    this.barAddress = barAddress;
    const vectors = this.vectors = virtioPciVectorCount(front);
    this.#table = new Uint32Array(4 * vectors);
    this.#routed = new Uint32Array(3 * vectors);
    this.#routedOk = new Uint8Array(vectors);
    for (let v = 0; v < vectors; v++) this.#table[4 * v + 3] = 1; // masked
    const c = this.config = new PciConfigSpace(
      VIRTIO_PCI_VENDOR,
      0x1040 + front.deviceId,
      classOf(front.deviceId),
      1, // revision 1: a modern (virtio 1.x) device
    );
    c.set16(0x06, 0x0010); // status: a capability list
    c.set32(0x10, barAddress); // BAR 0: 32-bit memory, not prefetchable
    const barMask = ~(VIRTIO_PCI_BAR_SIZE - 1) & 0xffff_fff0;
    for (let i = 0; i < 4; i++) c.writable[0x10 + i] = (barMask >>> (8 * i)) & 0xff;
    c.set16(0x2c, VIRTIO_PCI_VENDOR); // subsystem vendor
    c.set16(0x2e, 0x1100); // subsystem id (QEMU's for modern-only devices)
    c.bytes[0x34] = Cap.COMMON;
    c.bytes[0x3d] = 0; // interrupt pin: none (MSI-X only)
    const configLength = Math.max(4, (front.config.length + 3) & ~3);
    const notifyLength = VIRTIO_PCI_NOTIFY_MULTIPLIER * Math.max(1, front.queueMax.length);
    this.#vendorCap(Cap.COMMON, Cap.NOTIFY, 1, VirtioPciBar.COMMON, COMMON_LENGTH, 16);
    this.#vendorCap(Cap.NOTIFY, Cap.ISR, 2, VirtioPciBar.NOTIFY, notifyLength, 20);
    c.set32(Cap.NOTIFY + 16, VIRTIO_PCI_NOTIFY_MULTIPLIER);
    this.#vendorCap(Cap.ISR, Cap.DEVICE, 3, VirtioPciBar.ISR, 4, 16);
    this.#vendorCap(Cap.DEVICE, Cap.MSIX, 4, VirtioPciBar.DEVICE, configLength, 16);
    c.bytes[Cap.MSIX] = 0x11; // MSI-X
    c.bytes[Cap.MSIX + 1] = Cap.PCI_CFG;
    c.set16(Cap.MSIX + 2, vectors - 1); // table size - 1; disabled, not masked
    c.writable[Cap.MSIX + 3] = (MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8;
    c.set32(Cap.MSIX + 4, VirtioPciBar.MSIX_TABLE); // BIR 0
    c.set32(Cap.MSIX + 8, VirtioPciBar.MSIX_PBA); // BIR 0
    // The window: BAR, offset, length and data are the driver's to write (offset and length
    // start at 0: nothing selected).
    this.#vendorCap(Cap.PCI_CFG, 0, VIRTIO_PCI_CAP_PCI_CFG, 0, 0, PCI_CFG_DATA + 4);
    c.writable.fill(0xff, Cap.PCI_CFG + 4, Cap.PCI_CFG + 5);
    c.writable.fill(0xff, Cap.PCI_CFG + 8, Cap.PCI_CFG + PCI_CFG_DATA + 4);
    const data = Cap.PCI_CFG + PCI_CFG_DATA;
    this.#windowData = [1, 2, 4].map((n) => c.bytes.subarray(data, data + n));
    this.#restore();
  }

  /** A `struct virtio_pci_cap` (vendor-specific capability) at `at`. */
  #vendorCap(
    at: number,
    next: number,
    cfgType: number,
    offset: number,
    length: number,
    capLength: number,
  ): void {
    const c = this.config;
    c.bytes[at] = 0x09; // vendor specific
    c.bytes[at + 1] = next;
    c.bytes[at + 2] = capLength;
    c.bytes[at + 3] = cfgType;
    c.bytes[at + 4] = 0; // BAR 0
    c.set32(at + 8, offset);
    c.set32(at + 12, length);
  }

  /** Whether MSI-X is enabled (message control). */
  get msixEnabled(): boolean {
    return (this.config.get16(Cap.MSIX + 2) & MSIX_ENABLE) !== 0;
  }

  /** The transport's words after construction and after every reset (which zeroes them). */
  #restore(): void {
    const s = this.state;
    Atomics.store(s, Word.MSI_X, 1);
    Atomics.store(s, Word.CONFIG_VECTOR, NO_VECTOR);
    for (let q = 0; q < this.front.queueMax.length; q++) {
      Atomics.store(s, Word.QUEUES + QUEUE_WORDS * q + QueueWord.VECTOR, NO_VECTOR);
    }
    Atomics.store(s, Word.VECTOR_PENDING, 0);
    Atomics.store(s, Word.VECTOR_MASKED, -1); // every vector masked until routed
    this.#routedOk.fill(0); // a reset vector is routed again when it is unmasked
    this.#syncVectors();
  }

  // ---- configuration space ----

  /**
   * Reads configuration space bytes; a read of the `PCI_CFG` window's data
   * first reads the BAR register it selects into it.
   */
  readConfig(offset: number, data: Uint8Array): void {
    const window = this.#windowAccess(offset, data.length);
    if (window) this.read(this.config.get32(Cap.PCI_CFG + 8), window);
    this.config.readConfig(offset, data);
  }

  /**
   * Writes configuration space bytes; an MSI-X message control write
   * re-evaluates every vector, a write of the `PCI_CFG` window's data is
   * written on to the BAR register it selects.
   */
  writeConfig(offset: number, data: Uint8Array): void {
    this.config.writeConfig(offset, data);
    const end = offset + data.length;
    if (offset <= Cap.MSIX + 3 && end > Cap.MSIX + 2) this.#syncVectors();
    const window = this.#windowAccess(offset, data.length);
    if (window) this.write(this.config.get32(Cap.PCI_CFG + 8), window);
  }

  /**
   * For an access of `length` bytes at `offset` that covers the first byte
   * of `pci_cfg_data` (as QEMU decides; reading the data a byte at a time
   * reaches the register once, not four times, which matters for the
   * read-to-clear ISR): its first `cap.length` bytes, when the window
   * selects a register the spec allows (BAR 0, a length of 1, 2 or 4, an
   * offset aligned to it, inside the BAR); else null (nothing is accessed,
   * the data bytes stay).
   */
  #windowAccess(offset: number, length: number): Uint8Array | null {
    const data = Cap.PCI_CFG + PCI_CFG_DATA;
    if (offset > data || offset + length <= data) return null;
    const c = this.config;
    const at = c.get32(Cap.PCI_CFG + 8);
    const n = c.get32(Cap.PCI_CFG + 12);
    if (c.bytes[Cap.PCI_CFG + 4] !== 0 || (n !== 1 && n !== 2 && n !== 4)) return null;
    if (at % n !== 0 || at + n > VIRTIO_PCI_BAR_SIZE) return null;
    return this.#windowData[n >> 1];
  }

  // ---- MSI-X ----

  #syncVectors(): void {
    for (let v = 0; v < this.vectors; v++) this.#syncVector(v);
  }

  /** Routes vector `v` when it may be sent (and its message changed), else marks it masked. */
  #syncVector(v: number): void {
    const s = this.state;
    const control = this.config.get16(Cap.MSIX + 2);
    const bit = 1 << v;
    const open = (control & MSIX_ENABLE) !== 0 && (control & MSIX_FUNCTION_MASK) === 0 &&
      (this.#table[4 * v + 3] & 1) === 0;
    if (!open) {
      Atomics.or(s, Word.VECTOR_MASKED, bit);
      return;
    }
    const t = this.#table, r = this.#routed;
    if (
      !this.#routedOk[v] || r[3 * v] !== t[4 * v] || r[3 * v + 1] !== t[4 * v + 1] ||
      r[3 * v + 2] !== t[4 * v + 2]
    ) {
      r[3 * v] = t[4 * v];
      r[3 * v + 1] = t[4 * v + 1];
      r[3 * v + 2] = t[4 * v + 2];
      this.#routedOk[v] = 1;
      this.#link.route(v, { addressLo: t[4 * v], addressHi: t[4 * v + 1], data: t[4 * v + 2] });
    }
    Atomics.and(s, Word.VECTOR_MASKED, ~bit);
    // An interrupt that came while masked (the PBA bit) goes out now, once (see raiseMsix).
    if ((Atomics.and(s, Word.VECTOR_PENDING, ~bit) & bit) !== 0) this.#link.fire(v);
  }

  // ---- the BAR ----

  /** Reads BAR bytes at `offset`. */
  read(offset: number, data: Uint8Array): void {
    if (offset < VirtioPciBar.COMMON + REGION_SPAN) {
      storeLe(data, this.#common(offset, data.length));
    } else if (offset < VirtioPciBar.ISR + REGION_SPAN) {
      let bits = 0;
      if (offset === VirtioPciBar.ISR) {
        // Read-to-clear (spec 4.1.4.5); with MSI-X only, the device never sets it (state.ts).
        bits = Atomics.exchange(this.state, Word.INTERRUPT, 0);
        if (bits !== 0) Atomics.add(this.state, Word.ACKS, 1);
      }
      storeLe(data, bits);
    } else if (offset < VirtioPciBar.DEVICE + REGION_SPAN) {
      const config = this.front.config;
      for (let i = 0; i < data.length; i++) {
        const at = offset - VirtioPciBar.DEVICE + i;
        data[i] = at < config.length ? config[at] : 0;
      }
    } else if (
      offset >= VirtioPciBar.MSIX_TABLE && offset < VirtioPciBar.MSIX_TABLE + REGION_SPAN
    ) {
      for (let i = 0; i + 4 <= data.length; i += 4) {
        const dword = (offset - VirtioPciBar.MSIX_TABLE + i) >> 2;
        storeLe(data.subarray(i, i + 4), dword < this.#table.length ? this.#table[dword] : 0);
      }
      if (data.length < 4) data.fill(0);
    } else if (offset === VirtioPciBar.MSIX_PBA) {
      storeLe(data, Atomics.load(this.state, Word.VECTOR_PENDING));
    } else {
      data.fill(0); // notify words and gaps read 0
    }
  }

  /** Writes BAR bytes at `offset`. */
  write(offset: number, data: Uint8Array): void {
    if (offset < VirtioPciBar.COMMON + REGION_SPAN) {
      this.#writeCommon(offset, data.length, loadLe(data));
    } else if (offset >= VirtioPciBar.NOTIFY && offset < VirtioPciBar.NOTIFY + REGION_SPAN) {
      // A kick no ioeventfd took (another width): the device thread serves every queue anyway.
      this.#link.notify();
    } else if (
      offset >= VirtioPciBar.MSIX_TABLE && offset < VirtioPciBar.MSIX_TABLE + REGION_SPAN
    ) {
      if ((offset & 3) !== 0 || (data.length !== 4 && data.length !== 8)) return;
      for (let i = 0; i < data.length; i += 4) {
        const dword = (offset - VirtioPciBar.MSIX_TABLE + i) >> 2;
        if (dword >= this.#table.length) return;
        // Vector control keeps only its mask bit; the message words take any value.
        const value = loadLe(data.subarray(i, i + 4));
        this.#table[dword] = (dword & 3) === 3 ? value & 1 : value;
        this.#syncVector(dword >> 2);
      }
    }
    // ISR, device configuration and PBA writes are ignored: nothing there is writable.
  }

  /** The selected queue's first state word, or -1 when `queue_select` names no queue. */
  #queueWord(): number {
    return this.#queueSel < this.front.queueMax.length
      ? Word.QUEUES + QUEUE_WORDS * this.#queueSel
      : -1;
  }

  /** A common configuration register of exactly `width` bytes at `offset`; anything else reads 0. */
  #common(offset: number, width: number): number {
    const s = this.state;
    const q = this.#queueWord();
    switch (offset | width << 8) {
      case Common.DEVICE_FEATURE_SELECT | 4 << 8:
        return this.#deviceFeatureSel;
      case Common.DEVICE_FEATURE | 4 << 8:
        if (this.#deviceFeatureSel > 1) return 0;
        return Number((this.front.features >> BigInt(32 * this.#deviceFeatureSel)) & 0xffffffffn);
      case Common.DRIVER_FEATURE_SELECT | 4 << 8:
        return this.#driverFeatureSel;
      case Common.DRIVER_FEATURE | 4 << 8:
        if (this.#driverFeatureSel > 1) return 0;
        return Atomics.load(
          s,
          this.#driverFeatureSel === 0 ? Word.DRIVER_FEATURES_LO : Word.DRIVER_FEATURES_HI,
        ) >>> 0;
      case Common.CONFIG_MSIX_VECTOR | 2 << 8:
        return Atomics.load(s, Word.CONFIG_VECTOR) & 0xffff;
      case Common.NUM_QUEUES | 2 << 8:
        return this.front.queueMax.length;
      case Common.DEVICE_STATUS | 1 << 8:
        return Atomics.load(s, Word.STATUS) & 0xff;
      case Common.CONFIG_GENERATION | 1 << 8:
        return 0; // the configuration space never changes
      case Common.QUEUE_SELECT | 2 << 8:
        return this.#queueSel;
      case Common.QUEUE_SIZE | 2 << 8:
        // The driver may shrink it; until then it reads the maximum.
        return q < 0
          ? 0
          : (Atomics.load(s, q + QueueWord.NUM) || this.front.queueMax[this.#queueSel]);
      case Common.QUEUE_MSIX_VECTOR | 2 << 8:
        return q < 0 ? NO_VECTOR : Atomics.load(s, q + QueueWord.VECTOR) & 0xffff;
      case Common.QUEUE_ENABLE | 2 << 8:
        return q < 0 ? 0 : Atomics.load(s, q + QueueWord.READY);
      case Common.QUEUE_NOTIFY_OFF | 2 << 8:
        return q < 0 ? 0 : this.#queueSel;
    }
    if (
      width === 4 && offset >= Common.QUEUE_DESC && offset < COMMON_LENGTH && (offset & 3) === 0
    ) {
      return q < 0
        ? 0
        : Atomics.load(s, q + QUEUE_ADDRESS_WORDS[(offset - Common.QUEUE_DESC) >> 2]);
    }
    return 0;
  }

  #writeCommon(offset: number, width: number, value: number): void {
    const s = this.state;
    switch (offset | width << 8) {
      case Common.DEVICE_FEATURE_SELECT | 4 << 8:
        this.#deviceFeatureSel = value;
        return;
      case Common.DRIVER_FEATURE_SELECT | 4 << 8:
        this.#driverFeatureSel = value;
        return;
      case Common.DRIVER_FEATURE | 4 << 8:
        // Only while negotiating (spec 3.1.1: before FEATURES_OK).
        if (Atomics.load(s, Word.STATUS) & Status.FEATURES_OK) return;
        if (this.#driverFeatureSel === 0) Atomics.store(s, Word.DRIVER_FEATURES_LO, value | 0);
        else if (this.#driverFeatureSel === 1) Atomics.store(s, Word.DRIVER_FEATURES_HI, value | 0);
        return;
      case Common.CONFIG_MSIX_VECTOR | 2 << 8:
        // A vector the table does not have reads back NO_VECTOR: the driver sees the refusal.
        Atomics.store(s, Word.CONFIG_VECTOR, value < this.vectors ? value : NO_VECTOR);
        return;
      case Common.DEVICE_STATUS | 1 << 8:
        if (value === 0) {
          this.#link.reset();
          this.#deviceFeatureSel = this.#driverFeatureSel = this.#queueSel = 0;
          this.#restore();
        } else {
          writeDeviceStatus(this.front, s, this.#link, value);
        }
        return;
      case Common.QUEUE_SELECT | 2 << 8:
        this.#queueSel = value;
        return;
    }
    const q = this.#queueWord();
    if (q < 0) return;
    if (offset === Common.QUEUE_MSIX_VECTOR && width === 2) {
      // Any vector of the table, shared or not; one it does not have reads back NO_VECTOR.
      Atomics.store(s, q + QueueWord.VECTOR, value < this.vectors ? value : NO_VECTOR);
      return;
    }
    if (offset === Common.QUEUE_ENABLE && width === 2) {
      // Only 1: virtio 1.x drivers never disable a queue but by a reset.
      if ((value & 1) === 0 || Atomics.load(s, q + QueueWord.READY) !== 0) return;
      if (Atomics.load(s, q + QueueWord.NUM) === 0) {
        Atomics.store(s, q + QueueWord.NUM, this.front.queueMax[this.#queueSel]);
      }
      Atomics.store(s, q + QueueWord.READY, 1);
      if (Atomics.load(s, Word.STATUS) & Status.DRIVER_OK) this.#link.notify();
      return;
    }
    // A live queue's setup is fixed until the device is reset.
    if (Atomics.load(s, q + QueueWord.READY) !== 0) return;
    if (offset === Common.QUEUE_SIZE && width === 2) {
      Atomics.store(s, q + QueueWord.NUM, value & 0xffff); // checked when the queue is built
    } else if (
      width === 4 && offset >= Common.QUEUE_DESC && offset < COMMON_LENGTH && (offset & 3) === 0
    ) {
      Atomics.store(s, q + QUEUE_ADDRESS_WORDS[(offset - Common.QUEUE_DESC) >> 2], value | 0);
    }
  }
}
