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
export {
  CODE_SELECTOR,
  CR0_CD,
  CR0_ET,
  CR0_NW,
  CR0_PE,
  CR0_PG,
  CR4_PAE,
  DATA_SELECTOR,
  DEFAULT_GDT_ADDRESS,
  DEFAULT_PAGE_TABLE_ADDRESS,
  EFER_LMA,
  EFER_LME,
  type FlatModeOptions,
  gdtEntry,
  type LongModeLayout,
  type LongModeOptions,
  type ProtectedModeLayout,
  type RealModeLayout,
  type RealModeOptions,
  setupLongMode,
  setupProtectedMode,
  setupRealMode,
  TSS_SELECTOR,
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
export * from "./src/abi/irqchip.ts";
export * from "./src/abi/pit.ts";
export * from "./src/abi/irq_routing.ts";
export * from "./src/abi/eventfd.ts";
export * from "./src/abi/coalesced.ts";
export * from "./src/abi/dirty_log.ts";
export * from "./src/abi/dirty_ring.ts";
export * from "./src/abi/clock.ts";
export * from "./src/abi/device.ts";
export * from "./src/abi/enable_cap.ts";
export { KVM_CAP_USER_MEMORY2 } from "./src/abi/memory2.ts";
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
export * from "./src/abi/fpu.ts";
export * from "./src/abi/debug.ts";
export * from "./src/abi/msr.ts";
export * from "./src/abi/cpuid.ts";
export * from "./src/abi/lapic.ts";
export * from "./src/abi/vcpu_state.ts";
export {
  LinuxMachine,
  type LinuxMachineOptions,
  type LinuxRunOptions,
  type MachineExit,
  type MachineExitReason,
} from "./src/boot/linux.ts";
export {
  BootImageError,
  type BootImageProblem,
  type BzImage,
  CMDLINE_ADDRESS,
  DEFAULT_CMDLINE_SIZE,
  DEFAULT_INITRD_ADDR_MAX,
  KERNEL_LOAD_ADDRESS,
  type LinuxBootOptions,
  type LinuxBootPlan,
  MAX_CMDLINE_BYTES,
  parseBzImage,
  planLinuxBoot,
  writeLinuxBoot,
  ZERO_PAGE_ADDRESS,
} from "./src/boot/bzimage.ts";
export {
  BootParams,
  bootParamsFields,
  E820_RAM,
  E820_RESERVED,
  type E820Entry,
  SetupHeader,
  setupHeaderFields,
  writeE820,
} from "./src/boot/boot_params.ts";
export { buildMpTable, MPTABLE_ADDRESS } from "./src/boot/mptable.ts";
export { checkGuestLayout, type GuestRegion, type RamRange } from "./src/boot/layout.ts";
export {
  MAX_IMAGE_FILE_SIZE,
  readImageFile,
  type ReadImageOptions,
} from "./src/boot/read_image.ts";
export { MappedFile } from "./src/kvm/mapped_file.ts";
export { HostMapping } from "./src/kvm/host_mapping.ts";
export {
  type ElfKernel,
  type ElfSegment,
  isElf,
  parseElfKernel,
  START_KERNEL_MAP,
} from "./src/boot/elf.ts";
export {
  bzImagePayload,
  type CachedVmlinux,
  cachedVmlinux,
  compactElf,
  extractVmlinux,
  fingerprint,
  PROTOCOL_PAYLOAD,
  type VmlinuxCacheOptions,
} from "./src/boot/vmlinux.ts";
export {
  crc32,
  decompressXz,
  type DecompressXzOptions,
  MAX_OUTPUT,
  XzError,
} from "./src/boot/xz.ts";
export {
  type CpuidBit,
  type CpuProbeOptions,
  type CpuProbeReport,
  formatProbeReport,
  hideUnusableFeatures,
  linuxClearCpuid,
  probeCpu,
  type ProbeOutcome,
  type ProbeResult,
} from "./src/boot/cpu_probe.ts";
export { completeUnemulated } from "./src/boot/unemulated.ts";
export {
  decodeX86,
  describeX86,
  hexBytes,
  type X86Instruction,
  type X86Mode,
} from "./src/kvm/x86_decode.ts";
export { describeInternalError, instructionAtRip } from "./src/kvm/dump.ts";
export {
  bootMsrs,
  DEFAULT_HIDDEN_KVM_FEATURES,
  setupPlatform,
  setupVcpu,
  vcpuCpuid,
} from "./src/boot/platform.ts";
export {
  IoBus,
  type IoBusOptions,
  type PortDevice,
  type UnhandledAccess,
} from "./src/devices/io_bus.ts";
export {
  COM1_IRQ,
  COM1_PORT,
  Uart16550,
  type Uart16550Options,
  UART_INPUT_CAPACITY,
} from "./src/devices/uart_16550.ts";
export {
  CmosRtc,
  I8042,
  type LegacyDevices,
  type LegacyDevicesOptions,
  QuietPorts,
  registerLegacyDevices,
} from "./src/devices/legacy.ts";
export {
  buildInitramfs,
  hostKernelPath,
  type InitramfsOptions,
  SHELL_INIT,
} from "./src/boot/initramfs.ts";
export {
  type GuestSpeed,
  LINUX_BOOT_MIN_MIPS,
  linuxBootPractical,
  measureGuestSpeed,
} from "./src/boot/guest_speed.ts";
