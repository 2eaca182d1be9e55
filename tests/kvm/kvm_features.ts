// Tests ask the KVM they run on for what they need: a capability, a CPUID
// bit, or a probe guest run under a short watchdog. A test whose need is
// missing is registered as ignored and prints `SKIP <name> :: <reason>`, which
// tests/run.ts collects per target (and, with KVM_TESTS=required, checks
// that the test passed on another target). Never a KVM's name.

import { type CapName, Kvm, KvmError, setupRealMode, type Vcpu, type VcpuExit } from "../../mod.ts";
import { measureGuestSpeed } from "../../src/vmm.ts";

/** Registers a test that runs only when `missing` is undefined; otherwise prints why it skips. */
export function featureTest(name: string, missing: string | undefined, fn: () => unknown): void {
  if (missing !== undefined) console.log(`SKIP ${name} :: ${missing}`);
  Deno.test({ name, ignore: missing !== undefined, fn: fn as () => void | Promise<void> });
}

/**
 * For a need that only running can reveal (a Linux boot): says why the test
 * skips; the caller then returns. tests/run.ts counts it as skipped.
 */
export function skipWhileRunning(t: Deno.TestContext, why: string): void {
  console.log(`SKIP ${t.name} :: ${why}`);
}

/** Why a capability is missing, or undefined when `KVM_CHECK_EXTENSION` reports it. */
export function lacksCap(cap: CapName): string | undefined {
  using kvm = Kvm.open();
  return kvm.checkExtension(cap) > 0 ? undefined : `this KVM lacks KVM_CAP_${cap}`;
}

/** Why 1 GiB pages are missing: the supported CPUID lacks pdpe1gb (0x80000001 EDX bit 26). */
export function lacksGiantPages(): string | undefined {
  using kvm = Kvm.open();
  const ext = kvm.getSupportedCpuid().find((e) => e.function === 0x80000001);
  return ext && ext.edx & (1 << 26)
    ? undefined
    : "this KVM's supported CPUID has no 1 GiB pages (leaf 0x80000001 EDX bit 26)";
}

/** How long a probe guest may run before it counts as "never returned". */
export const PROBE_MS = 3_000;

/**
 * Runs `code` in real mode at 0x1000 (64 KiB of RAM, stack at 0x8000) until
 * its first exit that is not port output, under a {@linkcode PROBE_MS}
 * watchdog. Returns the exit, or "timeout" when KVM_RUN did not return.
 */
export function probeGuest(
  code: number[],
  prepare?: (vcpu: Vcpu) => void,
): { exit?: VcpuExit; outcome: string } {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  const ram = vm.allocateMemory(0x10000);
  vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x10000, memory: ram });
  ram.bytes.set(code, 0x1000);
  const vcpu = vm.createVcpu(0);
  setupRealMode(vcpu, { entry: 0x1000, stack: 0x8000 });
  prepare?.(vcpu);
  vcpu.setWatchdog(PROBE_MS);
  try {
    for (let i = 0; i < 100; i++) {
      const exit = vcpu.run();
      if (exit.reason === "io" && exit.direction === "out") continue;
      return { exit, outcome: exit.reason };
    }
    return { outcome: "100 port writes" };
  } catch (e) {
    if (e instanceof KvmError && e.code === "ETIMEDOUT") return { outcome: "timeout" };
    throw e;
  } finally {
    vcpu.setWatchdog(null);
  }
}

let tripleFault: string | undefined | null = null;

/**
 * Why a triple fault does not end `KVM_RUN` with `KVM_EXIT_SHUTDOWN` here
 * (kvm_pvm never returns), found with a probe guest; cached per process.
 */
export function lacksTripleFaultExit(): string | undefined {
  if (tripleFault !== null) return tripleFault;
  // deno-fmt-ignore
  const { outcome } = probeGuest([
    0x0f, 0x01, 0x1e, 0x00, 0x06, // lidt [0x600]   ; an empty IDT (the RAM there is zero)
    0xcc,                         // int3           ; #BP → #GP → double fault → triple fault
  ]);
  tripleFault = outcome === "shutdown"
    ? undefined
    : `a triple fault gives "${outcome}" ${
      outcome === "timeout" ? `(KVM_RUN did not return within ${PROBE_MS} ms) ` : ""
    }instead of a shutdown exit`;
  return tripleFault;
}

let mips: number | null = null;

/**
 * Millions of guest instructions per second this KVM runs in a tight loop
 * (`measureGuestSpeed`): about 1 where the KVM emulates guest code (kvm_pvm),
 * about 15 in the sandbox, hundreds on hardware. Cached per process.
 */
export function guestMips(): number {
  mips ??= measureGuestSpeed().mips;
  return mips;
}
