/**
 * KVM for Deno: create virtual machines with Linux's kernel-based virtual
 * machine (`/dev/kvm`) from TypeScript. (This is hardware virtualization, not
 * the Deno KV database.)
 *
 * The API follows the kernel's objects, like rust-vmm's kvm-ioctls:
 * {@linkcode Kvm} (the system), {@linkcode Vm}, {@linkcode Vcpu}; one method
 * per ioctl; `Vcpu.run()` returns exits as a tagged union; every failure is a
 * {@linkcode KvmError} with the ioctl's name and the errno.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 *
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const ram = vm.allocateMemory(0x1000);
 * ram.bytes.set([0xb0, 0x41, 0xe6, 0xe9, 0xf4]); // mov al, 'A'; out 0xe9, al; hlt
 * vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 0x1000, memory: ram });
 * const vcpu = vm.createVcpu(0);
 * const sregs = vcpu.getSregs();
 * sregs.cs.base = 0n;
 * sregs.cs.selector = 0;
 * vcpu.setSregs(sregs);
 * vcpu.setRegs(vcpu.getRegs().assign({ rip: 0n, rflags: 2n }));
 * for (let exit = vcpu.run(); exit.reason !== "hlt"; exit = vcpu.run()) {
 *   if (exit.reason === "io") console.log(String.fromCharCode(exit.value));
 * }
 * ```
 *
 * @module
 */

export { Kvm } from "./src/kvm/kvm.ts";
export { type MemoryRegion, type MemorySlot, Vm } from "./src/kvm/vm.ts";
export { type KickTarget, type Regs, type RunArea, type Sregs, Vcpu } from "./src/kvm/vcpu.ts";
export { OwnedFd } from "./src/kvm/owned_fd.ts";
export { GuestMemory, type GuestMemoryOptions } from "./src/kvm/guest_memory.ts";
export {
  DebugExit,
  ExceptionExit,
  FailEntryExit,
  type HltExit,
  HypercallExit,
  InternalErrorExit,
  type InterruptedExit,
  IoapicEoiExit,
  type IoDirection,
  IoExit,
  type IrqWindowOpenExit,
  MmioExit,
  MsrExit,
  type NmiExit,
  OtherExit,
  type SetTprExit,
  type ShutdownExit,
  SimpleExit,
  SystemEventExit,
  TprAccessExit,
  UnknownExit,
  type VcpuExit,
} from "./src/kvm/exit.ts";
export { Errno, type ErrnoCode, errnoName, KvmError } from "./src/errors.ts";
export { loadNative, type LoadOptions, NativeLoadError } from "./src/ffi/library.ts";
export { Cap, type CapName } from "./src/abi/capabilities.ts";
export * as Ioctl from "./src/abi/ioctls.ts";
export * from "./src/abi/kvm_run.ts";
export * from "./src/abi/x86.ts";
export * from "./src/abi/memory.ts";
export type {
  AnyStructDef,
  ArrayFor,
  Assignable,
  FieldDef,
  Fields,
  FieldValue,
  Plain,
  ReadonlyKeys,
  Scalar,
  Struct,
  StructBase,
  StructDef,
} from "./src/abi/struct.ts";
