/**
 * How fast this KVM runs guest code: a tight loop measured once. On hardware
 * VMX/SVM the CPU runs it (hundreds to thousands of MIPS); QEMU's JIT under a
 * nested KVM manages about 15; a software KVM that emulates every guest
 * instruction (`kvm_pvm`) about 1, where a Linux boot takes an hour. Tools use
 * the figure to decide whether booting Linux here is practical.
 *
 * @module
 */

import { KvmError } from "../errors.ts";
import { Kvm } from "../kvm/kvm.ts";
import { setupRealMode } from "./modes.ts";

/** Below this many guest MIPS, {@linkcode linuxBootPractical} says no. */
export const LINUX_BOOT_MIN_MIPS = 5;

/** What {@linkcode measureGuestSpeed} found. */
export interface GuestSpeed {
  /** Millions of guest instructions per second (0 when the loop did not finish in time). */
  mips: number;
  /** How long the measurement ran, ms. */
  ms: number;
}

const LOOPS = 200_000;

/**
 * Runs `mov ecx, 200000; dec ecx; jnz; hlt` (400,000 instructions) in real
 * mode on a fresh VM under a `timeoutMs` watchdog (default 3,000) and returns
 * the rate. Opens `/dev/kvm` unless given a `Kvm`; throws `KvmError` when KVM
 * cannot be used at all.
 *
 * @example
 * ```ts ignore
 * import { measureGuestSpeed } from "@deno-kvm/kvm/vmm";
 * console.log(measureGuestSpeed().mips.toFixed(1), "MIPS");
 * ```
 */
export function measureGuestSpeed(options: { kvm?: Kvm; timeoutMs?: number } = {}): GuestSpeed {
  const kvm = options.kvm ?? Kvm.open();
  try {
    using vm = kvm.createVm();
    const ram = vm.allocateMemory(0x10000);
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
    // deno-fmt-ignore
    ram.bytes.set([
      0x66, 0xb9, LOOPS & 0xff, (LOOPS >> 8) & 0xff, (LOOPS >> 16) & 0xff, 0, // mov ecx, LOOPS
      0x66, 0x49,                                                             // dec ecx
      0x75, 0xfc,                                                             // jnz .-4 (the dec)
      0xf4,                                                                   // hlt
    ], 0x1000);
    const vcpu = vm.createVcpu(0);
    setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
    vcpu.setWatchdog(options.timeoutMs ?? 3_000);
    const t0 = performance.now();
    try {
      const exit = vcpu.run();
      const ms = performance.now() - t0;
      return { mips: exit.reason === "hlt" ? (2 * LOOPS) / ms / 1000 : 0, ms };
    } catch (e) {
      if (e instanceof KvmError && e.code === "ETIMEDOUT") {
        return { mips: 0, ms: performance.now() - t0 };
      }
      throw e;
    } finally {
      vcpu.setWatchdog(null);
    }
  } finally {
    if (!options.kvm) kvm.close();
  }
}

/**
 * Whether booting Linux on this KVM finishes in practical time (seconds to a
 * minute, not an hour): its guest speed is at least
 * {@linkcode LINUX_BOOT_MIN_MIPS}. Returns the measurement with the answer.
 */
export function linuxBootPractical(
  options: { kvm?: Kvm } = {},
): GuestSpeed & { practical: boolean } {
  const speed = measureGuestSpeed(options);
  return { ...speed, practical: speed.mips >= LINUX_BOOT_MIN_MIPS };
}
