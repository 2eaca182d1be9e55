/**
 * A small table-driven x86 instruction decoder: enough to name the instruction
 * a vCPU stopped on (a KVM emulation failure, a fault) and to find its length.
 * It reads the legacy prefixes, REX, VEX, the one-, two- and three-byte opcode
 * maps, ModRM (with its `/reg` opcode groups), SIB, displacement and
 * immediate; it does not format operands, except the control and debug
 * register of `mov cr`/`mov dr`. What it does not know comes back as
 * `(bad)` or `(unknown 0f xx)` with the bytes, never as an exception.
 *
 * Pure functions over a byte array: nothing here touches KVM, so the exit
 * path calls it only when asked (see `InternalErrorExit.instruction`).
 *
 * @module
 */

/** The code size the bytes are decoded for (CS.L / CS.D). */
export type X86Mode = 16 | 32 | 64;

/** One decoded instruction. */
export interface X86Instruction {
  /**
   * Its name, with the prefixes that change what it does (`lock cmpxchg16b`,
   * `rep movsb`, `xrstor64`, `mov cr4, reg`, `out`); `(bad)` when the bytes end
   * before the instruction does or the opcode is invalid in this mode.
   */
  mnemonic: string;
  /** Its length in bytes (0 for `(bad)`). */
  length: number;
  /** Its bytes (`length` of them; all the given bytes, at most 15, for `(bad)`). */
  bytes: Uint8Array;
  /** Whether the opcode was recognized (false: the mnemonic is a placeholder). */
  known: boolean;
}

/** Immediate size codes of the opcode tables. */
const enum Imm {
  None = 0,
  /** One byte. */
  B = 1,
  /** Two bytes. */
  W = 2,
  /** Operand size: 2 with 0x66, else 4 (4 also with REX.W). */
  Z = 3,
  /** Operand size, 8 with REX.W (only `mov r64, imm64`). */
  V = 4,
  /** Address size: the moffs of `mov al, [moffs]` (8 in 64-bit mode). */
  A = 5,
  /** `enter`: a word and a byte. */
  WB = 6,
  /** Far pointer: operand size + 2 (invalid in 64-bit mode). */
  P = 7,
}

/** An opcode: its name (or a group's names by ModRM.reg), whether it has ModRM, its immediate. */
interface Op {
  /** The name, or a function of the decoding state for prefix- or size-dependent names. */
  name: string | ((s: State) => string);
  /** Has a ModRM byte. */
  modrm?: boolean;
  /** Immediate (default none). */
  imm?: Imm | ((s: State) => Imm);
  /** Invalid in 64-bit mode. */
  no64?: boolean;
}

/** What the decoder knows while it reads one instruction. */
interface State {
  mode: X86Mode;
  opsize16: boolean;
  rexW: boolean;
  rep: boolean;
  repne: boolean;
  lock: boolean;
  mod: number;
  reg: number;
  rm: number;
}

const ALU = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"];
const SHIFT = ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"];
const CC = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"];

/** `name` plus the operand-size letter: b/w/d/q. */
const sized = (base: string, byteForm: boolean) => (s: State) =>
  base + (byteForm ? "b" : s.rexW ? "q" : s.opsize16 ? "w" : "d");
/** A group: the name by ModRM.reg. */
const group = (names: readonly string[]) => (s: State) => names[s.reg] ?? "(bad)";
/** With REX.W, the 64-bit form's name (`xsave` → `xsave64`). */
const w64 = (base: string) => (s: State) => s.rexW ? `${base}64` : base;

const ONE: (Op | undefined)[] = new Array(256);
const TWO: (Op | undefined)[] = new Array(256);

