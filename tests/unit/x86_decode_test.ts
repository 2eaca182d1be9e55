// The instruction decoder names what a vCPU stopped on: a table of encodings
// (checked against GNU as / objdump) and the mnemonic and length expected.

import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { decodeX86, describeX86, hexBytes, type X86Mode } from "../../src/kvm/x86_decode.ts";

// [bytes, mnemonic, length, mode (default 64)]
// deno-fmt-ignore
const CASES: [number[], string, number, X86Mode?][] = [
  [[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20], "lock cmpxchg16b", 6],  // lock cmpxchg16b [rbp+0x20]
  [[0xf0, 0x0f, 0xc7, 0x0f], "lock cmpxchg8b", 4],                // lock cmpxchg8b [rdi]
  [[0x48, 0x0f, 0xae, 0x2f], "xrstor64", 4],                      // xrstor64 [rdi]
  [[0x0f, 0xae, 0x2f], "xrstor", 3],
  [[0x48, 0x0f, 0xae, 0x27], "xsave64", 4],
  [[0x0f, 0xae, 0x27], "xsave", 3],
  [[0x48, 0x0f, 0xae, 0x37], "xsaveopt64", 4],
  [[0x48, 0x0f, 0xc7, 0x27], "xsavec64", 4],
  [[0x48, 0x0f, 0xc7, 0x2f], "xsaves64", 4],
  [[0x48, 0x0f, 0xc7, 0x1f], "xrstors64", 4],
  [[0x48, 0x0f, 0xae, 0x07], "fxsave64", 4],
  [[0x0f, 0x01, 0xd1], "xsetbv", 3],
  [[0x0f, 0x01, 0xd0], "xgetbv", 3],
  [[0x0f, 0x30], "wrmsr", 2],
  [[0x0f, 0x32], "rdmsr", 2],
  [[0x0f, 0xa2], "cpuid", 2],
  [[0xe6, 0xe9], "out", 2],                                      // out 0xe9, al
  [[0xee], "out", 1],                                            // out dx, al
  [[0xec], "in", 1],
  [[0xe5, 0x60], "in", 2],
  [[0xf3, 0x6e], "rep outsb", 2],
  [[0xf3, 0x48, 0xa5], "rep movsq", 3],
  [[0xf3, 0xa4], "rep movsb", 2],
  [[0x0f, 0x22, 0xe0], "mov cr4, reg", 3],                        // mov cr4, rax
  [[0x0f, 0x20, 0xd8], "mov reg, cr3", 3],                        // mov rax, cr3
  [[0x0f, 0x23, 0xf8], "mov dr7, reg", 3],
  [[0xf4], "hlt", 1],
  [[0x0f, 0x01, 0x15, 0x00, 0x10, 0x00, 0x00], "lgdt", 7],       // lgdt [rip+0x1000]
  [[0x0f, 0x01, 0x1f], "lidt", 3],
  [[0x66, 0x0f, 0x01, 0x16, 0x00, 0x05], "lgdt", 6, 16],          // lgdt [0x500] in real mode
  [[0x0f, 0x00, 0xd8], "ltr", 3],
  [[0x0f, 0x01, 0x38], "invlpg", 3],
  [[0x0f, 0x01, 0xf8], "swapgs", 3],
  [[0x0f, 0x01, 0xf9], "rdtscp", 3],
  [[0x0f, 0x01, 0xcb], "stac", 3],
  [[0xf3, 0x48, 0x0f, 0xb8, 0xc3], "popcnt", 5],
  [[0x48, 0x0f, 0x38, 0xf0, 0x07], "movbe", 5],
  [[0x48, 0x0f, 0xc7, 0xf0], "rdrand", 4],
  [[0x48, 0x0f, 0xc7, 0xf8], "rdseed", 4],
  [[0xf3, 0x48, 0x0f, 0xae, 0xc8], "rdgsbase", 5],
  [[0x66, 0x0f, 0x38, 0x82, 0x07], "invpcid", 5],
  [[0xf2, 0x0f, 0x38, 0xf0, 0xc3], "crc32", 5],
  [[0x66, 0x0f, 0xae, 0x3f], "clflushopt", 4],
  [[0x66, 0x0f, 0x38, 0x17, 0xc0], "ptest", 5],
  [[0x66, 0x0f, 0x38, 0x00, 0xc1], "pshufb", 5],
  [[0x66, 0x0f, 0x3a, 0x44, 0xc1, 0x00], "pclmulqdq", 6],
  [[0x66, 0x0f, 0x38, 0xdc, 0xc1], "aesenc", 5],
  [[0x0f, 0xae, 0xf0], "mfence", 3],
  [[0x0f, 0xae, 0xc0], "(bad)", 0],                               // 0f ae /0 on a register needs f3
  [[0x0f, 0xae, 0xe8], "lfence", 3],
  [[0xc5, 0xf8, 0x77], "vzeroupper", 3],
  [[0xc5, 0xfc, 0x57, 0xc0], "vxorps", 4],
  [[0x48, 0xc7, 0xc0, 0x01, 0x00, 0x00, 0x00], "mov", 7],         // mov rax, 1
  [[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8], "mov", 10],              // mov rax, imm64
  [[0x66, 0xb8, 0x34, 0x12], "mov", 4],                           // mov ax, 0x1234
  [[0xb8, 0x34, 0x12], "mov", 3, 16],                             // mov ax, 0x1234 in 16-bit code
  [[0x8b, 0x44, 0x24, 0x08], "mov", 4],                           // mov eax, [rsp+8]: SIB + disp8
  [[0x8b, 0x04, 0x25, 0, 0, 0, 0], "mov", 7],                     // mov eax, [abs32]: SIB, no base
  [[0x81, 0x7d, 0x10, 1, 0, 0, 0], "cmp", 7],                     // cmp dword [rbp+0x10], 1
  [[0xf7, 0xd8], "neg", 2],
  [[0xf6, 0xc1, 0x01], "test", 3],                                // test cl, 1
  [[0xff, 0xd0], "call", 2],                                      // call rax
  [[0xe8, 0, 0, 0, 0], "call", 5],
  [[0x0f, 0x84, 0, 0, 0, 0], "je", 6],
  [[0x48, 0xcf], "iretq", 2],
  [[0xcd, 0x80], "int", 2],
  [[0x0f, 0x0b], "ud2", 2],
  [[0xf3, 0x0f, 0x1e, 0xfa], "endbr64", 4],
  [[0x0f, 0x05], "syscall", 2],
  [[0x0f, 0x09], "wbinvd", 2],
  [[0x06], "(bad)", 0],                                           // push es: invalid in 64-bit mode
  [[0x06], "push es", 1, 32],
  [[0x40], "(bad)", 0],                                           // a lone REX prefix
  [[0x0f], "(bad)", 0],                                           // truncated
  [[0x0f, 0xc7], "(bad)", 0],                                     // no ModRM
];

