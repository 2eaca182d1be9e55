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
 * This entry is the core a library user needs: the kernel objects, exits,
 * errors, guest memory, eventfds, devices, the coalesced-MMIO and dirty rings,
 * the dirty log's page scan ({@linkcode DirtyBitmap}), {@linkcode KvmContext}
 * (vCPUs on Workers), real/protected/long mode setup and the native loader.
 * Two more entries hold the rest:
 *
 * - `@deno-kvm/kvm/abi`: the struct codecs, ioctl numbers and kernel constants
 *   (`KVM_IRQCHIP_*`, `KVM_PIT_*`, `encodeRedirection`, ...);
 * - `@deno-kvm/kvm/vmm`: the VMM parts: kernel loader (bzImage, ELF, vmlinux,
 *   Multiboot, initramfs), x86 platform (CPUID, MP table, ACPI, x86 control
 *   register and selector constants), devices (UART, legacy ports, I/O bus) and
 *   the ready machines (`LinuxMachine`, `MultibootMachine`).
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

export { Kvm, type KvmImplementation } from "./src/kvm/kvm.ts";
export { type MemoryRegion, type MemorySlot, Vm } from "./src/kvm/vm.ts";
export { type KickTarget, type Regs, type RunArea, type Sregs, Vcpu } from "./src/kvm/vcpu.ts";
export { OwnedFd } from "./src/kvm/owned_fd.ts";
export { GuestMemory, type GuestMemoryOptions } from "./src/kvm/guest_memory.ts";
export {
  DebugExit,
  type DirtyRingFullExit,
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
export {
  KVM_INTERNAL_ERROR_EMULATION,
  KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
} from "./src/kvm/exit.ts";
export { Errno, type ErrnoCode, errnoName, KvmError } from "./src/errors.ts";
export { loadNative, type LoadOptions, NativeLoadError } from "./src/ffi/library.ts";
export { Cap, type CapName } from "./src/abi/capabilities.ts";
export {
  type FlatModeOptions,
  type LongModeLayout,
  type LongModeOptions,
  type ProtectedModeLayout,
  type RealModeLayout,
  type RealModeOptions,
  setupLongMode,
  setupProtectedMode,
  setupRealMode,
} from "./src/boot/modes.ts";
export {
  bitmapPages,
  type ClockData,
  type GsiRoute,
  type IoeventOptions,
  type Irqchip,
  type IrqfdOptions,
  type MemoryRegion2,
  type Msi,
  type PitState2,
} from "./src/kvm/vm.ts";
export { EventFd, type EventFdOptions } from "./src/kvm/event_fd.ts";
export { Device, type DeviceAttr } from "./src/kvm/device.ts";
export { CoalescedRing, type CoalescedWrite } from "./src/kvm/coalesced_ring.ts";
export { type DirtyPageVisitor, DirtyRing } from "./src/kvm/dirty_ring.ts";
export { DirtyBitmap, type DirtyBitmapOptions } from "./src/kvm/dirty_bitmap.ts";
export {
  DEFAULT_TSS_ADDRESS,
  KvmContext,
  type KvmContextOptions,
  LOW_RAM_END,
  VGA_HOLE_END,
  VGA_HOLE_START,
} from "./src/context/context.ts";
export { GuestRam } from "./src/context/guest_ram.ts";
export {
  type CallbackResult,
  type DebugInfo,
  type DeviceContext,
  type DeviceFactory,
  type DeviceModule,
  type HandlerResult,
  type KvmCallbacks,
  type MaybePromise,
  type RunOptions,
  type RunResult,
  stopVcpu,
  type VcpuDevice,
  VcpuError,
  type VcpuErrorKind,
  type VcpuResult,
  VcpuStop,
  type VcpuStopReason,
} from "./src/context/types.ts";
export {
  type DebugRegs,
  type Fpu,
  type NestedState,
  type Translation,
  type VcpuEvents,
  type XcrEntry,
  type Xsave,
} from "./src/kvm/vcpu.ts";
export { Lapic, LVT_MASKED } from "./src/kvm/lapic.ts";
export {
  type GuestDebugOptions,
  type HardwareBreakpoint,
  MAX_HARDWARE_BREAKPOINTS,
} from "./src/kvm/guest_debug.ts";
export { MappedFile } from "./src/kvm/mapped_file.ts";
export { HostMapping } from "./src/kvm/host_mapping.ts";