function fillOneByteMap(): void {
  for (let i = 0; i < 8; i++) {
    const b = i * 8;
    ONE[b] = { name: ALU[i], modrm: true };
    ONE[b + 1] = { name: ALU[i], modrm: true };
    ONE[b + 2] = { name: ALU[i], modrm: true };
    ONE[b + 3] = { name: ALU[i], modrm: true };
    ONE[b + 4] = { name: ALU[i], imm: Imm.B };
    ONE[b + 5] = { name: ALU[i], imm: Imm.Z };
  }
  ONE[0x06] = { name: "push es", no64: true };
  ONE[0x07] = { name: "pop es", no64: true };
  ONE[0x0e] = { name: "push cs", no64: true };
  ONE[0x16] = { name: "push ss", no64: true };
  ONE[0x17] = { name: "pop ss", no64: true };
  ONE[0x1e] = { name: "push ds", no64: true };
  ONE[0x1f] = { name: "pop ds", no64: true };
  ONE[0x27] = { name: "daa", no64: true };
  ONE[0x2f] = { name: "das", no64: true };
  ONE[0x37] = { name: "aaa", no64: true };
  ONE[0x3f] = { name: "aas", no64: true };
  for (let i = 0; i < 8; i++) {
    ONE[0x40 + i] = { name: "inc", no64: true }; // REX in 64-bit mode, taken before the table
    ONE[0x48 + i] = { name: "dec", no64: true };
    ONE[0x50 + i] = { name: "push" };
    ONE[0x58 + i] = { name: "pop" };
    ONE[0x91 + i] = { name: "xchg" };
    ONE[0xb0 + i] = { name: "mov", imm: Imm.B };
    ONE[0xb8 + i] = { name: "mov", imm: Imm.V };
    ONE[0xd8 + i] = { name: "x87 escape", modrm: true };
  }
  ONE[0x90] = { name: (s) => s.rep ? "pause" : "nop" };
  ONE[0x97] = { name: "xchg" };
  ONE[0x60] = { name: "pusha", no64: true };
  ONE[0x61] = { name: "popa", no64: true };
  ONE[0x62] = { name: "bound", modrm: true, no64: true };
  ONE[0x63] = { name: (s) => s.mode === 64 ? "movsxd" : "arpl", modrm: true };
  ONE[0x68] = { name: "push", imm: Imm.Z };
  ONE[0x69] = { name: "imul", modrm: true, imm: Imm.Z };
  ONE[0x6a] = { name: "push", imm: Imm.B };
  ONE[0x6b] = { name: "imul", modrm: true, imm: Imm.B };
  ONE[0x6c] = { name: "insb" };
  ONE[0x6d] = { name: (s) => s.opsize16 ? "insw" : "insd" };
  ONE[0x6e] = { name: "outsb" };
  ONE[0x6f] = { name: (s) => s.opsize16 ? "outsw" : "outsd" };
  for (let i = 0; i < 16; i++) {
    ONE[0x70 + i] = { name: `j${CC[i]}`, imm: Imm.B };
    TWO[0x80 + i] = { name: `j${CC[i]}`, imm: Imm.Z };
    TWO[0x90 + i] = { name: `set${CC[i]}`, modrm: true };
    TWO[0x40 + i] = { name: `cmov${CC[i]}`, modrm: true };
  }
  ONE[0x80] = { name: group(ALU), modrm: true, imm: Imm.B };
  ONE[0x81] = { name: group(ALU), modrm: true, imm: Imm.Z };
  ONE[0x82] = { name: group(ALU), modrm: true, imm: Imm.B, no64: true };
  ONE[0x83] = { name: group(ALU), modrm: true, imm: Imm.B };
  ONE[0x84] = { name: "test", modrm: true };
  ONE[0x85] = { name: "test", modrm: true };
  ONE[0x86] = { name: "xchg", modrm: true };
  ONE[0x87] = { name: "xchg", modrm: true };
  for (let i = 0x88; i <= 0x8b; i++) ONE[i] = { name: "mov", modrm: true };
  ONE[0x8c] = { name: "mov sreg", modrm: true };
  ONE[0x8d] = { name: "lea", modrm: true };
  ONE[0x8e] = { name: "mov sreg", modrm: true };
  ONE[0x8f] = { name: group(["pop"]), modrm: true };
  ONE[0x98] = { name: (s) => s.rexW ? "cdqe" : s.opsize16 ? "cbw" : "cwde" };
  ONE[0x99] = { name: (s) => s.rexW ? "cqo" : s.opsize16 ? "cwd" : "cdq" };
  ONE[0x9a] = { name: "call far", imm: Imm.P, no64: true };
  ONE[0x9b] = { name: "fwait" };
  ONE[0x9c] = { name: "pushf" };
  ONE[0x9d] = { name: "popf" };
  ONE[0x9e] = { name: "sahf" };
  ONE[0x9f] = { name: "lahf" };
  for (let i = 0xa0; i <= 0xa3; i++) ONE[i] = { name: "mov", imm: Imm.A };
  ONE[0xa4] = { name: "movsb" };
  ONE[0xa5] = { name: sized("movs", false) };
  ONE[0xa6] = { name: "cmpsb" };
  ONE[0xa7] = { name: sized("cmps", false) };
  ONE[0xa8] = { name: "test", imm: Imm.B };
  ONE[0xa9] = { name: "test", imm: Imm.Z };
  ONE[0xaa] = { name: "stosb" };
  ONE[0xab] = { name: sized("stos", false) };
  ONE[0xac] = { name: "lodsb" };
  ONE[0xad] = { name: sized("lods", false) };
  ONE[0xae] = { name: "scasb" };
  ONE[0xaf] = { name: sized("scas", false) };
  ONE[0xc0] = { name: group(SHIFT), modrm: true, imm: Imm.B };
  ONE[0xc1] = { name: group(SHIFT), modrm: true, imm: Imm.B };
  ONE[0xc2] = { name: "ret", imm: Imm.W };
  ONE[0xc3] = { name: "ret" };
  ONE[0xc4] = { name: "les", modrm: true, no64: true }; // VEX when it can be: taken before the table
  ONE[0xc5] = { name: "lds", modrm: true, no64: true };
  ONE[0xc6] = { name: group(["mov"]), modrm: true, imm: Imm.B };
  ONE[0xc7] = { name: group(["mov"]), modrm: true, imm: Imm.Z };
  ONE[0xc8] = { name: "enter", imm: Imm.WB };
  ONE[0xc9] = { name: "leave" };
  ONE[0xca] = { name: "retf", imm: Imm.W };
  ONE[0xcb] = { name: "retf" };
  ONE[0xcc] = { name: "int3" };
  ONE[0xcd] = { name: "int", imm: Imm.B };
  ONE[0xce] = { name: "into", no64: true };
  ONE[0xcf] = { name: (s) => s.rexW ? "iretq" : s.opsize16 ? "iret" : "iretd" };
  for (let i = 0xd0; i <= 0xd3; i++) ONE[i] = { name: group(SHIFT), modrm: true };
  ONE[0xd4] = { name: "aam", imm: Imm.B, no64: true };
  ONE[0xd5] = { name: "aad", imm: Imm.B, no64: true };
  ONE[0xd7] = { name: "xlat" };
  ONE[0xe0] = { name: "loopne", imm: Imm.B };
  ONE[0xe1] = { name: "loope", imm: Imm.B };
  ONE[0xe2] = { name: "loop", imm: Imm.B };
  ONE[0xe3] = { name: (s) => s.mode === 64 ? "jrcxz" : "jcxz", imm: Imm.B };
  ONE[0xe4] = { name: "in", imm: Imm.B };
  ONE[0xe5] = { name: "in", imm: Imm.B };
  ONE[0xe6] = { name: "out", imm: Imm.B };
  ONE[0xe7] = { name: "out", imm: Imm.B };
  ONE[0xe8] = { name: "call", imm: Imm.Z };
  ONE[0xe9] = { name: "jmp", imm: Imm.Z };
  ONE[0xea] = { name: "jmp far", imm: Imm.P, no64: true };
  ONE[0xeb] = { name: "jmp", imm: Imm.B };
  ONE[0xec] = { name: "in" };
  ONE[0xed] = { name: "in" };
  ONE[0xee] = { name: "out" };
  ONE[0xef] = { name: "out" };
  ONE[0xf1] = { name: "int1" };
  ONE[0xf4] = { name: "hlt" };
  ONE[0xf5] = { name: "cmc" };
  ONE[0xf6] = {
    name: group(["test", "test", "not", "neg", "mul", "imul", "div", "idiv"]),
    modrm: true,
    imm: (s) => s.reg < 2 ? Imm.B : Imm.None,
  };
  ONE[0xf7] = {
    name: group(["test", "test", "not", "neg", "mul", "imul", "div", "idiv"]),
    modrm: true,
    imm: (s) => s.reg < 2 ? Imm.Z : Imm.None,
  };
  ONE[0xf8] = { name: "clc" };
  ONE[0xf9] = { name: "stc" };
  ONE[0xfa] = { name: "cli" };
  ONE[0xfb] = { name: "sti" };
  ONE[0xfc] = { name: "cld" };
  ONE[0xfd] = { name: "std" };
  ONE[0xfe] = { name: group(["inc", "dec"]), modrm: true };
  ONE[0xff] = {
    name: group(["inc", "dec", "call", "call far", "jmp", "jmp far", "push"]),
    modrm: true,
  };
}

