/**
 * Just enough ELF parsing for the sandbox: tell a static executable from a dynamic one (a
 * dynamically linked one has a `PT_INTERP` program header naming its loader; the guest needs a
 * *static* busybox), and tell whether an extracted vmlinux can be booted directly (PVH).
 *
 * @module
 */

const PT_INTERP = 3;

/**
 * Returns the program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`) of a 64-bit
 * little-endian ELF image, `null` for a static one, or throws when `bytes` is not such an ELF.
 */
export function elfInterpreter(bytes: Uint8Array): string | null {
  const isElf = bytes.length >= 64 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c &&
    bytes[3] === 0x46;
  if (!isElf) throw new Error("not an ELF file");
  if (bytes[4] !== 2 || bytes[5] !== 1) throw new Error("not a 64-bit little-endian ELF file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 0x38 > bytes.length) throw new Error("truncated ELF program headers");
    if (view.getUint32(ph, true) !== PT_INTERP) continue;
    const off = Number(view.getBigUint64(ph + 0x08, true));
    const size = Number(view.getBigUint64(ph + 0x20, true));
    const raw = bytes.subarray(off, off + size);
    const end = raw.indexOf(0);
    return new TextDecoder().decode(end < 0 ? raw : raw.subarray(0, end));
  }
  return null;
}

const PT_NOTE = 4;
/** `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point QEMU uses to boot a vmlinux directly. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/**
 * Whether a 64-bit little-endian ELF image is complete (every segment and the section header
 * table lie inside it) and carries a PVH entry note, i.e. QEMU can boot it with `-kernel`.
 */
export function elfIsBootablePvh(bytes: Uint8Array): boolean {
  try {
    elfInterpreter(bytes); // validates the identification bytes
  } catch {
    return false;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u64 = (off: number) => Number(view.getBigUint64(off, true));
  const shEnd = u64(0x28) + view.getUint16(0x3a, true) * view.getUint16(0x3c, true);
  if (shEnd > bytes.length) return false;
  const phoff = u64(0x20);
  const phentsize = view.getUint16(0x36, true);
  let pvh = false;
  for (let i = 0; i < view.getUint16(0x38, true); i++) {
    const ph = phoff + i * phentsize;
    const off = u64(ph + 0x08);
    const size = u64(ph + 0x20);
    if (off + size > bytes.length) return false;
    if (view.getUint32(ph, true) !== PT_NOTE) continue;
    // Notes: namesz, descsz, type, then name and desc, each padded to 4 bytes.
    for (let n = off; n + 12 <= off + size;) {
      const namesz = view.getUint32(n, true);
      const descsz = view.getUint32(n + 4, true);
      const type = view.getUint32(n + 8, true);
      const name = new TextDecoder().decode(bytes.subarray(n + 12, n + 12 + namesz));
      if (name === "Xen\0" && type === XEN_ELFNOTE_PHYS32_ENTRY) pvh = true;
      n += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return pvh;
}
