/**
 * Every fixed guest-physical address of the PC platform this VMM builds, in
 * one place (as Firecracker's `arch/x86_64/layout.rs`), lowest first. The
 * loaders and table builders import their addresses from here, and the
 * layout checker (`layout.ts`) verifies at boot that what they write fits in
 * RAM without overlaps.
 *
 * @module
 */

/** The GDT written by the protected and long mode helpers (`modes.ts`). */
export const DEFAULT_GDT_ADDRESS = 0x500;
/** The zero page (`struct boot_params`) of a Linux boot. */
export const ZERO_PAGE_ADDRESS = 0x7000;
/** The identity-mapping page tables written by `setupLongMode`. */
export const DEFAULT_PAGE_TABLE_ADDRESS = 0x9000;
/** The Linux kernel command line. */
export const CMDLINE_ADDRESS = 0x20000;
/**
 * The top of conventional memory: the last KiB below 640 KiB is the EBDA,
 * where the MP table goes (Linux scans it for the floating pointer).
 */
export const EBDA_ADDRESS = 0x9fc00;
/** The MP table's default place: the EBDA. */
export const MPTABLE_ADDRESS: number = EBDA_ADDRESS;
/** The BIOS area at the top of the first MiB, reserved in the memory map. */
export const BIOS_AREA_ADDRESS = 0xf0000;
/** The RSDP and the ACPI tables after it, inside the BIOS area (where guests search for it). */
export const ACPI_TABLES_ADDRESS: number = BIOS_AREA_ADDRESS;
/** Where the protected-mode kernel is loaded ("at 1 MiB" in boot.rst). */
export const KERNEL_LOAD_ADDRESS = 0x100000;
/** The start of the 32-bit PCI/MMIO hole: RAM beyond this moves above 4 GiB. */
export const MMIO_HOLE_START = 0xc000_0000;
/** The first virtio-mmio window, in the MMIO hole; the next follow every 4 KiB. */
export const VIRTIO_MMIO_BASE = 0xd000_0000;
/** The I/O APIC's registers. */
export const IOAPIC_ADDRESS = 0xfec00000;
/** The local APICs' registers. */
export const LAPIC_ADDRESS = 0xfee00000;
/** Where `KVM_SET_IDENTITY_MAP_ADDR` puts VMX's real-mode identity page table. */
export const IDENTITY_MAP_ADDRESS = 0xfffbc000;
/** Where `KVM_SET_TSS_ADDR` puts the three pages Intel VMX needs (as QEMU does). */
export const TSS_ADDRESS = 0xfffbd000;
/** Where RAM above the MMIO hole continues. */
export const HIGH_RAM_START = 0x1_0000_0000;