/** 0f 01 with ModRM.mod = 3: one instruction per whole ModRM byte. */
const GROUP7_REG: Readonly<Record<number, string>> = {
  0xc1: "vmcall",
  0xc2: "vmlaunch",
  0xc3: "vmresume",
  0xc4: "vmxoff",
  0xc8: "monitor",
  0xc9: "mwait",
  0xca: "clac",
  0xcb: "stac",
  0xd0: "xgetbv",
  0xd1: "xsetbv",
  0xd8: "vmrun",
  0xd9: "vmmcall",
  0xda: "vmload",
  0xdb: "vmsave",
  0xdc: "stgi",
  0xdd: "clgi",
  0xde: "skinit",
  0xdf: "invlpga",
  0xee: "rdpkru",
  0xef: "wrpkru",
  0xf8: "swapgs",
  0xf9: "rdtscp",
  0xfa: "monitorx",
  0xfb: "mwaitx",
  0xfc: "clzero",
};

function fillTwoByteMap(): void {
  TWO[0x00] = { name: group(["sldt", "str", "lldt", "ltr", "verr", "verw"]), modrm: true };
  TWO[0x01] = {
    name: (s) => {
      if (s.mod === 3) {
        const whole = 0xc0 | (s.reg << 3) | s.rm;
        if (GROUP7_REG[whole]) return GROUP7_REG[whole];
        if (s.reg === 4) return "smsw";
        if (s.reg === 6) return "lmsw";
        return "(bad)";
      }
      return ["sgdt", "sidt", "lgdt", "lidt", "smsw", "(bad)", "lmsw", "invlpg"][s.reg];
    },
    modrm: true,
  };
  TWO[0x02] = { name: "lar", modrm: true };
  TWO[0x03] = { name: "lsl", modrm: true };
  TWO[0x05] = { name: "syscall" };
  TWO[0x06] = { name: "clts" };
  TWO[0x07] = { name: "sysret" };
  TWO[0x08] = { name: "invd" };
  TWO[0x09] = { name: "wbinvd" };
  TWO[0x0b] = { name: "ud2" };
  TWO[0x0d] = { name: "prefetch", modrm: true };
  TWO[0x10] = { name: (s) => sse(s, "movups", "movupd", "movss", "movsd"), modrm: true };
  TWO[0x11] = { name: (s) => sse(s, "movups", "movupd", "movss", "movsd"), modrm: true };
  TWO[0x18] = { name: "prefetch", modrm: true };
  for (let i = 0x19; i <= 0x1f; i++) TWO[i] = { name: "nop", modrm: true };
  TWO[0x1e] = {
    name: (s) =>
      s.rep && s.mod === 3 && s.reg === 7 && (s.rm & 6) === 2
        ? (s.rm === 3 ? "endbr32" : "endbr64")
        : "nop",
    modrm: true,
  };
  // mov to/from CR and DR: ModRM.mod is ignored (always a register).
  TWO[0x20] = { name: (s) => `mov reg, cr${s.reg}`, modrm: true };
  TWO[0x21] = { name: (s) => `mov reg, dr${s.reg}`, modrm: true };
  TWO[0x22] = { name: (s) => `mov cr${s.reg}, reg`, modrm: true };
  TWO[0x23] = { name: (s) => `mov dr${s.reg}, reg`, modrm: true };
  TWO[0x28] = { name: (s) => s.opsize16 ? "movapd" : "movaps", modrm: true };
  TWO[0x29] = { name: (s) => s.opsize16 ? "movapd" : "movaps", modrm: true };
  TWO[0x2b] = { name: (s) => s.opsize16 ? "movntpd" : "movntps", modrm: true };
  TWO[0x30] = { name: "wrmsr" };
  TWO[0x31] = { name: "rdtsc" };
  TWO[0x32] = { name: "rdmsr" };
  TWO[0x33] = { name: "rdpmc" };
  TWO[0x34] = { name: "sysenter" };
  TWO[0x35] = { name: "sysexit" };
  TWO[0x37] = { name: "getsec" };
  TWO[0x57] = { name: (s) => s.opsize16 ? "xorpd" : "xorps", modrm: true };
  TWO[0x6e] = { name: "movd", modrm: true };
  TWO[0x6f] = { name: (s) => sse(s, "movq", "movdqa", "movdqu", "(bad)"), modrm: true };
  TWO[0x77] = { name: "emms" };
  TWO[0x78] = { name: "vmread", modrm: true };
  TWO[0x79] = { name: "vmwrite", modrm: true };
  TWO[0x7e] = { name: (s) => s.rep ? "movq" : "movd", modrm: true };
  TWO[0x7f] = { name: (s) => sse(s, "movq", "movdqa", "movdqu", "(bad)"), modrm: true };
  TWO[0xa0] = { name: "push fs" };
  TWO[0xa1] = { name: "pop fs" };
  TWO[0xa2] = { name: "cpuid" };
  TWO[0xa3] = { name: "bt", modrm: true };
  TWO[0xa4] = { name: "shld", modrm: true, imm: Imm.B };
  TWO[0xa5] = { name: "shld", modrm: true };
  TWO[0xa8] = { name: "push gs" };
  TWO[0xa9] = { name: "pop gs" };
  TWO[0xaa] = { name: "rsm" };
  TWO[0xab] = { name: "bts", modrm: true };
  TWO[0xac] = { name: "shrd", modrm: true, imm: Imm.B };
  TWO[0xad] = { name: "shrd", modrm: true };
  TWO[0xae] = { name: group15, modrm: true };
  TWO[0xaf] = { name: "imul", modrm: true };
  TWO[0xb0] = { name: "cmpxchg", modrm: true };
  TWO[0xb1] = { name: "cmpxchg", modrm: true };
  TWO[0xb2] = { name: "lss", modrm: true };
  TWO[0xb3] = { name: "btr", modrm: true };
  TWO[0xb4] = { name: "lfs", modrm: true };
  TWO[0xb5] = { name: "lgs", modrm: true };
  TWO[0xb6] = { name: "movzx", modrm: true };
  TWO[0xb7] = { name: "movzx", modrm: true };
  TWO[0xb8] = { name: (s) => s.rep ? "popcnt" : "jmpe", modrm: true };
  TWO[0xb9] = { name: "ud1", modrm: true };
  TWO[0xba] = {
    name: group(["(bad)", "(bad)", "(bad)", "(bad)", "bt", "bts", "btr", "btc"]),
    modrm: true,
    imm: Imm.B,
  };
  TWO[0xbb] = { name: "btc", modrm: true };
  TWO[0xbc] = { name: (s) => s.rep ? "tzcnt" : "bsf", modrm: true };
  TWO[0xbd] = { name: (s) => s.rep ? "lzcnt" : "bsr", modrm: true };
  TWO[0xbe] = { name: "movsx", modrm: true };
  TWO[0xbf] = { name: "movsx", modrm: true };
  TWO[0xc0] = { name: "xadd", modrm: true };
  TWO[0xc1] = { name: "xadd", modrm: true };
  TWO[0xc3] = { name: "movnti", modrm: true };
  TWO[0xc7] = { name: group9, modrm: true };
  for (let i = 0; i < 8; i++) TWO[0xc8 + i] = { name: "bswap" };
  TWO[0xe7] = { name: (s) => s.opsize16 ? "movntdq" : "movntq", modrm: true };
  TWO[0xef] = { name: "pxor", modrm: true };
  TWO[0xff] = { name: "ud0", modrm: true };
}