Deno.test("x86 decoder: bytes to mnemonic and length", () => {
  for (const [bytes, mnemonic, length, mode] of CASES) {
    const insn = decodeX86(new Uint8Array(bytes), mode ?? 64);
    const what = `${hexBytes(bytes)} (${mode ?? 64}-bit)`;
    strictEqual(insn.mnemonic, mnemonic, `${what}: mnemonic`);
    strictEqual(insn.length, length, `${what}: length`);
    if (length > 0) deepStrictEqual([...insn.bytes], bytes.slice(0, length), `${what}: bytes`);
  }
});

Deno.test("x86 decoder: only the instruction's own bytes, trailing ones left out", () => {
  // KVM gives 15 bytes: the instruction and whatever follows it.
  const kvm = [
    0xf0,
    0x48,
    0x0f,
    0xc7,
    0x4d,
    0x20,
    0x74,
    0x66,
    0x4c,
    0x8b,
    0x44,
    0x24,
    0x08,
    0x4d,
    0x89,
  ];
  strictEqual(describeX86(new Uint8Array(kvm)), "lock cmpxchg16b (f0 48 0f c7 4d 20)");
  strictEqual(describeX86(new Uint8Array([0x0f])), "(bad) (bytes: 0f)");
});

Deno.test("x86 decoder: unknown opcodes say so with their bytes, never throw", () => {
  const insn = decodeX86(new Uint8Array([0x0f, 0x3a, 0x0e, 0xc1, 0x08]));
  strictEqual(insn.known, false);
  strictEqual(insn.mnemonic, "(unknown 0f 3a 0e)");
  strictEqual(insn.length, 5);
  for (let i = 0; i < 2000; i++) {
    const bytes = crypto.getRandomValues(new Uint8Array(1 + (i % 15)));
    const r = decodeX86(bytes);
    strictEqual(typeof r.mnemonic, "string");
    strictEqual(r.length <= bytes.length, true);
  }
});
