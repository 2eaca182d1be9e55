/**
 * Host memory that backs guest RAM: an anonymous mapping seen from JavaScript
 * as a `Uint8Array` without any copy.
 *
 * @module
 */

import { Errno, KvmError, unwrap } from "../errors.ts";
import { HostMapping } from "./host_mapping.ts";
import { native } from "../ffi/library.ts";
import {
  HUGE_PAGE_SIZE,
  MADV_HUGEPAGE,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
} from "./constants.ts";

/** Options of {@linkcode GuestMemory.allocate}. */
export interface GuestMemoryOptions {
  /**
   * Share the pages (MAP_SHARED) instead of a private mapping. Either works
   * for KVM; shared pages survive a fork of the process.
   */
  shared?: boolean;
  /**
   * Back the memory with transparent huge pages where the kernel can (default
   * true for sizes of 2 MiB and more): the mapping starts on a 2 MiB boundary
   * and is advised `MADV_HUGEPAGE`, so KVM can map guest RAM in 2 MiB pages
   * (one fault per 2 MiB instead of 512, and fewer TLB misses). The advice is
   * best effort: a kernel without transparent huge pages uses small pages.
   */
  hugePages?: boolean;
}

/** @internal Something that may put guest memory in memory slots (a `Vm`). */
export interface SlotUser {
  /** The slots that use `memory` now (or may, as far as the kernel knows). */
  slotsUsing(memory: GuestMemory): number[];
}

/**
 * A page-aligned anonymous mapping. Pages are reserved lazily (MAP_NORESERVE),
 * so a large guest costs only what it touches. {@linkcode close} is refused
 * with `EBUSY` while a memory slot uses the memory (the kernel would keep its
 * address, and a later mapping there would become guest RAM): remove the
 * slots or close their VM first (the VM does this for memory it allocated).
 *
 * @example
 * ```ts
 * import { GuestMemory } from "@deno-kvm/kvm";
 * using ram = GuestMemory.allocate(2 * 1024 * 1024);
 * ram.bytes.set([0xf4], 0); // hlt
 * ```
 */
export class GuestMemory extends HostMapping {
  /** Names the mapping in error messages. */
  protected readonly kind = "guest memory";

  #users = new Set<SlotUser>();

  private constructor(address: bigint, size: number) {
    super(address, size);
  }

  /** @internal A VM that puts this memory in slots registers itself here. */
  addSlotUser(user: SlotUser): void {
    this.#users.add(user);
  }

  /**
   * Unmaps the memory (see {@linkcode HostMapping.close}); a KvmError with
   * `EBUSY` naming the slots while memory slots still use it.
   */
  override close(): void {
    if (this.closed) return;
    for (const user of this.#users) {
      const slots = user.slotsUsing(this);
      if (slots.length > 0) {
        throw new KvmError(
          "munmap guest memory",
          Errno.EBUSY,
          `still used by memory slot ${slots.join(", ")}: remove the slot or close its VM first`,
        );
      }
    }
    this.#users.clear();
    super.close();
  }

  /** Maps `size` bytes (a positive multiple of 4096) of zeroed memory. */
  static allocate(size: number, options: GuestMemoryOptions = {}): GuestMemory {
    const operation = "mmap guest memory";
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new KvmError(
        operation,
        Errno.EINVAL,
        `size ${size} is not a positive multiple of the ${PAGE_SIZE}-byte page`,
      );
    }
    const out = new BigUint64Array(1);
    const flags = (options.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_NORESERVE;
    const huge = (options.hugePages ?? true) && size >= HUGE_PAGE_SIZE;
    // For huge pages the host address must be 2 MiB aligned (KVM maps a huge
    // page only where guest and host addresses agree modulo 2 MiB): reserve a
    // little more, then give back the unaligned head and the tail.
    const length = huge ? size + HUGE_PAGE_SIZE : size;
    unwrap(
      native().kvm_mmap(-1, BigInt(length), PROT_READ | PROT_WRITE, flags, 0n, out),
      operation,
      () => `${size} bytes`,
    );
    if (huge) {
      const start = out[0];
      const aligned = (start + BigInt(HUGE_PAGE_SIZE - 1)) & ~BigInt(HUGE_PAGE_SIZE - 1);
      const head = aligned - start;
      const tail = BigInt(length) - head - BigInt(size);
      if (head > 0n) native().kvm_munmap(Deno.UnsafePointer.create(start), head);
      if (tail > 0n) {
        native().kvm_munmap(Deno.UnsafePointer.create(aligned + BigInt(size)), tail);
      }
      native().kvm_madvise(Deno.UnsafePointer.create(aligned), BigInt(size), MADV_HUGEPAGE);
      out[0] = aligned;
    }
    return new GuestMemory(out[0], size);
  }
}