/** The name an SSE opcode takes with no prefix, 0x66, 0xf3 or 0xf2. */
function sse(s: State, none: string, p66: string, pf3: string, pf2: string): string {
  return s.rep ? pf3 : s.repne ? pf2 : s.opsize16 ? p66 : none;
}

/** 0f ae: the FXSAVE/XSAVE family in memory, fences and FS/GS base access on registers. */
function group15(s: State): string {
  if (s.mod !== 3) {
    if (s.opsize16 && s.reg === 6) return "clwb";
    if (s.opsize16 && s.reg === 7) return "clflushopt";
    const names = ["fxsave", "fxrstor", "ldmxcsr", "stmxcsr", "xsave", "xrstor", "xsaveopt"];
    if (s.reg < 7) return s.reg === 2 || s.reg === 3 ? names[s.reg] : w64(names[s.reg])(s);
    return "clflush";
  }
  if (s.rep) return ["rdfsbase", "rdgsbase", "wrfsbase", "wrgsbase", "ptwrite"][s.reg] ?? "(bad)";
  return ["(bad)", "(bad)", "(bad)", "(bad)", "(bad)", "lfence", "mfence", "sfence"][s.reg];
}

/** 0f c7: CMPXCHG8B/16B, the XSAVEC/XSAVES/XRSTORS family, VMX pointers, RDRAND/RDSEED. */
function group9(s: State): string {
  if (s.mod === 3) {
    if (s.reg === 6) return "rdrand";
    if (s.reg === 7) return s.rep ? "rdpid" : "rdseed";
    return "(bad)";
  }
  switch (s.reg) {
    case 1:
      return s.rexW ? "cmpxchg16b" : "cmpxchg8b";
    case 3:
      return w64("xrstors")(s);
    case 4:
      return w64("xsavec")(s);
    case 5:
      return w64("xsaves")(s);
    case 6:
      return s.opsize16 ? "vmclear" : s.rep ? "vmxon" : "vmptrld";
    case 7:
      return "vmptrst";
    default:
      return "(bad)";
  }
}

