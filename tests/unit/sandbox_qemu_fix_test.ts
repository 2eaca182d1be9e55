import assert from "node:assert/strict";
import { findVmrunVectorStore, patchVmrunVectorStore } from "../../tools/sandbox/qemu_fix.ts";

/** helper_vmrun's INTR case as Debian's QEMU 7.2 build compiles it (see qemu_fix.ts). */
const INTR_CASE = [
  "44 89 ab 80 33 00 00", // mov %r13d,0x3380(%rbx)
  "89 b3 54 ef ff ff", // mov %esi,-0x10ac(%rbx)
  "c7 83 84 33 00 00 00 00 00 00", // movl $0x0,0x3384(%rbx)
  "48 c7 83 88 33 00 00 ff ff ff ff", // movq $-1,0x3388(%rbx)
  "f6 05 ba 45 b6 00 02", // testb $0x2,qemu_loglevel(%rip)
  "0f 85 6c 01 00 00", // jne
  "ba 01 00 00 00 48 89 df e8 a7 4f 05 00", // mov $1,%edx; mov %rbx,%rdi; call
].join(" ").split(" ").map((h) => parseInt(h, 16));

function image(...at: number[]): Uint8Array {
  const bytes = new Uint8Array(4096).fill(0x44); // the pattern's first byte everywhere
  for (const a of at) bytes.set(INTR_CASE, a);
  return bytes;
}

Deno.test("qemu fix: the VMRUN vector store is found once and becomes a 6-byte NOP", () => {
  const bytes = image(1000);
  assert.equal(findVmrunVectorStore(bytes), 1007);
  const patched = patchVmrunVectorStore(bytes)!;
  assert.deepEqual([...patched.subarray(1007, 1013)], [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
  // Nothing else changes, and the input is left alone.
  assert.deepEqual([...patched.subarray(0, 1007)], [...bytes.subarray(0, 1007)]);
  assert.deepEqual([...patched.subarray(1013)], [...bytes.subarray(1013)]);
  assert.deepEqual([...bytes.subarray(1007, 1013)], [0x89, 0xb3, 0x54, 0xef, 0xff, 0xff]);
});

Deno.test("qemu fix: an ambiguous, absent or different instruction sequence is left alone", () => {
  assert.equal(findVmrunVectorStore(image()), null);
  assert.equal(patchVmrunVectorStore(image(100, 2000)), null, "two matches");
  const otherCall = image(500);
  otherCall[500 + INTR_CASE.length - 12] = 0x02; // `mov $2,%edx`: not is_hw 1
  assert.equal(findVmrunVectorStore(otherCall), null);
  const otherReg = image(500);
  otherReg[508] = 0xa3; // `mov %r12d,…`-like: the exception case, not the INTR one
  assert.equal(findVmrunVectorStore(otherReg), null);
  const truncated = image();
  truncated.set(INTR_CASE.slice(0, 40), truncated.length - 40);
  assert.equal(findVmrunVectorStore(truncated), null, "truncated at the end of the file");
});
