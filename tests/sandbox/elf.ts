/**
 * Just enough ELF parsing to tell a static executable from a dynamic one: a dynamically linked
 * executable has a `PT_INTERP` program header naming its loader. Used to insist on a *static*
 * busybox, since the guest has no libraries for it (and a nested guest gets only busybox).
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