/** The 0f 38 map (ModRM, no immediate): the few a VMM meets. */
const MAP_0F38: Readonly<Partial<Record<number, (s: State) => string>>> = {
  0x00: (s) => s.opsize16 ? "pshufb" : "pshufb (mmx)",
  0x17: (s) => s.opsize16 ? "ptest" : "(unknown 0f 38 17)",
  0xdc: (s) => s.opsize16 ? "aesenc" : "(unknown 0f 38 dc)",
  0xdd: (s) => s.opsize16 ? "aesenclast" : "(unknown 0f 38 dd)",
  0xde: (s) => s.opsize16 ? "aesdec" : "(unknown 0f 38 de)",
  0xdf: (s) => s.opsize16 ? "aesdeclast" : "(unknown 0f 38 df)",
  0x80: (s) => s.opsize16 ? "invept" : "(unknown 0f 38 80)",
  0x81: (s) => s.opsize16 ? "invvpid" : "(unknown 0f 38 81)",
  0x82: (s) => s.opsize16 ? "invpcid" : "(unknown 0f 38 82)",
  0xf0: (s) => s.repne ? "crc32" : "movbe",
  0xf1: (s) => s.repne ? "crc32" : "movbe",
};

/** The 0f 3a map (ModRM and an immediate byte). */
const MAP_0F3A: Readonly<Partial<Record<number, (s: State) => string>>> = {
  0x44: (s) => s.opsize16 ? "pclmulqdq" : "(unknown 0f 3a 44)",
  0x0f: (s) => s.opsize16 ? "palignr" : "palignr (mmx)",
};

