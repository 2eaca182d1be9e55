/**
 * A little of ACPI Machine Language (ACPI 6.x chapter 20, "ACPI Machine
 * Language Specification"), enough for the DSDT this VMM needs: the virtio-mmio
 * devices, described the way Linux's `virtio_mmio` driver matches them
 * (`_HID` "LNRO0005", a `_CRS` with the register window and the interrupt),
 * and the `\_S5` package that lets the guest power off through the PM1a
 * control register.
 *
 * Each function returns the encoded bytes of one AML term; {@linkcode buildDsdt}
 * wraps them in a table. Nothing here is evaluated: the guest's interpreter does.
 *
 * @module
 */

/** `PkgLength` (20.2.4): the length of what follows, this encoding included. */
export function pkgLength(contentLength: number): number[] {
  // One byte holds up to 63; otherwise 1-3 more bytes of 8 bits after a 4-bit low nibble.
  if (contentLength + 1 <= 0x3f) return [contentLength + 1];
  for (let extra = 1; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (total < 1 << (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0xf)];
      for (let i = 0; i < extra; i++) out.push((total >> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new RangeError(`AML package of ${contentLength} bytes is too long`);
}

/** A `NameSeg` (four characters, padded with `_`) or a path of them (`\_SB_.V000`). */
export function nameString(path: string): number[] {
  const out: number[] = [];
  let rest = path;
  if (rest.startsWith("\\")) {
    out.push(0x5c); // RootChar
    rest = rest.slice(1);
  }
  const segs = rest.length > 0 ? rest.split(".") : [];
  const bytes = segs.map((s) => {
    if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new RangeError(`bad AML name segment "${s}"`);
    return [...s.padEnd(4, "_")].map((c) => c.charCodeAt(0));
  });
  if (bytes.length === 0) out.push(0x00); // NullName
  else if (bytes.length === 2) out.push(0x2e); // DualNamePrefix
  else if (bytes.length > 2) out.push(0x2f, bytes.length); // MultiNamePrefix, SegCount
  for (const b of bytes) out.push(...b);
  return out;
}

/** An integer constant in the shortest encoding (`Zero`, `One`, Byte/Word/DWord/QWordConst). */
export function integer(value: number): number[] {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`AML integer ${value}`);
  if (value === 0) return [0x00];
  if (value === 1) return [0x01];
  const le = (n: number, bytes: number) =>
    Array.from({ length: bytes }, (_, i) => Math.floor(n / 2 ** (8 * i)) & 0xff);
  if (value <= 0xff) return [0x0a, value];
  if (value <= 0xffff) return [0x0b, ...le(value, 2)];
  if (value <= 0xffffffff) return [0x0c, ...le(value, 4)];
  return [0x0e, ...le(value, 8)];
}

/** A string constant (`StringPrefix`, ASCII, NUL). */
export function string(text: string): number[] {
  return [0x0d, ...[...text].map((c) => c.charCodeAt(0) & 0x7f), 0x00];
}

/** `Name(path, object)`. */
export function name(path: string, object: number[]): number[] {
  return [0x08, ...nameString(path), ...object];
}

/** `Scope(path) { terms }`. */
export function scope(path: string, terms: number[]): number[] {
  const body = [...nameString(path), ...terms];
  return [0x10, ...pkgLength(body.length), ...body];
}

/** `Device(path) { terms }` (`ExtOpPrefix DeviceOp`). */
export function device(path: string, terms: number[]): number[] {
  const body = [...nameString(path), ...terms];
  return [0x5b, 0x82, ...pkgLength(body.length), ...body];
}

/** `Package() { elements }` of computational data. */
export function pkg(elements: number[][]): number[] {
  const body = [elements.length, ...elements.flat()];
  return [0x12, ...pkgLength(body.length), ...body];
}

/** `Buffer() { bytes }`. */
export function buffer(bytes: number[]): number[] {
  const body = [...integer(bytes.length), ...bytes];
  return [0x11, ...pkgLength(body.length), ...body];
}

/**
 * A resource template (6.4): the descriptors, then the end tag (its
 * checksum 0: "treat as correct").
 */
export function resourceTemplate(descriptors: number[][]): number[] {
  return buffer([...descriptors.flat(), 0x79, 0x00]);
}

function le32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

/** `Memory32Fixed(ReadWrite, base, length)` (6.4.3.4, large item 0x86). */
export function memory32Fixed(base: number, length: number): number[] {
  return [0x86, 9, 0, 1, ...le32(base), ...le32(length)];
}

/**
 * `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }`
 * (6.4.3.6, the extended interrupt descriptor, large item 0x89).
 */
export function edgeInterrupt(gsi: number): number[] {
  // Flags: bit 0 consumer, bit 1 edge-triggered; active-high and exclusive are 0.
  return [0x89, 6, 0, 0x03, 1, ...le32(gsi)];
}

function le16(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff];
}

/**
 * A Word Address Space Descriptor (6.4.3.5.3, large item 0x88) a bridge
 * produces: `WordBusNumber` (`resourceType` 2) or `WordIO` (1, entire
 * range), fixed minimum and maximum, positive decode.
 */
export function wordAddressSpace(resourceType: number, min: number, max: number): number[] {
  const typeFlags = resourceType === 1 ? 0x03 : 0x00; // I/O: ISA and non-ISA ranges
  return [
    0x88,
    13,
    0,
    resourceType,
    0x0c, // MinFixed, MaxFixed, PosDecode, ResourceProducer
    typeFlags,
    ...le16(0),
    ...le16(min),
    ...le16(max),
    ...le16(0),
    ...le16(max - min + 1),
  ];
}

/** `IO(Decode16, port, port, 1, length)` (6.4.2.5, small item 0x47). */
export function ioPort(port: number, length: number): number[] {
  return [0x47, 0x01, ...le16(port), ...le16(port), 1, length];
}

/**
 * `DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable,
 * ReadWrite, ...)` (6.4.3.5.2, large item 0x87): a bridge's memory window.
 */
export function dwordMemory(base: number, length: number): number[] {
  return [
    0x87,
    23,
    0,
    0, // memory
    0x0c, // MinFixed, MaxFixed, PosDecode, ResourceProducer
    0x01, // read-write, not cacheable
    ...le32(0),
    ...le32(base),
    ...le32(base + length - 1),
    ...le32(0),
    ...le32(length),
  ];
}

/** A compressed EISA id (`EisaId("PNP0A03")`) as the integer AML stores. */
export function eisaId(id: string): number[] {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new RangeError(`bad EISA id "${id}"`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  // Stored big-endian in a little-endian DWord: the vendor's two bytes, then the product's.
  const bytes = [vendor >> 8, vendor & 0xff, product >> 8, product & 0xff];
  return integer(bytes[0] + bytes[1] * 0x100 + bytes[2] * 0x10000 + bytes[3] * 0x1000000);
}

/** A PCI root bridge for {@linkcode buildDsdt}. */
export interface DsdtPciRoot {
  /** The bridge's memory window for the devices' BARs (base, length). */
  memoryBase: number;
  /** See {@linkcode memoryBase}. */
  memoryLength: number;
}

/**
 * `\_SB.PCI0`: a conventional PCI root bridge (PNP0A03; no `_OSC` needed)
 * for segment 0, bus 0-255, configuration mechanism #1 at 0xcf8, every
 * other port, and the memory window.
 */
export function pciRootBridge(root: DsdtPciRoot): number[] {
  return device("PCI0", [
    ...name("_HID", eisaId("PNP0A03")),
    ...name("_SEG", integer(0)),
    ...name("_BBN", integer(0)),
    ...name("_UID", integer(0)),
    ...name(
      "_CRS",
      resourceTemplate([
        wordAddressSpace(2, 0, 0xff),
        ioPort(0xcf8, 8),
        wordAddressSpace(1, 0, 0xcf7),
        wordAddressSpace(1, 0xd00, 0xffff),
        dwordMemory(root.memoryBase, root.memoryLength),
      ]),
    ),
  ]);
}

/** One virtio-mmio device for {@linkcode buildDsdt}. */
export interface DsdtVirtioDevice {
  /** Guest physical base of its register window. */
  address: number;
  /** Window length (0x1000 for virtio-mmio). */
  size: number;
  /** Its IOAPIC input (GSI), edge-triggered, active-high. */
  gsi: number;
}

/** Options of {@linkcode buildDsdt}. */
export interface DsdtOptions {
  /** The virtio-mmio devices, named `\_SB.V000`, `V001`, ... */
  virtio?: readonly DsdtVirtioDevice[];
  /** A PCI root bridge, `\_SB.PCI0` (for virtio-pci devices). */
  pci?: DsdtPciRoot;
  /**
   * `\_S5` with this SLP_TYP (the value the PM1a control register's sleep
   * request must carry to power off; `AcpiPm1` uses 0); omitted: no `\_S5`.
   */
  s5SlpTyp?: number;
}

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/**
 * The DSDT (signature "DSDT", revision 2: 64-bit integers) with the devices
 * and `\_S5`, header and checksum included; the FADT points at it.
 *
 * @example
 * ```ts
 * import { buildDsdt } from "@deno-kvm/kvm/vmm";
 * const dsdt = buildDsdt({ virtio: [{ address: 0xd000_0000, size: 0x1000, gsi: 16 }], s5SlpTyp: 0 });
 * console.log(new TextDecoder().decode(dsdt.subarray(0, 4))); // DSDT
 * ```
 */
export function buildDsdt(options: DsdtOptions): Uint8Array {
  const devices = (options.virtio ?? []).map((d, i) =>
    device(`V${i.toString(16).toUpperCase().padStart(3, "0")}`, [
      ...name("_HID", string("LNRO0005")),
      ...name("_UID", integer(i)),
      ...name("_CRS", resourceTemplate([memory32Fixed(d.address, d.size), edgeInterrupt(d.gsi)])),
    ])
  );
  if (options.pci) devices.push(pciRootBridge(options.pci));
  const terms: number[] = [];
  if (devices.length > 0) terms.push(...scope("\\_SB", devices.flat()));
  if (options.s5SlpTyp !== undefined) {
    const t = integer(options.s5SlpTyp);
    terms.push(...name("\\_S5", pkg([t, t, integer(0), integer(0)])));
  }
  const out = new Uint8Array(36 + terms.length);
  const v = new DataView(out.buffer);
  const ascii = (s: string, at: number) => out.set([...s].map((c) => c.charCodeAt(0)), at);
  ascii("DSDT", 0);
  v.setUint32(4, out.length, true);
  out[8] = 2; // revision 2: integers are 64-bit
  ascii("DENOKV", 10);
  ascii("DENOKVM ", 16);
  v.setUint32(24, 1, true);
  ascii("DKVM", 28);
  v.setUint32(32, 1, true);
  out.set(terms, 36);
  out[9] = checksum(out);
  return out;
}
