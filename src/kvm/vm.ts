/**
 * The VM object: memory slots, vCPUs, VM-wide devices.
 *
 * @module
 */

import { Cap, type CapName } from "../abi/capabilities.ts";
import { KvmClockData } from "../abi/clock.ts";
import { KvmCoalescedMmioZone } from "../abi/coalesced.ts";
import { KVM_CREATE_DEVICE_TEST, KvmCreateDevice } from "../abi/device.ts";
import {
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KvmClearDirtyLog,
  KvmDirtyLog,
} from "../abi/dirty_log.ts";
import { KvmEnableCap } from "../abi/enable_cap.ts";
import {
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQFD_FLAG_DEASSIGN,
  KVM_IRQFD_FLAG_RESAMPLE,
  KvmIoeventfd,
  KvmIrqfd,
} from "../abi/eventfd.ts";
import * as Ioctl from "../abi/ioctls.ts";
import { KvmIrqchip, KvmIrqLevel, KvmMsi } from "../abi/irqchip.ts";
import {
  KVM_IRQ_ROUTING_IRQCHIP,
  KVM_IRQ_ROUTING_MSI,
  KVM_MSI_VALID_DEVID,
  KvmIrqRouting,
  KvmIrqRoutingEntry,
} from "../abi/irq_routing.ts";
import {
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KvmUserspaceMemoryRegion,
} from "../abi/memory.ts";
import { KVM_CAP_USER_MEMORY2, userspaceMemoryRegion2 } from "../abi/memory2.ts";
import { KvmPitConfig, KvmPitState2 } from "../abi/pit.ts";
import { Errno, KvmError, unwrap } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { CoalescedRing } from "./coalesced_ring.ts";
import { hex, PAGE_SIZE } from "./constants.ts";
import { index, u32, u64, upTo } from "./validate.ts";
import { Device } from "./device.ts";
import { type DirtyPageVisitor, DirtyRing } from "./dirty_ring.ts";
import type { EventFd } from "./event_fd.ts";
import { GuestMemory, type GuestMemoryOptions, type SlotUser } from "./guest_memory.ts";
import { VmLife } from "./lifetime.ts";
import type { Kvm } from "./kvm.ts";
import { OwnedFd, pointerOf } from "./owned_fd.ts";
import { Vcpu } from "./vcpu.ts";

/** `struct kvm_irqchip` codec instance (PIC master, PIC slave or IOAPIC state). */
export type Irqchip = InstanceType<typeof KvmIrqchip>;
/** `struct kvm_pit_state2` codec instance. */
export type PitState2 = InstanceType<typeof KvmPitState2>;
/** `struct kvm_clock_data` codec instance. */
export type ClockData = InstanceType<typeof KvmClockData>;

/** A message-signalled interrupt (`struct kvm_msi`; `KVM_IRQ_ROUTING_MSI` routes). */
export interface Msi {
  /** Low 32 bits of the message address (0xfee00000 | destination APIC id << 12 on x86). */
  addressLo: number;
  /** High 32 bits of the address (x2APIC destination bits); default 0. */
  addressHi?: number;
  /** Message data (vector in bits 0-7, delivery mode in bits 8-10, trigger in bit 15). */
  data: number;
  /** A device id (sets `KVM_MSI_VALID_DEVID`); unused on x86. */
  devid?: number;
}

/** One entry of the GSI routing table given to {@linkcode Vm.setGsiRouting}. */
export type GsiRoute =
  | {
    /** The GSI the route serves (what `setIrqLine`, irqfds and MSI routes name). */
    gsi: number;
    /** Route to a pin of an in-kernel irqchip. */
    kind: "irqchip";
    /** `KVM_IRQCHIP_PIC_MASTER`, `KVM_IRQCHIP_PIC_SLAVE` or `KVM_IRQCHIP_IOAPIC`. */
    irqchip: number;
    /** The pin on that chip (0-7 on a PIC, 0-23 on the IOAPIC). */
    pin: number;
  }
  | ({
    /** The GSI the route serves. */
    gsi: number;
    /** Route to a message-signalled interrupt. */
    kind: "msi";
  } & Msi);

/** Options of {@linkcode Vm.registerIrqfd}. */
export interface IrqfdOptions {
  /**
   * Level-triggered mode (`KVM_IRQFD_FLAG_RESAMPLE`): the GSI stays asserted
   * until the guest EOIs it; then the kernel lowers it and signals this fd.
   */
  resampleFd?: EventFd;
}

/** Options of {@linkcode Vm.registerIoevent}; unregistering must repeat them. */
export interface IoeventOptions {
  /** Signal only when the guest writes this value (`KVM_IOEVENTFD_FLAG_DATAMATCH`). */
  datamatch?: bigint | number;
  /** Access width to match: 1, 2, 4 or 8; 0 matches any (default 0, or 4 with `datamatch`). */
  length?: number;
  /** `addr` is an I/O port (`KVM_IOEVENTFD_FLAG_PIO`) instead of a guest physical address. */
  pio?: boolean;
}

/** Extra fields of {@linkcode Vm.setUserMemoryRegion2}. */
export interface MemoryRegion2 extends MemoryRegion {
  /** A guest_memfd backing private memory (`KVM_MEM_GUEST_MEMFD`); none by default. */
  guestMemfd?: number;
  /** Offset into `guestMemfd`. */
  guestMemfdOffset?: bigint;
}

/** Page numbers (relative to the slot) of the set bits of a dirty or resident-page bitmap. */
export function bitmapPages(bitmap: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < bitmap.length; i++) {
    const byte = bitmap[i];
    if (byte === 0) continue;
    for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) pages.push(i * 8 + bit);
  }
  return pages;
}

const KVM_MEM_GUEST_MEMFD = 1 << 2;

/** EINVAL naming the parameter unless `gpa` and `length` are non-negative safe integers. */
function checkRange(op: string, gpa: number, length: number): void {
  if (!Number.isSafeInteger(gpa) || gpa < 0) {
    throw new KvmError(op, Errno.EINVAL, `gpa ${gpa} is not a non-negative integer`);
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new KvmError(op, Errno.EINVAL, `length ${length} is not a non-negative integer`);
  }
}

/** A memory slot as given to {@linkcode Vm.setUserMemoryRegion}. */
export interface MemoryRegion {
  /** Slot id, below `checkExtension("NR_MEMSLOTS")`. */
  slot: number;
  /** Guest physical address, page aligned. */
  guestPhysAddr: number;
  /** Size in bytes, a multiple of the page size; 0 deletes the slot. */
  memorySize: number;
  /**
   * The host memory backing the slot. Either `memory` (with an optional
   * `offset` into it) or a raw `userspaceAddr`.
   */
  memory?: GuestMemory;
  /** Byte offset into `memory`, page aligned. */
  offset?: number;
  /** Raw host address; unsafe, the library cannot check it. */
  userspaceAddr?: bigint;
  /** Guest writes exit as MMIO (`KVM_MEM_READONLY`). */
  readonly?: boolean;
  /** Track written pages for `getDirtyLog` (`KVM_MEM_LOG_DIRTY_PAGES`). */
  logDirtyPages?: boolean;
}