fillOneByteMap();
fillTwoByteMap();

const BAD_LENGTH = 0;

function bad(bytes: Uint8Array, name = "(bad)"): X86Instruction {
  return {
    mnemonic: name,
    length: BAD_LENGTH,
    bytes: bytes.slice(0, Math.min(bytes.length, 15)),
    known: false,
  };
}

/** Length of a ModRM operand's SIB and displacement, given the ModRM byte at `at`. */
function modrmTail(bytes: Uint8Array, at: number, addr16: boolean): number {
  const modrm = bytes[at];
  const mod = modrm >> 6;
  const rm = modrm & 7;
  if (mod === 3) return 0;
  if (addr16) {
    if (mod === 0) return rm === 6 ? 2 : 0;
    return mod === 1 ? 1 : 2;
  }
  let n = 0;
  let base = rm;
  if (rm === 4) {
    if (at + 1 >= bytes.length) return -1;
    n = 1; // SIB
    base = bytes[at + 1] & 7;
  }
  if (mod === 0) return n + (base === 5 ? 4 : 0);
  return n + (mod === 1 ? 1 : 4);
}

/**
 * Decodes the instruction at the start of `bytes` (up to 15 bytes are
 * looked at) for `mode` (default 64-bit). Never throws: unknown or
 * truncated encodings give `known: false`.
 */
