/**
 * Finishing, in the VMM, the few instructions a KVM's instruction emulator
 * gives up on although the CPU's behaviour is simple: used by
 * `LinuxMachine`'s run loop on a KVM internal error. On hardware
 * VMX/SVM these instructions run natively and never get here.
 *
 * @module
 */

import { type InternalErrorExit, KVM_INTERNAL_ERROR_EMULATION } from "../kvm/exit.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";

/** Injects exception `vector` (no error code) with `KVM_SET_VCPU_EVENTS`. */
function injectException(vcpu: Vcpu, vector: number): void {
  const events = vcpu.getVcpuEvents();
  events.exceptionInjected = 1;
  events.exceptionPending = 0;
  events.exceptionNr = vector;
  events.exceptionHasErrorCode = 0;
  vcpu.setVcpuEvents(events);
}

const CR0_MP = 1n << 1n;
const CR0_TS = 1n << 3n;
/** FSW.ES: an unmasked x87 exception is pending. */
const FSW_ES = 1 << 7;

/**
 * Completes, as the CPU would, the few one-byte instructions KVM's
 * instruction emulator gives up on although they only raise an exception or
 * do nothing. A backend that emulates kernel code (kvm_pvm) stops on them:
 * Linux's `int3_selftest` and the `fwait` of its FPU code. `int3` (cc): RIP
 * moves past it (a trap) and `#BP` is injected. `fwait` (9b): `#NM` when
 * CR0.MP and CR0.TS are set, `#MF` when the x87 status word has an unmasked
 * exception pending (ES), else it does nothing and RIP moves past it.
 * Returns whether it handled the exit. `vm` is needed only when the exit
 * carries no instruction bytes (they are then read at RIP).
 */
export function completeUnemulated(
  exit: InternalErrorExit,
  vm: Vm | undefined,
  vcpu: Vcpu,
): boolean {
  if (exit.suberror !== KVM_INTERNAL_ERROR_EMULATION) return false;
  let first = exit.instructionBytes?.[0];
  const regs = vcpu.getRegs();
  if (first === undefined) {
    if (!vm) return false;
    const t = vcpu.translate(regs.rip);
    if (!t.valid) return false;
    first = vm.readGuest(Number(t.physicalAddress), 1)[0];
  }
  if (first === 0xcc) {
    vcpu.setRegs(regs.assign({ rip: regs.rip + 1n }));
    injectException(vcpu, 3);
    return true;
  }
  if (first === 0x9b) {
    const cr0 = vcpu.getSregs().cr0;
    if ((cr0 & (CR0_MP | CR0_TS)) === (CR0_MP | CR0_TS)) injectException(vcpu, 7);
    else if ((vcpu.getFpu().fsw & FSW_ES) !== 0) injectException(vcpu, 16);
    else vcpu.setRegs(regs.assign({ rip: regs.rip + 1n }));
    return true;
  }
  return false;
}