/** A slot as the VM remembers it. */
export interface MemorySlot {
  /** Slot id. */
  readonly slot: number;
  /** Guest physical address. */
  readonly guestPhysAddr: number;
  /** Size in bytes. */
  readonly memorySize: number;
  /** Host memory, viewed without a copy (empty for a raw `userspaceAddr`). */
  readonly bytes: Uint8Array;
  /** The `KVM_MEM_*` flags. */
  readonly flags: number;
  /** Host address of the slot's memory. */
  readonly userspaceAddr: bigint;
}

/**
 * A virtual machine (`KVM_CREATE_VM`).
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x10000);
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram });
 * const vcpu = vm.createVcpu(0);
 * ```
 */
export class Vm extends OwnedFd {
  /** Names this object in error messages. */
  protected readonly label = "Vm";
  /** The system object this VM was created from. */
  readonly kvm: Kvm;
  #onClose: () => void;
  #region = new KvmUserspaceMemoryRegion();
  #regionPtr = pointerOf(this.#region.bytes);
  #slots = new Map<number, MemorySlot>();
  #vcpus = new Map<number, Vcpu>();
  #memories = new Set<GuestMemory>();
  /** The memory behind each slot set with `memory` (kept after close, see {@linkcode SlotUser}). */
  #slotMemory = new Map<number, GuestMemory>();
  #closingMemories = false;
  /** Shared with every thread that uses this VM's vCPUs or memory (see `lifetime.ts`). */
  #life: VmLife;
  #slotUser: SlotUser = {
    slotsUsing: (memory) => {
      // After close the kernel keeps the slots until the VM's last user is done.
      if (this.#closingMemories || (this.closed && this.#life.vmReleased)) return [];
      const slots: number[] = [];
      for (const [slot, m] of this.#slotMemory) if (m === memory) slots.push(slot);
      return slots;
    },
  };
  #vcpuMmapSize: number;
  #maxSlots: number;
  #devices = new Set<Device>();
  #vmChecks: boolean | undefined;
  #manualDirtyLogProtect = false;
  #enableCap = new KvmEnableCap();
  #enableCapPtr = pointerOf(this.#enableCap.bytes);
  #irqLevel = new KvmIrqLevel();
  #irqLevelPtr = pointerOf(this.#irqLevel.bytes);
  #msi = new KvmMsi();
  #irqfd = new KvmIrqfd();
  #irqfdPtr = pointerOf(this.#irqfd.bytes);
  #ioevent = new KvmIoeventfd();
  #ioeventPtr = pointerOf(this.#ioevent.bytes);
  #dirtyLog = new KvmDirtyLog();
  #dirtyLogPtr = pointerOf(this.#dirtyLog.bytes);
  #lastBitmap?: Uint8Array;
  #lastBitmapAddress = 0n;
  #clearLog = new KvmClearDirtyLog();
  #clearLogPtr = pointerOf(this.#clearLog.bytes);
  #u64 = new BigUint64Array(1);
  #u64Ptr = pointerOf(new Uint8Array(this.#u64.buffer));
  #vcpusCreated = 0;
  #dirtyRingBytes = 0;
  #dirtyRings = new Map<number, DirtyRing>();
  /** The same rings as a plain array, so that harvesting them all allocates no iterator. */
  #dirtyRingList: DirtyRing[] = [];

  private constructor(fd: number, kvm: Kvm, onClose: () => void) {
    super(fd);
    this.#life = VmLife.create(fd);
    this.kvm = kvm;
    this.#onClose = onClose;
    this.#vcpuMmapSize = kvm.vcpuMmapSize();
    this.#maxSlots = kvm.checkExtension("NR_MEMSLOTS") || 32;
  }

  /** @internal Used by {@linkcode Kvm.createVm}. */
  static fromFd(fd: number, kvm: Kvm, onClose: () => void): Vm {
    return new Vm(fd, kvm, onClose);
  }

  /**
   * Allocates host memory for guest RAM, owned by this VM: unmapped once the
   * VM is closed and every thread that used it (an adopted vCPU, a worker's
   * guest-RAM views) is done. Its `close()` before then only empties its
   * views (and is refused while a slot uses it).
   */
  allocateMemory(size: number, options?: GuestMemoryOptions): GuestMemory {
    this.fd("allocate guest memory");
    const memory = GuestMemory.allocate(size, options);
    try {
      this.#life.addMapping(memory.address, memory.size);
    } catch (e) {
      memory.close();
      throw e;
    }
    memory.handOverUnmap();
    this.#memories.add(memory);
    return memory;
  }

  /**
   * `KVM_SET_USER_MEMORY_REGION`: adds, moves, resizes (by delete and add) or,
   * with `memorySize: 0`, deletes a slot. Checks alignment, slot range,
   * overlap with other slots and that the backing memory is large enough
   * before asking the kernel, with messages that say which.
   */
  setUserMemoryRegion(region: MemoryRegion): void {
    const op = "KVM_SET_USER_MEMORY_REGION";
    const { address, bytes, flags } = this.#prepareRegion(op, region, 0);
    const { slot, guestPhysAddr: gpa, memorySize: size } = region;
    this.#region.assign({
      slot,
      flags,
      guestPhysAddr: gpa,
      memorySize: size,
      userspaceAddr: address,
    });
    this.ioctlPtr(
      op,
      Ioctl.KVM_SET_USER_MEMORY_REGION,
      this.#regionPtr,
      () => `slot ${slot} at ${hex(gpa)}`,
    );
    this.#recordSlot(region, bytes, flags, address);
  }

  /**
   * `KVM_SET_USER_MEMORY_REGION2` (Linux 6.8+): a slot that may also name a
   * guest_memfd. Same checks as {@linkcode setUserMemoryRegion}. On a kernel
   * without `KVM_CAP_USER_MEMORY2` it throws a KvmError(EOPNOTSUPP) naming
   * the capability; use `setUserMemoryRegion` there.
   */
  setUserMemoryRegion2(region: MemoryRegion2): void {
    const op = "KVM_SET_USER_MEMORY_REGION2";
    this.fd(op);
    if (this.checkExtension(KVM_CAP_USER_MEMORY2) <= 0) {
      throw new KvmError(
        op,
        Errno.EOPNOTSUPP,
        "the kernel lacks KVM_CAP_USER_MEMORY2 (Linux 6.8+); use setUserMemoryRegion",
      );
    }
    const extra = region.guestMemfd !== undefined ? KVM_MEM_GUEST_MEMFD : 0;
    if (region.guestMemfd !== undefined) u32(op, "guestMemfd", region.guestMemfd);
    if (region.guestMemfdOffset !== undefined) {
      u64(op, "guestMemfdOffset", region.guestMemfdOffset);
    }
    const { address, bytes, flags } = this.#prepareRegion(op, region, extra);
    const { slot, guestPhysAddr: gpa, memorySize: size } = region;
    const codec = userspaceMemoryRegion2().assign({
      slot,
      flags,
      guestPhysAddr: gpa,
      memorySize: size,
      userspaceAddr: address,
      guestMemfd: region.guestMemfd ?? 0,
      guestMemfdOffset: region.guestMemfdOffset ?? 0n,
    });
    this.ioctlPtr(
      op,
      Ioctl.KVM_SET_USER_MEMORY_REGION2,
      pointerOf(codec.bytes),
      () => `slot ${slot} at ${hex(gpa)}`,
    );
    this.#recordSlot(region, bytes, flags, address);
  }

  #prepareRegion(
    op: string,
    region: MemoryRegion,
    extraFlags: number,
  ): { address: bigint; bytes: Uint8Array; flags: number } {
    this.fd(op);
    const { slot, guestPhysAddr: gpa, memorySize: size } = region;
    const fail = (errno: number, detail: string): never => {
      throw new KvmError(op, errno, `slot ${slot}: ${detail}`);
    };
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.#maxSlots) {
      fail(Errno.EINVAL, `slot id out of range 0..${this.#maxSlots - 1}`);
    }
    if (!Number.isSafeInteger(gpa) || gpa < 0 || gpa % PAGE_SIZE !== 0) {
      fail(Errno.EINVAL, `guest address ${hex(gpa)} is not page aligned`);
    }
    if (!Number.isSafeInteger(size) || size < 0 || size % PAGE_SIZE !== 0) {
      fail(Errno.EINVAL, `size ${hex(size)} is not a multiple of the page size`);
    }
    let address = 0n;
    let bytes: Uint8Array = new Uint8Array(0);
    if (size > 0) {
      if (region.memory) {
        const offset = region.offset ?? 0;
        if (region.memory.closed) fail(Errno.EBADF, "its guest memory is closed");
        if (offset % PAGE_SIZE !== 0 || offset < 0) {
          fail(Errno.EINVAL, `offset ${hex(offset)} into the memory is not page aligned`);
        }
        if (offset + size > region.memory.size) {
          fail(
            Errno.EINVAL,
            `${hex(size)} bytes at offset ${hex(offset)} exceed the ${
              hex(region.memory.size)
            }-byte memory`,
          );
        }
        address = region.memory.address + BigInt(offset);
        bytes = region.memory.bytes.subarray(offset, offset + size);
      } else if (region.userspaceAddr !== undefined) {
        address = u64(op, `slot ${slot}: userspaceAddr`, region.userspaceAddr);
      } else {
        fail(Errno.EINVAL, "neither memory nor userspaceAddr given");
      }
      for (const other of this.#slots.values()) {
        if (other.slot === slot) continue;
        if (gpa < other.guestPhysAddr + other.memorySize && other.guestPhysAddr < gpa + size) {
          fail(
            Errno.EEXIST,
            `${hex(gpa)}..${hex(gpa + size)} overlaps slot ${other.slot} at ${
              hex(other.guestPhysAddr)
            }`,
          );
        }
      }
    }
    const flags = (region.logDirtyPages ? KVM_MEM_LOG_DIRTY_PAGES : 0) |
      (region.readonly ? KVM_MEM_READONLY : 0) | extraFlags;
    return { address, bytes, flags };
  }

  #recordSlot(region: MemoryRegion, bytes: Uint8Array, flags: number, address: bigint): void {
    const { slot, guestPhysAddr, memorySize } = region;
    this.#slotMemory.delete(slot);
    if (memorySize > 0 && region.memory) {
      this.#slotMemory.set(slot, region.memory);
      region.memory.addSlotUser(this.#slotUser);
    }
    if (memorySize === 0) this.#slots.delete(slot);
    else {
      this.#slots.set(slot, {
        slot,
        guestPhysAddr,
        memorySize,
        bytes,
        flags,
        userspaceAddr: address,
      });
    }
  }

  /** Deletes a slot (a `setUserMemoryRegion` with size 0). */
  removeMemoryRegion(slot: number): void {
    this.setUserMemoryRegion({ slot, guestPhysAddr: 0, memorySize: 0 });
  }

  /** The slots currently set, by id. */
  get memorySlots(): ReadonlyMap<number, MemorySlot> {
    return this.#slots;
  }

  /**
   * A view (no copy) of `length` bytes of guest RAM at guest physical address
   * `gpa`. The range must lie inside one slot backed by memory this library
   * knows; otherwise a KvmError with `EFAULT` says where the guest RAM is.
   */
  guestMemory(gpa: number, length: number): Uint8Array {
    const op = "guest memory access";
    this.fd(op);
    checkRange(op, gpa, length);
    for (const s of this.#slots.values()) {
      if (gpa >= s.guestPhysAddr && gpa + length <= s.guestPhysAddr + s.bytes.length) {
        const start = gpa - s.guestPhysAddr;
        return s.bytes.subarray(start, start + length);
      }
    }
    throw new KvmError(
      op,
      Errno.EFAULT,
      `${hex(gpa)}..${hex(gpa + length)} is not inside guest RAM (${this.#describeRam()})`,
    );
  }

  /**
   * Copies `data` into guest RAM at `gpa` (see {@linkcode guestMemory}).
   *
   * A typed array or DataView is written as its bytes, unchecked (a
   * `Uint16Array` of 2 elements writes 4 bytes). An array of numbers must hold
   * integers 0..255: anything else (0.5, -1, 256, NaN, a bigint) is a
   * KvmError(`EINVAL`) naming `data[i]`, and nothing is written (a typed
   * array's `set` would have stored 0.5 as 0 and -1 as 255).
   */
  writeGuest(gpa: number, data: ArrayLike<number> | ArrayBufferView): void {
    if (ArrayBuffer.isView(data)) {
      const bytes = data instanceof Uint8Array
        ? data
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      this.guestMemory(gpa, bytes.length).set(bytes);
      return;
    }
    const length = data.length;
    for (let i = 0; i < length; i++) {
      const value: unknown = data[i];
      if (typeof value !== "number" || (value & 0xff) !== value) {
        const shown = typeof value === "bigint" ? `${value}n` : String(value);
        throw new KvmError(
          "write guest memory",
          Errno.EINVAL,
          `data[${i}] ${shown} is not an integer 0..0xff`,
        );
      }
    }
    this.guestMemory(gpa, length).set(data);
  }

  /** Copies `length` bytes of guest RAM at `gpa` out (see {@linkcode guestMemory}). */
  readGuest(gpa: number, length: number): Uint8Array {
    return this.guestMemory(gpa, length).slice();
  }

  #describeRam(): string {
    const parts = [...this.#slots.values()]
      .filter((s) => s.bytes.length > 0)
      .map((s) => `${hex(s.guestPhysAddr)}..${hex(s.guestPhysAddr + s.memorySize)}`);
    return parts.length ? `RAM is ${parts.join(", ")}` : "no RAM is mapped";
  }

  /**
   * `KVM_CREATE_VCPU`, with its run area mapped. Owned by this VM. A duplicate
   * id gets `EEXIST`, an id past the kernel's limit `EINVAL`.
   */
  createVcpu(id: number): Vcpu {
    const op = "KVM_CREATE_VCPU";
    this.fd(op);
    u32(op, "id", id);
    if (this.#vcpus.has(id)) throw new KvmError(op, Errno.EEXIST, `vCPU ${id} already exists`);
    const fd = this.ioctlVal(op, Ioctl.KVM_CREATE_VCPU, id, () => `vCPU id ${id}`);
    this.#vcpusCreated++;
    const vcpu = Vcpu.fromFd(fd, id, this.#vcpuMmapSize, () => this.#vcpuClosed(id), this.#life);
    vcpu.attachVm(this.fd(op)); // for the XSAVE2 size and nested state
    if (this.#dirtyRingBytes > 0) {
      try {
        const ring = DirtyRing.map(fd, this.#dirtyRingBytes, `vCPU ${id}`);
        this.#dirtyRings.set(id, ring);
        this.#dirtyRingList.push(ring);
      } catch (e) {
        vcpu.close();
        throw e;
      }
    }
    this.#vcpus.set(id, vcpu);
    return vcpu;
  }

  #vcpuClosed(id: number): void {
    this.#vcpus.delete(id);
    const ring = this.#dirtyRings.get(id);
    if (!ring) return;
    // Unmapped with its vCPU: views of the ring become empty, harvest throws EBADF.
    ring.close();
    this.#dirtyRings.delete(id);
    this.#dirtyRingList.splice(this.#dirtyRingList.indexOf(ring), 1);
  }

  /**
   * Turns on the dirty ring (`KVM_ENABLE_CAP` of `KVM_CAP_DIRTY_LOG_RING_ACQ_REL`,
   * else `KVM_CAP_DIRTY_LOG_RING`) with `bytes` per vCPU: a power of two, at
   * least a page, at most `checkExtension("DIRTY_LOG_RING")` (1 MiB: 65536
   * entries of 16 bytes). Only before the first vCPU is created, and once.
   * Each vCPU created afterwards gets a {@linkcode DirtyRing}
   * ({@linkcode dirtyRing}) listing the pages it writes in slots set with
   * `logDirtyPages`; {@linkcode getDirtyLog} is then refused by the kernel
   * (ENXIO on x86). When a ring is nearly full its vCPU's `run()` returns a
   * `"dirtyRingFull"` exit until the ring is harvested and
   * {@linkcode resetDirtyRings} is called. Without the capability:
   * KvmError(EOPNOTSUPP); use the bitmap.
   *
   * @example
   * ```ts
   * import { Kvm } from "@deno-kvm/kvm";
   * using kvm = Kvm.open();
   * using vm = kvm.createVm();
   * if (vm.checkExtension("DIRTY_LOG_RING") > 0) {
   *   vm.enableDirtyRing(64 * 1024); // 4096 entries per vCPU
   *   const ram = vm.allocateMemory(0x100000);
   *   vm.setUserMemoryRegion({
   *     slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram, logDirtyPages: true,
   *   });
   *   const vcpu = vm.createVcpu(0);
   *   // ... run the guest; then, on any thread:
   *   vm.dirtyRing(vcpu).harvest((slot, page) => console.log(`slot ${slot} page ${page}`));
   *   vm.resetDirtyRings();
   * }
   * ```
   */
  enableDirtyRing(bytes: number): void {
    const op = "KVM_ENABLE_CAP";
    this.fd(op);
    const cap = this.checkExtension("DIRTY_LOG_RING_ACQ_REL") > 0
      ? "DIRTY_LOG_RING_ACQ_REL"
      : "DIRTY_LOG_RING";
    const max = this.checkExtension(cap);
    const fail = (errno: number, detail: string): never => {
      throw new KvmError(op, errno, `dirty ring: ${detail}`);
    };
    if (max <= 0) {
      fail(Errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_DIRTY_LOG_RING; use getDirtyLog");
    }
    if (this.#dirtyRingBytes > 0) {
      fail(Errno.EINVAL, `already enabled with ${this.#dirtyRingBytes} bytes per vCPU`);
    }
    if (this.#vcpusCreated > 0) fail(Errno.EINVAL, "enable it before creating any vCPU");
    if (!Number.isInteger(bytes) || bytes < PAGE_SIZE || (bytes & (bytes - 1)) !== 0) {
      fail(Errno.EINVAL, `${bytes} bytes is not a power of two of at least a page`);
    }
    if (bytes > max) fail(Errno.E2BIG, `${bytes} bytes exceeds the kernel's ${max}`);
    this.enableCap(cap, [bytes]);
    this.#dirtyRingBytes = bytes;
  }

  /** Bytes of each vCPU's dirty ring; 0 until {@linkcode enableDirtyRing}. */
  get dirtyRingBytes(): number {
    return this.#dirtyRingBytes;
  }

  /**
   * The dirty ring of `vcpu` (a vCPU of this VM, or its id), mapped when the
   * vCPU was created and unmapped when it closes. EINVAL when the dirty ring
   * is not enabled, ENOENT for a vCPU this VM does not have open.
   */
  dirtyRing(vcpu: Vcpu | number): DirtyRing {
    const op = "dirty ring";
    this.fd(op);
    if (this.#dirtyRingBytes === 0) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        "the dirty ring is not enabled: enableDirtyRing(bytes) before creating vCPUs",
      );
    }
    const id = typeof vcpu === "number" ? vcpu : vcpu.id;
    const ring = this.#dirtyRings.get(id);
    if (!ring || (typeof vcpu !== "number" && this.#vcpus.get(id) !== vcpu)) {
      throw new KvmError(op, Errno.ENOENT, `vCPU ${id} is not an open vCPU of this VM`);
    }
    return ring;
  }

  /**
   * Harvests the dirty ring of every open vCPU ({@linkcode DirtyRing.harvest}
   * on each, in creation order) and returns the number of entries. Does not
   * reset: call {@linkcode resetDirtyRings} after. Allocates nothing.
   */
  harvestDirtyRings(visit?: DirtyPageVisitor): number {
    const rings = this.#dirtyRingList;
    let n = 0;
    for (let i = 0; i < rings.length; i++) n += rings[i].harvest(visit);
    return n;
  }

  /**
   * `KVM_RESET_DIRTY_RINGS`: recycles every harvested entry of every vCPU's
   * ring and write-protects those pages again, so that the guest's next write
   * to one is reported anew. Returns the number of entries reset. Entries not
   * yet harvested stay. A vCPU that exited with `"dirtyRingFull"` may run
   * again after this.
   */
  resetDirtyRings(): number {
    const op = "KVM_RESET_DIRTY_RINGS";
    this.fd(op);
    if (this.#dirtyRingBytes === 0) {
      throw new KvmError(op, Errno.EINVAL, "the dirty ring is not enabled (enableDirtyRing)");
    }
    return this.ioctlVal(op, Ioctl.KVM_RESET_DIRTY_RINGS, 0);
  }

  /** The vCPUs created and not closed, by id. */
  get vcpus(): ReadonlyMap<number, Vcpu> {
    return this.#vcpus;
  }

  /** `KVM_SET_TSS_ADDR`: three pages of guest physical space that Intel VMX needs for real mode. */
  setTssAddr(address: number): void {
    // The kernel keeps it in 32 bits (vmx_set_tss_addr takes an unsigned int).
    u32("KVM_SET_TSS_ADDR", "address", address);
    this.ioctlVal("KVM_SET_TSS_ADDR", Ioctl.KVM_SET_TSS_ADDR, address, () => hex(address));
  }

  /** `KVM_CREATE_IRQCHIP`: the in-kernel PIC pair, IOAPIC and per-vCPU LAPICs. */
  createIrqchip(): void {
    this.ioctlVal("KVM_CREATE_IRQCHIP", Ioctl.KVM_CREATE_IRQCHIP, 0);
  }

  /**
   * `KVM_CHECK_EXTENSION` on the VM fd (`KVM_CAP_CHECK_EXTENSION_VM`): what
   * this VM supports, which may differ from the system answer. Falls back to
   * the system fd when the kernel lacks VM-level checks.
   */
  checkExtension(cap: CapName | number): number {
    const number = typeof cap === "number" ? cap : Cap[cap];
    if (number === undefined) {
      throw new KvmError("KVM_CHECK_EXTENSION", Errno.EINVAL, `unknown capability ${cap}`);
    }
    u32("KVM_CHECK_EXTENSION", "capability", number);
    if (this.#vmChecks === undefined) {
      this.#vmChecks = this.kvm.checkExtension("CHECK_EXTENSION_VM") > 0;
    }
    if (!this.#vmChecks) return this.kvm.checkExtension(number);
    return this.ioctlVal("KVM_CHECK_EXTENSION", Ioctl.KVM_CHECK_EXTENSION, number);
  }

  /**
   * `KVM_ENABLE_CAP` on the VM fd: turns on a VM capability with up to four
   * arguments, e.g. `enableCap("MANUAL_DIRTY_LOG_PROTECT2", [1n])`.
   */
  enableCap(cap: CapName | number, args: readonly (bigint | number)[] = [], flags = 0): void {
    const op = "KVM_ENABLE_CAP";
    const number = typeof cap === "number" ? cap : Cap[cap];
    if (number === undefined) throw new KvmError(op, Errno.EINVAL, `unknown capability ${cap}`);
    u32(op, "capability", number);
    u32(op, "flags", flags);
    if (args.length > 4) {
      throw new KvmError(op, Errno.E2BIG, `${args.length} arguments; kvm_enable_cap has 4`);
    }
    const codec = this.#enableCap.clear();
    codec.cap = number;
    codec.flags = flags;
    args.forEach((a, i) => codec.args[i] = u64(op, `args[${i}]`, a));
    const name = typeof cap === "string" ? `KVM_CAP_${cap}` : `capability ${cap}`;
    this.ioctlPtr(op, Ioctl.KVM_ENABLE_CAP, this.#enableCapPtr, () => `${name}, args [${args}]`);
    if (number === Cap.MANUAL_DIRTY_LOG_PROTECT2) {
      this.#manualDirtyLogProtect = (BigInt(args[0] ?? 0) &
        BigInt(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) !== 0n;
    }
  }

  /**
   * `KVM_CREATE_PIT2`: the in-kernel i8254 timer (ports 0x40-0x43), wired to
   * GSI 0. Needs the irqchip first. `flags`: `KVM_PIT_SPEAKER_DUMMY` also
   * emulates port 0x61 in the kernel.
   */
  createPit2(options: { flags?: number } = {}): void {
    const config = new KvmPitConfig();
    config.flags = u32("KVM_CREATE_PIT2", "flags", options.flags ?? 0);
    this.ioctlPtr("KVM_CREATE_PIT2", Ioctl.KVM_CREATE_PIT2, pointerOf(config.bytes));
  }

  /** `KVM_GET_PIT2`: the PIT's three channels and flags (a new codec, or `into`). */
  getPit2(into: PitState2 = new KvmPitState2()): PitState2 {
    this.ioctlPtr("KVM_GET_PIT2", Ioctl.KVM_GET_PIT2, pointerOf(into.bytes));
    return into;
  }

  /** `KVM_SET_PIT2`. */
  setPit2(state: PitState2): void {
    this.ioctlPtr("KVM_SET_PIT2", Ioctl.KVM_SET_PIT2, pointerOf(state.bytes));
  }

  /**
   * `KVM_GET_IRQCHIP`: the state of one in-kernel chip: `KVM_IRQCHIP_PIC_MASTER`
   * (0), `KVM_IRQCHIP_PIC_SLAVE` (1) or `KVM_IRQCHIP_IOAPIC` (2). Read it
   * through `.pic` or `.ioapic`. Returns a new codec, or fills `into`.
   */
  getIrqchip(chipId: number, into: Irqchip = new KvmIrqchip()): Irqchip {
    const op = "KVM_GET_IRQCHIP";
    this.#checkChip(op, chipId);
    into.clear().chipId = chipId;
    this.ioctlPtr(op, Ioctl.KVM_GET_IRQCHIP, pointerOf(into.bytes), () => `chip ${chipId}`);
    return into;
  }

  /** `KVM_SET_IRQCHIP`: writes back a chip's state (usually one from {@linkcode getIrqchip}). */
  setIrqchip(chip: Irqchip): void {
    const op = "KVM_SET_IRQCHIP";
    this.#checkChip(op, chip.chipId);
    this.ioctlPtr(op, Ioctl.KVM_SET_IRQCHIP, pointerOf(chip.bytes), () => `chip ${chip.chipId}`);
  }

  #checkChip(op: string, chipId: number): void {
    // 0 (PIC master), 1 (PIC slave) or 2 (IOAPIC)
    index(op, "chip id", chipId, 3);
  }

  /**
   * `KVM_IRQ_LINE`: drives GSI `irq` to `level` on the in-kernel irqchip (by
   * default GSIs 0-15 reach both the PIC and the IOAPIC, 16-23 the IOAPIC). An
   * edge-triggered interrupt is a raise followed by a lower.
   */
  setIrqLine(irq: number, level: boolean | number): void {
    this.#irqLevel.irq = u32("KVM_IRQ_LINE", "irq", irq);
    this.#irqLevel.level = level ? 1 : 0;
    this.ioctlPtr("KVM_IRQ_LINE", Ioctl.KVM_IRQ_LINE, this.#irqLevelPtr, () => `GSI ${irq}`);
  }

  /**
   * `KVM_IRQ_LINE_STATUS`: like {@linkcode setIrqLine}, and returns the
   * kernel's delivery status: above 0, the number of CPUs it reached (or
   * simply "delivered"); 0, coalesced with one still pending; below 0, masked
   * or not delivered.
   */
  irqLineStatus(irq: number, level: boolean | number): number {
    this.#irqLevel.irq = u32("KVM_IRQ_LINE_STATUS", "irq", irq);
    this.#irqLevel.level = level ? 1 : 0;
    this.ioctlPtr(
      "KVM_IRQ_LINE_STATUS",
      Ioctl.KVM_IRQ_LINE_STATUS,
      this.#irqLevelPtr,
      () => `GSI ${irq}`,
    );
    return this.#irqLevel.status;
  }

  /**
   * `KVM_SIGNAL_MSI`: delivers one MSI to the in-kernel LAPICs. Returns more
   * than 0 when delivered, 0 when the guest blocked it.
   */
  signalMsi(msi: Msi): number {
    const op = "KVM_SIGNAL_MSI";
    u32(op, "addressLo", msi.addressLo);
    u32(op, "addressHi", msi.addressHi ?? 0);
    u32(op, "data", msi.data);
    if (msi.devid !== undefined) u32(op, "devid", msi.devid);
    const codec = this.#msi.clear().assign({
      addressLo: msi.addressLo,
      addressHi: msi.addressHi ?? 0,
      data: msi.data,
      flags: msi.devid !== undefined ? KVM_MSI_VALID_DEVID : 0,
      devid: msi.devid ?? 0,
    });
    return this.ioctlPtr(
      "KVM_SIGNAL_MSI",
      Ioctl.KVM_SIGNAL_MSI,
      pointerOf(codec.bytes),
      () => `address ${hex(msi.addressLo)}, data ${hex(msi.data)}`,
    );
  }

  /**
   * `KVM_SET_GSI_ROUTING`: replaces the whole GSI routing table (the default
   * table, which maps GSIs 0-15 to the PICs and 0-23 to the IOAPIC, is gone
   * afterwards unless repeated). A GSI may have several irqchip routes.
   */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    const op = "KVM_SET_GSI_ROUTING";
    const entrySize = KvmIrqRoutingEntry.size;
    const size = KvmIrqRouting.size + routes.length * entrySize;
    const bytes = new Uint8Array(new BigUint64Array(Math.ceil(size / 8)).buffer, 0, size);
    new KvmIrqRouting(bytes).nr = routes.length;
    routes.forEach((route, i) => {
      const at = KvmIrqRouting.size + i * entrySize;
      const entry = new KvmIrqRoutingEntry(bytes.subarray(at, at + entrySize));
      entry.gsi = u32(op, `route ${i}: gsi`, route.gsi);
      if (route.kind === "irqchip") {
        index(op, `route ${i}: irqchip`, route.irqchip, 3);
        u32(op, `route ${i}: pin`, route.pin);
        entry.assign({ type: KVM_IRQ_ROUTING_IRQCHIP, irqchip: route.irqchip, pin: route.pin });
      } else if (route.kind === "msi") {
        u32(op, `route ${i}: addressLo`, route.addressLo);
        u32(op, `route ${i}: addressHi`, route.addressHi ?? 0);
        u32(op, `route ${i}: data`, route.data);
        if (route.devid !== undefined) u32(op, `route ${i}: devid`, route.devid);
        entry.assign({
          type: KVM_IRQ_ROUTING_MSI,
          flags: route.devid !== undefined ? KVM_MSI_VALID_DEVID : 0,
          msiAddressLo: route.addressLo,
          msiAddressHi: route.addressHi ?? 0,
          msiData: route.data,
          msiDevid: route.devid ?? 0,
        });
      } else {
        const kind = (route as { kind: unknown }).kind;
        throw new KvmError(op, Errno.EINVAL, `route ${i}: unknown kind ${kind}`);
      }
    });
    this.ioctlPtr(op, Ioctl.KVM_SET_GSI_ROUTING, pointerOf(bytes), () => `${routes.length} routes`);
  }

  /**
   * `KVM_IRQFD`: a write to `eventFd` raises GSI `gsi` (an edge; with
   * `resampleFd`, a level held until the guest's EOI, which then signals
   * `resampleFd`). Works without a vCPU exit or an ioctl per interrupt.
   *
   * @example
   * ```ts
   * import { EventFd, Kvm } from "@deno-kvm/kvm";
   * using kvm = Kvm.open();
   * using vm = kvm.createVm();
   * vm.createIrqchip();
   * using irq = EventFd.create();
   * vm.registerIrqfd(irq, 17); // IOAPIC pin 17 in the default routing
   * irq.write(); // from any thread: the guest gets the interrupt its IOAPIC entry names
   * ```
   */
  registerIrqfd(eventFd: EventFd, gsi: number, options: IrqfdOptions = {}): void {
    const op = "KVM_IRQFD";
    const resample = options.resampleFd;
    this.#checkOpen(op, eventFd, resample);
    u32(op, "gsi", gsi);
    this.#irqfd.clear().assign({
      fd: eventFd.unsafeFd,
      gsi,
      flags: resample ? KVM_IRQFD_FLAG_RESAMPLE : 0,
      resamplefd: resample ? resample.unsafeFd : 0,
    });
    this.ioctlPtr(op, Ioctl.KVM_IRQFD, this.#irqfdPtr, () => `GSI ${gsi}`);
  }

  /** `KVM_IRQFD` with `KVM_IRQFD_FLAG_DEASSIGN`: removes a binding made by {@linkcode registerIrqfd}. */
  unregisterIrqfd(eventFd: EventFd, gsi: number): void {
    const op = "KVM_IRQFD";
    this.#checkOpen(op, eventFd);
    u32(op, "gsi", gsi);
    this.#irqfd.clear().assign({ fd: eventFd.unsafeFd, gsi, flags: KVM_IRQFD_FLAG_DEASSIGN });
    this.ioctlPtr(op, Ioctl.KVM_IRQFD, this.#irqfdPtr, () => `unbind GSI ${gsi}`);
  }

  /**
   * `KVM_IOEVENTFD`: a guest write to `address` (a guest physical address, or
   * a port with `pio`) signals `eventFd` in the kernel instead of exiting to
   * userspace; with `datamatch`, only writes of that value do, others exit as
   * usual.
   *
   * @example
   * ```ts
   * import { EventFd, Kvm } from "@deno-kvm/kvm";
   * using kvm = Kvm.open();
   * using vm = kvm.createVm();
   * using doorbell = EventFd.create();
   * vm.registerIoevent(doorbell, 0xd0000000, { datamatch: 1, length: 4 });
   * // ... run the guest; later, without any exit having happened:
   * if (doorbell.read() > 0n) console.log("the guest rang");
   * ```
   */
  registerIoevent(eventFd: EventFd, address: number | bigint, options: IoeventOptions = {}): void {
    this.#ioeventfd("register", eventFd, address, options, 0);
  }

  /** `KVM_IOEVENTFD` with `KVM_IOEVENTFD_FLAG_DEASSIGN`: the same arguments as when registered. */
  unregisterIoevent(
    eventFd: EventFd,
    address: number | bigint,
    options: IoeventOptions = {},
  ): void {
    this.#ioeventfd("unregister", eventFd, address, options, KVM_IOEVENTFD_FLAG_DEASSIGN);
  }

  #ioeventfd(
    what: string,
    eventFd: EventFd,
    address: number | bigint,
    options: IoeventOptions,
    extraFlags: number,
  ): void {
    const op = "KVM_IOEVENTFD";
    this.#checkOpen(op, eventFd);
    const hasMatch = options.datamatch !== undefined;
    const length = options.length ?? (hasMatch ? 4 : 0);
    const addr = options.pio ? upTo(op, "port", address, 0xffffn) : u64(op, "address", address);
    const datamatch = hasMatch ? u64(op, "datamatch", options.datamatch!) : 0n;
    const where = `${options.pio ? "port" : "address"} ${hex(address)}`;
    if (![0, 1, 2, 4, 8].includes(length)) {
      throw new KvmError(op, Errno.EINVAL, `${where}: length ${length} is not 0, 1, 2, 4 or 8`);
    }
    if (hasMatch && length === 0) {
      throw new KvmError(op, Errno.EINVAL, `${where}: datamatch needs a length of 1, 2, 4 or 8`);
    }
    const flags = (hasMatch ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) |
      (options.pio ? KVM_IOEVENTFD_FLAG_PIO : 0) | extraFlags;
    this.#ioevent.clear().assign({
      datamatch,
      addr,
      len: length,
      fd: eventFd.unsafeFd,
      flags,
    });
    this.ioctlPtr(op, Ioctl.KVM_IOEVENTFD, this.#ioeventPtr, () => `${what} ${where}`);
  }

  #checkOpen(op: string, ...fds: (EventFd | undefined)[]): void {
    for (const fd of fds) {
      if (fd?.closed) throw new KvmError(op, Errno.EBADF, "the EventFd is closed");
    }
  }

  /**
   * `KVM_REGISTER_COALESCED_MMIO`: guest writes to `[address, address + size)`
   * (which must not be RAM) queue in the ring read by {@linkcode coalescedRing}
   * instead of exiting. Reads from the zone still exit.
   */
  registerCoalescedMmio(address: number | bigint, size: number): void {
    this.#coalesced("KVM_REGISTER_COALESCED_MMIO", address, size, false);
  }

  /** `KVM_UNREGISTER_COALESCED_MMIO`: removes a zone given to {@linkcode registerCoalescedMmio}. */
  unregisterCoalescedMmio(address: number | bigint, size: number): void {
    this.#coalesced("KVM_UNREGISTER_COALESCED_MMIO", address, size, false);
  }

  /** A coalesced port-I/O zone (`KVM_CAP_COALESCED_PIO`): OUTs to these ports queue in the ring. */
  registerCoalescedPio(port: number, size: number): void {
    this.#coalesced("KVM_REGISTER_COALESCED_MMIO", port, size, true);
  }

  /** Removes a zone given to {@linkcode registerCoalescedPio}. */
  unregisterCoalescedPio(port: number, size: number): void {
    this.#coalesced("KVM_UNREGISTER_COALESCED_MMIO", port, size, true);
  }

  #coalesced(op: string, address: number | bigint, size: number, pio: boolean): void {
    this.fd(op);
    const cap = pio ? "COALESCED_PIO" : "COALESCED_MMIO";
    if (this.checkExtension(cap) <= 0) {
      throw new KvmError(op, Errno.EOPNOTSUPP, `the kernel lacks KVM_CAP_${cap}`);
    }
    if (!Number.isInteger(size) || size <= 0 || size > 0xffffffff) {
      throw new KvmError(op, Errno.EINVAL, `zone size ${size} is not a positive 32-bit size`);
    }
    const addr = pio ? upTo(op, "port", address, 0xffffn) : u64(op, "address", address);
    const zone = new KvmCoalescedMmioZone().assign({
      addr,
      size,
      pio: pio ? 1 : 0,
    });
    const request = op === "KVM_REGISTER_COALESCED_MMIO"
      ? Ioctl.KVM_REGISTER_COALESCED_MMIO
      : Ioctl.KVM_UNREGISTER_COALESCED_MMIO;
    this.ioctlPtr(
      op,
      request,
      pointerOf(zone.bytes),
      () => `${pio ? "ports" : "MMIO"} ${hex(address)}+${hex(size)}`,
    );
  }

  /**
   * The coalesced MMIO/PIO ring. The kernel shares it through every vCPU's
   * mapping (at the page `checkExtension("COALESCED_MMIO")` names), so this
   * needs a vCPU; the reader stays valid while that vCPU (the lowest id when
   * called) is open.
   */
  coalescedRing(): CoalescedRing {
    const op = "coalesced ring";
    this.fd(op);
    const page = this.kvm.checkExtension("COALESCED_MMIO");
    if (page <= 0) {
      throw new KvmError(op, Errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_COALESCED_MMIO");
    }
    const ids = [...this.#vcpus.keys()].sort((a, b) => a - b);
    if (ids.length === 0) {
      throw new KvmError(
        op,
        Errno.ENODEV,
        "create a vCPU first: the ring is mapped through a vCPU fd",
      );
    }
    return new CoalescedRing(this.#vcpus.get(ids[0])!.mappedPage(page));
  }

  #loggedSlot(op: string, slot: number): MemorySlot {
    u32(op, "slot", slot);
    const s = this.#slots.get(slot);
    if (!s) {
      const known = [...this.#slots.keys()].join(", ") || "none";
      throw new KvmError(op, Errno.ENOENT, `slot ${slot} is not set (slots: ${known})`);
    }
    if (!(s.flags & KVM_MEM_LOG_DIRTY_PAGES)) {
      throw new KvmError(
        op,
        Errno.ENOENT,
        `slot ${slot} has no dirty log: set it with logDirtyPages: true`,
      );
    }
    return s;
  }

  /** Bytes of a bitmap with one bit per page of a slot, as the kernel wants it (64-bit words). */
  static bitmapBytes(memorySize: number): number {
    return Math.ceil(memorySize / PAGE_SIZE / 64) * 8;
  }

  /**
   * `KVM_GET_DIRTY_LOG`: a bitmap with one bit per page of `slot` (bit `n % 8`
   * of byte `n >> 3` is page `n` of the slot), set for pages written since
   * the last call; {@linkcode bitmapPages} lists them. Without manual protect
   * the call also resets the log; with `MANUAL_DIRTY_LOG_PROTECT2` enabled it
   * does not, and {@linkcode clearDirtyLog} does. The slot must have been set
   * with `logDirtyPages` (else ENOENT, as from the kernel).
   *
   * @example
   * ```ts
   * import { bitmapPages, Kvm } from "@deno-kvm/kvm";
   * using kvm = Kvm.open();
   * using vm = kvm.createVm();
   * const ram = vm.allocateMemory(0x100000);
   * vm.setUserMemoryRegion({
   *   slot: 0, guestPhysAddr: 0, memorySize: ram.size, memory: ram, logDirtyPages: true,
   * });
   * // ... run the guest ...
   * for (const page of bitmapPages(vm.getDirtyLog(0))) console.log(`page ${page} changed`);
   * ```
   */
  getDirtyLog(slot: number, into?: Uint8Array): Uint8Array {
    const op = "KVM_GET_DIRTY_LOG";
    this.fd(op);
    const s = this.#loggedSlot(op, slot);
    const size = Vm.bitmapBytes(s.memorySize);
    const bitmap = into ?? new Uint8Array(new BigUint64Array(size / 8).buffer);
    if (bitmap.byteLength < size) {
      throw new KvmError(op, Errno.EINVAL, `slot ${slot} needs a ${size}-byte bitmap`);
    }
    // The bitmap's address is computed once per bitmap: a caller that passes
    // the same `into` on every call (a live-migration loop) allocates nothing.
    if (bitmap !== this.#lastBitmap) {
      this.#lastBitmap = bitmap;
      this.#lastBitmapAddress = BigInt(Deno.UnsafePointer.value(pointerOf(bitmap)));
    }
    this.#dirtyLog.slot = slot;
    this.#dirtyLog.dirtyBitmap = this.#lastBitmapAddress;
    this.ioctlPtr(
      op,
      Ioctl.KVM_GET_DIRTY_LOG,
      this.#dirtyLogPtr,
      () => `slot ${slot}${this.#dirtyRingBytes > 0 ? " (the dirty ring is on: harvest it)" : ""}`,
    );
    return bitmap;
  }

  /**
   * `KVM_CLEAR_DIRTY_LOG`: marks pages of `slot` clean and write-protects
   * them again, so the next write is logged. Needs
   * `enableCap("MANUAL_DIRTY_LOG_PROTECT2", [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE])`.
   * `firstPage` and `numPages` must be multiples of 64 unless the range ends
   * at the slot's end; `bitmap` (bit 0 is `firstPage`) selects the pages,
   * default all of them.
   */
  clearDirtyLog(slot: number, firstPage = 0, numPages?: number, bitmap?: Uint8Array): void {
    const op = "KVM_CLEAR_DIRTY_LOG";
    this.fd(op);
    const s = this.#loggedSlot(op, slot);
    if (!this.#manualDirtyLogProtect) {
      throw new KvmError(
        op,
        Errno.EINVAL,
        'manual dirty-log protection is off: enableCap("MANUAL_DIRTY_LOG_PROTECT2", [1]) first',
      );
    }
    const pages = s.memorySize / PAGE_SIZE;
    const count = numPages ?? pages - firstPage;
    const fail = (detail: string): never => {
      throw new KvmError(op, Errno.EINVAL, `slot ${slot}: ${detail}`);
    };
    if (!Number.isInteger(firstPage) || firstPage < 0 || firstPage % 64 !== 0) {
      fail(`first page ${firstPage} is not a multiple of 64`);
    }
    if (!Number.isInteger(count) || count < 0 || firstPage + count > pages) {
      fail(`pages ${firstPage}..${firstPage + count} exceed the slot's ${pages} pages`);
    }
    if (count % 64 !== 0 && firstPage + count !== pages) {
      fail(`${count} pages is not a multiple of 64 and does not reach the slot's end`);
    }
    const size = Math.ceil(count / 64) * 8;
    let map = bitmap;
    if (!map) {
      map = new Uint8Array(new BigUint64Array(size / 8).buffer);
      map.fill(0xff);
    } else if (map.byteLength < size) {
      fail(`the bitmap has ${map.byteLength} bytes, ${count} pages need ${size}`);
    }
    this.#clearLog.assign({
      slot,
      numPages: count,
      firstPage: BigInt(firstPage),
      dirtyBitmap: BigInt(Deno.UnsafePointer.value(pointerOf(map!))),
    });
    this.ioctlPtr(op, Ioctl.KVM_CLEAR_DIRTY_LOG, this.#clearLogPtr, () => `slot ${slot}`);
  }

  /**
   * Which pages of a slot's host memory are resident (`mincore(2)`), as a
   * bitmap in the dirty log's format: libkvm's `kvm_get_mem_map`. Pages the
   * guest or the host never touched are not allocated.
   */
  getMemMap(slot: number): Uint8Array {
    const op = "mincore guest memory";
    this.fd(op);
    u32(op, "slot", slot);
    const s = this.#slots.get(slot);
    if (!s) throw new KvmError(op, Errno.ENOENT, `slot ${slot} is not set`);
    const pages = s.memorySize / PAGE_SIZE;
    const vec = new Uint8Array(pages);
    unwrap(
      native().kvm_mincore(Deno.UnsafePointer.create(s.userspaceAddr), BigInt(s.memorySize), vec),
      op,
      () => `slot ${slot} at host ${hex(s.userspaceAddr)}`,
    );
    const bitmap = new Uint8Array(Vm.bitmapBytes(s.memorySize));
    for (let i = 0; i < pages; i++) if (vec[i] & 1) bitmap[i >> 3] |= 1 << (i & 7);
    return bitmap;
  }

  /**
   * `KVM_SET_IDENTITY_MAP_ADDR`: one page of guest physical space for the
   * identity page table Intel VMX needs in real mode (default 0xfffbc000).
   * Call before creating vCPUs (the kernel refuses with EINVAL after).
   */
  setIdentityMapAddr(address: number | bigint): void {
    this.#u64[0] = u64("KVM_SET_IDENTITY_MAP_ADDR", "address", address);
    this.ioctlPtr(
      "KVM_SET_IDENTITY_MAP_ADDR",
      Ioctl.KVM_SET_IDENTITY_MAP_ADDR,
      this.#u64Ptr,
      () => hex(address),
    );
  }

  /** `KVM_GET_CLOCK`: the VM's kvmclock in nanoseconds, with flags (a new codec, or `into`). */
  getClock(into: ClockData = new KvmClockData()): ClockData {
    this.ioctlPtr("KVM_GET_CLOCK", Ioctl.KVM_GET_CLOCK, pointerOf(into.bytes));
    return into;
  }

  /**
   * `KVM_SET_CLOCK`: sets the kvmclock (`clock`, in ns); with `KVM_CLOCK_REALTIME`
   * in `flags` the kernel advances it by the time elapsed since `realtime`.
   */
  setClock(data: ClockData | { clock: bigint; flags?: number; realtime?: bigint }): void {
    const op = "KVM_SET_CLOCK";
    const codec = data instanceof KvmClockData ? data : new KvmClockData().assign({
      clock: u64(op, "clock", data.clock),
      flags: u32(op, "flags", data.flags ?? 0),
      realtime: u64(op, "realtime", data.realtime ?? 0n),
    });
    this.ioctlPtr(op, Ioctl.KVM_SET_CLOCK, pointerOf(codec.bytes));
  }

  /**
   * `KVM_SET_NR_MMU_PAGES`: caps the pages the shadow MMU may use (libkvm's
   * `kvm_set_shadow_pages`); at least 64.
   */
  setNrMmuPages(pages: number): void {
    u64("KVM_SET_NR_MMU_PAGES", "pages", pages);
    this.ioctlVal("KVM_SET_NR_MMU_PAGES", Ioctl.KVM_SET_NR_MMU_PAGES, pages, () => `${pages}`);
  }

  /** `KVM_GET_NR_MMU_PAGES`: the shadow MMU's page cap (libkvm's `kvm_get_shadow_pages`). */
  getNrMmuPages(): number {
    return this.ioctlVal("KVM_GET_NR_MMU_PAGES", Ioctl.KVM_GET_NR_MMU_PAGES, 0);
  }

  /**
   * `KVM_CREATE_DEVICE`: a kernel device of type `KVM_DEV_TYPE_*`, owned by
   * this VM (closed with it). ENODEV when the kernel has no such device type.
   */
  createDevice(type: number): Device {
    const op = "KVM_CREATE_DEVICE";
    u32(op, "type", type);
    const codec = new KvmCreateDevice().assign({ type, flags: 0 });
    this.ioctlPtr(op, Ioctl.KVM_CREATE_DEVICE, pointerOf(codec.bytes), () => `type ${type}`);
    const device = Device.fromFd(codec.fd, type, () => this.#devices.delete(device));
    this.#devices.add(device);
    return device;
  }

  /** `KVM_CREATE_DEVICE` with `KVM_CREATE_DEVICE_TEST`: whether the type could be created. */
  supportsDevice(type: number): boolean {
    const op = "KVM_CREATE_DEVICE";
    u32(op, "type", type);
    const codec = new KvmCreateDevice().assign({ type, flags: KVM_CREATE_DEVICE_TEST });
    const result = native().kvm_ioctl_ptr(
      this.fd(op),
      Ioctl.KVM_CREATE_DEVICE,
      pointerOf(codec.bytes),
    );
    if (result === -Errno.ENODEV) return false;
    unwrap(result, op, () => `test type ${type}`);
    return true;
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    for (const device of [...this.#devices]) device.close();
    for (const vcpu of [...this.#vcpus.values()]) vcpu.close();
    this.#slots.clear();
    // Only the views go here: the memory is unmapped by the lifetime record, once the
    // kernel has dropped the slots (VM fd and every vCPU fd closed) and no thread uses it.
    this.#closingMemories = true;
    for (const memory of this.#memories) memory.close();
    this.#closingMemories = false;
    this.#memories.clear();
    this.#onClose();
  }

  /** The VM fd goes to the lifetime record: closed when the VM's last user is done. */
  protected override closeFd(_fd: number): void {
    this.#life.closeVm();
  }

  /**
   * Closes the VM and its vCPUs; the memory it allocated is unmapped once no
   * thread uses the VM any more (at once when none does).
   */
  override close(): void {
    super.close();
  }
}