export function decodeX86(bytes: Uint8Array, mode: X86Mode = 64): X86Instruction {
  const s: State = {
    mode,
    // "opsize16": the operand size is 16 bits (the default in 16-bit code, 0x66 elsewhere).
    opsize16: mode === 16,
    rexW: false,
    rep: false,
    repne: false,
    lock: false,
    mod: 0,
    reg: 0,
    rm: 0,
  };
  let addr16 = mode === 16;
  let addrSize = mode === 64 ? 8 : mode === 32 ? 4 : 2;
  let p = 0;
  const end = Math.min(bytes.length, 15);
  // Legacy prefixes, any order; REX must come last (a legacy prefix after it cancels it).
  for (; p < end; p++) {
    const b = bytes[p];
    if (b === 0xf0) s.lock = true;
    else if (b === 0xf3) (s.rep = true, s.repne = false);
    else if (b === 0xf2) (s.repne = true, s.rep = false);
    else if (b === 0x66) s.opsize16 = mode !== 16;
    else if (b === 0x67) {
      addr16 = mode === 32;
      addrSize = mode === 64 ? 4 : mode === 32 ? 2 : 4;
    } else if (b === 0x2e || b === 0x36 || b === 0x3e || b === 0x26 || b === 0x64 || b === 0x65) {
      // segment override: no effect on the name
    } else if (mode === 64 && (b & 0xf0) === 0x40) {
      s.rexW = (b & 8) !== 0;
      // REX counts only right before the opcode.
      if (p + 1 < end && isLegacyPrefix(bytes[p + 1])) s.rexW = false;
    } else break;
  }
  if (p >= end) return bad(bytes);

  const opcode = bytes[p];
  // VEX (c4/c5): in 64-bit mode always; elsewhere when the next byte's top two bits are set.
  if ((opcode === 0xc4 || opcode === 0xc5) && (mode === 64 || (bytes[p + 1] ?? 0) >= 0xc0)) {
    return decodeVex(bytes, p, end, addr16);
  }
  let op: Op | undefined;
  let prefix = "";
  let mapName = "";
  let q = p + 1;
  if (opcode === 0x0f) {
    if (q >= end) return bad(bytes);
    const second = bytes[q++];
    if (second === 0x38 || second === 0x3a) {
      if (q >= end) return bad(bytes);
      const third = bytes[q++];
      const fn: ((s: State) => string) | undefined = second === 0x38
        ? MAP_0F38[third]
        : MAP_0F3A[third];
      op = {
        name: fn ??
          (() => `(unknown 0f ${hex2(second)} ${hex2(third)})`),
        modrm: true,
        imm: second === 0x3a ? Imm.B : Imm.None,
      };
      mapName = fn ? "" : "unknown";
    } else {
      op = TWO[second];
      if (!op) {
        op = { name: `(unknown 0f ${hex2(second)})`, modrm: true };
        mapName = "unknown";
      }
    }
  } else {
    op = ONE[opcode];
    if (!op || (op.no64 && mode === 64)) return bad(bytes);
  }
  if (op.modrm) {
    if (q >= end) return bad(bytes);
    const modrm = bytes[q];
    s.mod = modrm >> 6;
    s.reg = (modrm >> 3) & 7;
    s.rm = modrm & 7;
    const tail = modrmTail(bytes, q, addr16);
    if (tail < 0) return bad(bytes);
    q += 1 + tail;
  }
  let name = typeof op.name === "string" ? op.name : op.name(s);
  const immCode = typeof op.imm === "function" ? op.imm(s) : op.imm ?? Imm.None;
  const operand = s.opsize16 ? 2 : 4;
  q += [
    0,
    1,
    2,
    operand,
    s.rexW ? 8 : operand,
    addrSize,
    3,
    operand + 2,
  ][immCode];
  if (q > end || name === "(bad)") return bad(bytes, name);
  if (s.lock) prefix += "lock ";
  if (isStringOp(opcode) && (s.rep || s.repne)) {
    prefix += s.repne
      ? "repne "
      : opcode === 0xa6 || opcode === 0xa7 || opcode >= 0xae
      ? "repe "
      : "rep ";
  }
  name = prefix + name;
  return { mnemonic: name, length: q, bytes: bytes.slice(0, q), known: mapName === "" };
}

