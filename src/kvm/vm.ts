/**
 * The VM object: memory slots, vCPUs, VM-wide devices.
 *
 * @module
 */

import * as Ioctl from "../abi/ioctls.ts";
import {
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KvmUserspaceMemoryRegion,
} from "../abi/memory.ts";
import { Errno, KvmError } from "../errors.ts";
import { hex, PAGE_SIZE } from "./constants.ts";
import { GuestMemory, type GuestMemoryOptions } from "./guest_memory.ts";
import type { Kvm } from "./kvm.ts";
import { OwnedFd, pointerOf } from "./owned_fd.ts";
import { Vcpu } from "./vcpu.ts";

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
}

/**
 * A virtual machine (`KVM_CREATE_VM`).
 *
 * @example
 * ```ts
 * import { Kvm } from "../../mod.ts";
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
  #vcpuMmapSize: number;
  #maxSlots: number;

  private constructor(fd: number, kvm: Kvm, onClose: () => void) {
    super(fd);
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
   * Allocates host memory for guest RAM, owned by this VM (unmapped when the
   * VM closes, after its slots are gone).
   */
  allocateMemory(size: number, options?: GuestMemoryOptions): GuestMemory {
    this.fd("allocate guest memory");
    const memory = GuestMemory.allocate(size, options);
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
        address = region.userspaceAddr;
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
      (region.readonly ? KVM_MEM_READONLY : 0);
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
    if (size === 0) this.#slots.delete(slot);
    else this.#slots.set(slot, { slot, guestPhysAddr: gpa, memorySize: size, bytes, flags });
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

  /** Copies `data` into guest RAM at `gpa` (see {@linkcode guestMemory}). */
  writeGuest(gpa: number, data: ArrayLike<number>): void {
    this.guestMemory(gpa, data.length).set(data);
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
    if (this.#vcpus.has(id)) throw new KvmError(op, Errno.EEXIST, `vCPU ${id} already exists`);
    if (!Number.isInteger(id) || id < 0) {
      throw new KvmError(op, Errno.EINVAL, `vCPU id ${id} is not a non-negative integer`);
    }
    const fd = this.ioctlVal(op, Ioctl.KVM_CREATE_VCPU, id, () => `vCPU id ${id}`);
    const vcpu = Vcpu.fromFd(fd, id, this.#vcpuMmapSize, () => this.#vcpus.delete(id));
    this.#vcpus.set(id, vcpu);
    return vcpu;
  }

  /** The vCPUs created and not closed, by id. */
  get vcpus(): ReadonlyMap<number, Vcpu> {
    return this.#vcpus;
  }

  /** `KVM_SET_TSS_ADDR`: three pages of guest physical space that Intel VMX needs for real mode. */
  setTssAddr(address: number): void {
    this.ioctlVal("KVM_SET_TSS_ADDR", Ioctl.KVM_SET_TSS_ADDR, address, () => hex(address));
  }

  /** `KVM_CREATE_IRQCHIP`: the in-kernel PIC pair, IOAPIC and per-vCPU LAPICs. */
  createIrqchip(): void {
    this.ioctlVal("KVM_CREATE_IRQCHIP", Ioctl.KVM_CREATE_IRQCHIP, 0);
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    for (const vcpu of [...this.#vcpus.values()]) vcpu.close();
    this.#slots.clear();
    this.#onClose();
  }

  /** Closes the VM, its vCPUs, and then unmaps the memory it allocated. */
  override close(): void {
    if (this.closed) return;
    super.close();
    // The kernel drops its slots with the VM fd; only now is unmapping safe.
    for (const memory of this.#memories) memory.close();
    this.#memories.clear();
  }
}
