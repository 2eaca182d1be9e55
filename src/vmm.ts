/**
 * The VMM parts built on the core: the kernel loader (bzImage, ELF, vmlinux,
 * xz, boot parameters, Multiboot, initramfs, image files), the x86 platform
 * (CPUID probe, MP table, ACPI tables, guest layout), the devices on the one
 * bus type for port I/O and MMIO (16550A UART, legacy ports, debug exit, ACPI
 * PM timer; `busVcpuDevice` puts them in a `KvmContext` worker), and the
 * machines that put them together: {@linkcode LinuxMachine} and
 * {@linkcode MultibootMachine}.
 *
 * @example
 * ```ts
 * import { buildMpTable, isMultiboot, MPTABLE_ADDRESS } from "@deno-kvm/kvm/vmm";
 *
 * const table = buildMpTable(2); // the MP table for a 2-CPU guest
 * console.log(table.length, MPTABLE_ADDRESS.toString(16));
 * console.log(isMultiboot(new Uint8Array(64))); // false: no Multiboot header
 * ```
 *
 * @module
 */

export {
  LinuxMachine,
  type LinuxMachineOptions,
  type LinuxRunOptions,
  type MachineExit,
  type MachineExitReason,
  VIRTIO_FIRST_GSI,
  VIRTIO_MAX_DEVICES,
  VIRTIO_MMIO_BASE,
  type VirtioDisk,
  type VirtioNet,
} from "./boot/linux.ts";
export {
  type MultibootExit,
  type MultibootExitReason,
  MultibootMachine,
  type MultibootMachineOptions,
  type MultibootRunOptions,
} from "./boot/multiboot_machine.ts";
export { type PcExit, type PcExitReason, type PcMachineOptions } from "./boot/machine.ts";
export { BootImageError, type BootImageProblem } from "./boot/boot_image_error.ts";
export {
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
  type VmlinuxFile,
  writeLinuxBoot,
  ZERO_PAGE_ADDRESS,
} from "./boot/bzimage.ts";
export {
  BootParams,
  bootParamsFields,
  E820_RAM,
  E820_RESERVED,
  type E820Entry,
  SetupHeader,
  setupHeaderFields,
  writeE820,
} from "./boot/boot_params.ts";
export {
  findMultibootHeader,
  isMultiboot,
  MULTIBOOT_BOOTLOADER_MAGIC,
  MULTIBOOT_HEADER_MAGIC,
  MULTIBOOT_INFO_SIZE,
  MULTIBOOT_SEARCH,
  type MultibootBootOptions,
  type MultibootBootPlan,
  MultibootError,
  type MultibootHeader,
  MultibootHeaderFlag,
  type MultibootImage,
  MultibootInfoFlag,
  type MultibootMemoryRange,
  MultibootMemoryType,
  type MultibootModule,
  type MultibootProblem,
  type MultibootSegment,
  parseMultiboot,
  type PlacedModule,
  planMultibootBoot,
  writeMultibootBoot,
} from "./boot/multiboot.ts";
export {
  type ElfKernel,
  type ElfSegment,
  isElf,
  parseElfKernel,
  START_KERNEL_MAP,
} from "./boot/elf.ts";
export {
  bzImagePayload,
  type CachedVmlinux,
  cachedVmlinux,
  cachedVmlinuxAsync,
  compactElf,
  type ExtractedVmlinux,
  type ExtractOptions,
  extractVmlinux,
  extractVmlinuxAsync,
  extractVmlinuxDetailed,
  type PendingCachedVmlinux,
  PROTOCOL_PAYLOAD,
  type VmlinuxCacheOptions,
  type XzDecoderName,
} from "./boot/vmlinux.ts";
export {
  crc32,
  decompressXz,
  type DecompressXzOptions,
  MAX_OUTPUT,
  XzError,
  type XzStreamInfo,
  xzStreamInfo,
} from "./boot/xz.ts";
export {
  type Liblzma,
  liblzma,
  LIBLZMA_ENV,
  LIBLZMA_MEMLIMIT,
  LIBLZMA_PATHS,
  LiblzmaError,
  liblzmaProblem,
  LZMA_MEMLIMIT_ERROR,
} from "./boot/xz_native.ts";
export { MAX_IMAGE_FILE_SIZE, readImageFile, type ReadImageOptions } from "./boot/read_image.ts";
export {
  buildInitramfs,
  hostKernelPath,
  type InitramfsOptions,
  SHELL_INIT,
} from "./boot/initramfs.ts";
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
} from "./boot/cpu_probe.ts";
export {
  bootMsrs,
  DEFAULT_HIDDEN_KVM_FEATURES,
  setupPlatform,
  setupVcpu,
  vcpuCpuid,
} from "./boot/platform.ts";
export { buildMpTable, MPTABLE_ADDRESS } from "./boot/mptable.ts";
export {
  ACPI_FACS_SIZE,
  ACPI_FACS_WAKING_VECTOR_OFFSET,
  ACPI_PM1_CONTROL_PORT,
  ACPI_PM1_EVENT_PORT,
  ACPI_PM_BASE,
  ACPI_PM_TIMER_PORT,
  ACPI_SCI_IRQ,
  ACPI_TABLES_ADDRESS,
  type AcpiLayout,
  acpiLayout,
  type AcpiOptions,
  buildAcpiTables,
} from "./boot/acpi.ts";
export {
  BIOS_PIC_MASTER_BASE,
  BIOS_PIC_SLAVE_BASE,
  facsWakingVector,
  programPicsLikeBios,
  resumeAtWakingVector,
  type RtcAlarm,
  rtcAlarmDelayMs,
} from "./boot/firmware.ts";
export { checkGuestLayout, type GuestRegion, type RamRange } from "./boot/layout.ts";
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
  gdtEntry,
  TSS_SELECTOR,
} from "./boot/modes.ts";
export { completeUnemulated } from "./boot/unemulated.ts";
export {
  type GuestSpeed,
  LINUX_BOOT_MIN_MIPS,
  linuxBootPractical,
  measureGuestSpeed,
} from "./boot/guest_speed.ts";
export { type BusDevice, loadLe, storeLe } from "./devices/bus_device.ts";
export {
  Bus,
  BUS_REPORT_LIMIT,
  type BusOptions,
  type BusRange,
  type BusSpace,
  describeUnhandled,
  deviceWindow,
  type UnhandledAccess,
  type UnhandledSummary,
} from "./devices/bus.ts";
export { busVcpuDevice, type VcpuDeviceBuses } from "./devices/bus_vcpu_device.ts";
export {
  COM1_IRQ,
  COM1_PORT,
  Uart16550,
  type Uart16550Options,
  UART_INPUT_CAPACITY,
} from "./devices/uart_16550.ts";
export {
  CmosRtc,
  I8042,
  I8042_COMMAND,
  I8042_DATA,
  type LegacyDevices,
  type LegacyDevicesOptions,
  QuietPorts,
  registerLegacyDevices,
} from "./devices/legacy.ts";
export {
  DEBUG_EXIT_PORT,
  DEBUG_EXIT_SIZE,
  DebugExit as DebugExitDevice,
  debugExitStatus,
} from "./devices/debug_exit.ts";
export { ACPI_PM_TIMER_HZ, AcpiPmTimer } from "./devices/acpi_pm_timer.ts";
export { AcpiPm1, type AcpiPm1Options, type AcpiSleepState, Pm1Event } from "./devices/acpi_pm1.ts";
export {
  PC_TESTDEV_IOMEM_ADDRESS,
  PC_TESTDEV_IOMEM_SIZE,
  PC_TESTDEV_IRQ_LINES,
  PC_TESTDEV_IRQ_PORT,
  PC_TESTDEV_PORT,
  PC_TESTDEV_PORT_SIZE,
  PcTestdevIomem,
  PcTestdevIrq,
  PcTestdevPort,
} from "./devices/pc_testdev.ts";
export {
  decodeX86,
  describeX86,
  hexBytes,
  type X86Instruction,
  type X86Mode,
} from "./kvm/x86_decode.ts";
export { describeInternalError, instructionAtRip } from "./kvm/dump.ts";
export {
  buildDsdt,
  type DsdtOptions,
  type DsdtPciRoot,
  type DsdtVirtioDevice,
  pciRootBridge,
} from "./boot/aml.ts";
export {
  DeviceId as VirtioDeviceId,
  MmioReg as VirtioMmioReg,
  Status as VirtioStatus,
  VIRTIO_F_VERSION_1,
  VIRTIO_MMIO_SIZE,
  VIRTIO_RING_F_INDIRECT_DESC,
} from "./devices/virtio/constants.ts";
export type {
  BlockSpec,
  ConsoleSpec,
  NetSpec,
  RngSpec,
  VirtioBackend,
  VirtioDeviceSpec,
  VirtioFront,
} from "./devices/virtio/device.ts";
export { type RamRegion, VirtioMemory } from "./devices/virtio/memory.ts";
export { type VirtioLink, VirtioMmioTransport, writeDeviceStatus } from "./devices/virtio/mmio.ts";
export {
  type MsiMessage,
  NO_VECTOR,
  PCI_CONFIG_PORT,
  PCI_CONFIG_PORTS_LENGTH,
  PciConfigPorts,
  PciConfigSpace,
  type PciFunction,
  pciHostBridge,
  raiseMsix,
  VIRTIO_PCI_BAR_SIZE,
  VIRTIO_PCI_MAX_VECTORS,
  VIRTIO_PCI_NOTIFY_MULTIPLIER,
  VIRTIO_PCI_VENDOR,
  VirtioPciBar,
  type VirtioPciLink,
  VirtioPciTransport,
  virtioPciVectorCount,
} from "./devices/virtio/pci.ts";
export {
  DescriptorChain,
  MAX_INDIRECT_DESCRIPTORS,
  type QueueConfig,
  SplitQueue,
  VirtioError,
} from "./devices/virtio/queue.ts";
export { type RunnerDevice, VirtioRunner } from "./devices/virtio/runner.ts";
export {
  defaultGsiRoutes,
  VIRTIO_PCI_FIRST_MSI_GSI,
  type VirtioPlacement,
  VirtioRuntime,
  type VirtioRuntimeOptions,
  type VirtioSlot,
} from "./devices/virtio/runtime.ts";
export { createDeviceState } from "./devices/virtio/state.ts";
export {
  BlkStatus,
  BlkType,
  BlockBackend,
  blockFront,
  SECTOR_SIZE,
} from "./devices/virtio/block.ts";
export { RNG_MAX_REQUEST, RngBackend, rngFront } from "./devices/virtio/rng.ts";
export {
  CONSOLE_RING_BYTES,
  ConsoleBackend,
  consoleFront,
  ConsoleHost,
  type ConsoleRings,
  createConsoleRings,
} from "./devices/virtio/console.ts";
export {
  defaultMac,
  NET_HEADER_BYTES,
  NET_MAX_FRAME,
  NetBackend,
  netFront,
  type PacketPort,
} from "./devices/virtio/net.ts";
export { openTap, TapPort } from "./devices/virtio/tap.ts";
export { createBackend, frontOf } from "./devices/virtio/specs.ts";