function isLegacyPrefix(b: number): boolean {
  return b === 0xf0 || b === 0xf2 || b === 0xf3 || b === 0x66 || b === 0x67 || b === 0x2e ||
    b === 0x36 || b === 0x3e || b === 0x26 || b === 0x64 || b === 0x65;
}

function isStringOp(opcode: number): boolean {
  return (opcode >= 0x6c && opcode <= 0x6f) || (opcode >= 0xa4 && opcode <= 0xa7) ||
    (opcode >= 0xaa && opcode <= 0xaf);
}

/** VEX-encoded (AVX) instructions: the map and opcode, and the few with a well-known name. */
function decodeVex(bytes: Uint8Array, p: number, end: number, addr16: boolean): X86Instruction {
  const three = bytes[p] === 0xc4;
  const headerEnd = p + (three ? 3 : 2);
  if (headerEnd >= end) return bad(bytes);
  const map = three ? bytes[p + 1] & 0x1f : 1;
  const opcode = bytes[headerEnd];
  const vexL = ((three ? bytes[p + 2] : bytes[p + 1]) >> 2) & 1;
  let q = headerEnd + 1;
  let name: string;
  if (map === 1 && opcode === 0x77) {
    name = vexL ? "vzeroall" : "vzeroupper";
  } else {
    if (q >= end) return bad(bytes);
    const tail = modrmTail(bytes, q, addr16);
    if (tail < 0) return bad(bytes);
    q += 1 + tail + (map === 3 ? 1 : 0);
    const known: Record<number, string> = { 0x10: "vmovups", 0x11: "vmovups", 0x57: "vxorps" };
    const knownName = map === 1 ? known[opcode] : undefined;
    if (!knownName) {
      if (q > end) return bad(bytes);
      return {
        mnemonic: `(vex map ${map} opcode ${hex2(opcode)})`,
        length: q,
        bytes: bytes.slice(0, q),
        known: false,
      };
    }
    name = knownName;
  }
  if (q > end) return bad(bytes);
  return { mnemonic: name, length: q, bytes: bytes.slice(0, q), known: true };
}

function hex2(b: number): string {
  return b.toString(16).padStart(2, "0");
}

/** The bytes as lowercase hex pairs: `f0 48 0f c7 4d 20`. */
export function hexBytes(bytes: ArrayLike<number>): string {
  return Array.from(bytes, hex2).join(" ");
}

/**
 * One line naming the instruction: `lock cmpxchg16b (f0 48 0f c7 4d 20)`, or
 * for bytes it cannot decode, `(bad) (bytes: ...)`.
 */
export function describeX86(bytes: Uint8Array, mode: X86Mode = 64): string {
  const insn = decodeX86(bytes, mode);
  return insn.length > 0
    ? `${insn.mnemonic} (${hexBytes(insn.bytes)})`
    : `${insn.mnemonic} (bytes: ${hexBytes(insn.bytes)})`;
}
