/**
 * A one-instruction fix of QEMU 7.2's emulated SVM, applied to a private copy of the host's
 * `qemu-system-x86_64` (the host's binary is never touched).
 *
 * The bug (QEMU 7.2 `target/i386/tcg/sysemu/svm_helper.c`, `helper_vmrun`, still present
 * upstream): when the VMCB's EVENTINJ holds an external interrupt (type INTR, which is how
 * kvm_amd injects every interrupt into its guest), VMRUN delivers it at once through
 * `do_interrupt_x86_hardirq`, but first stores the vector in `cs->exception_index` and, unlike
 * the NMI, exception and software-interrupt cases, never leaves the CPU loop, so nothing resets
 * it. When an exit request reaches the vCPU before the guest's next exception or #VMEXIT (the
 * round-robin TCG thread's 100 ms kick with two or more vCPUs, a cross-CPU flush),
 * `cpu_handle_interrupt` keeps the stale vector (it only writes EXCP_INTERRUPT over -1) and
 * `cpu_handle_exception` delivers it again: the nested guest takes the same interrupt a second
 * time wherever it is, with its IF 0. That is the sandbox's "second timer interrupt at the
 * handler's first instruction" panic and its deadlocks on a lock or seqcount that the
 * interrupted handler holds (bench/RESULTS.md, seventh session).
 *
 * The fix turns that store into a NOP: the vector is passed to `do_interrupt_x86_hardirq` in a
 * register anyway, and `exception_index` stays -1 as it is while a translation block runs. The
 * instruction is found by its bytes (the INTR case's stores to `error_code`, `exception_index`,
 * `exception_is_int`, `exception_next_eip`, then the call with `is_hw` 1), which must match
 * exactly once; any other QEMU build is used unpatched.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { cacheDir, hashKey } from "./cache.ts";

/** Bytes written as space-separated hex pairs, one instruction per string. */
function hex(...instructions: string[]): number[] {
  return instructions.join(" ").split(" ").map((h) => parseInt(h, 16));
}

/**
 * The INTR case of `helper_vmrun` in Debian's 7.2 build (x86-64, gcc): `mov %r13d,error_code`,
 * `mov %esi,exception_index` (the store to remove), `movl $0,exception_is_int`,
 * `movq $-1,exception_next_eip`, then `testb $2,qemu_loglevel(%rip)`.
 */
const INTR_CASE = hex(
  "44 89 ab 80 33 00 00", // mov %r13d,0x3380(%rbx)
  "89 b3 54 ef ff ff", // mov %esi,-0x10ac(%rbx): cs->exception_index = vector
  "c7 83 84 33 00 00 00 00 00 00", // movl $0x0,0x3384(%rbx)
  "48 c7 83 88 33 00 00 ff ff ff ff", // movq $-1,0x3388(%rbx)
  "f6 05", // testb $imm8, rel32(%rip)
);
/** Where the 6-byte store sits in {@link INTR_CASE}. */
const STORE_AT = 7;
/** After the pattern: rel32 (4), then `02`, the CPU_LOG_TB_IN_ASM test's immediate. */
const LOG_BIT_AT = INTR_CASE.length + 4;
/** Then `jne` rel32 (6 bytes). */
const JNE_AT = LOG_BIT_AT + 1;
const JNE = hex("0f 85");
/** Then the call. */
const CALL_AT = JNE_AT + 6;
/** `mov $1,%edx; mov %rbx,%rdi; call`: do_interrupt_x86_hardirq(env, vector, 1). */
const CALL = hex("ba 01 00 00 00 48 89 df e8");
/** A 6-byte NOP (`nopw 0x0(%rax,%rax,1)`), as long as the store. */
const NOP6 = hex("66 0f 1f 44 00 00");

function matchesAt(bytes: Uint8Array, at: number, pattern: number[]): boolean {
  if (at < 0 || at + pattern.length > bytes.length) return false;
  for (let i = 0; i < pattern.length; i++) if (bytes[at + i] !== pattern[i]) return false;
  return true;
}

/**
 * The file offset of `helper_vmrun`'s store of the injected vector into `exception_index`, or
 * `null` unless the INTR case's instructions occur exactly once (another build or version).
 */
export function findVmrunVectorStore(bytes: Uint8Array): number | null {
  let found: number | null = null;
  for (let at = bytes.indexOf(INTR_CASE[0]); at >= 0; at = bytes.indexOf(INTR_CASE[0], at + 1)) {
    if (!matchesAt(bytes, at, INTR_CASE)) continue;
    if (bytes[at + LOG_BIT_AT] !== 0x02) continue;
    if (!matchesAt(bytes, at + JNE_AT, JNE)) continue;
    if (!matchesAt(bytes, at + CALL_AT, CALL)) continue;
    if (found !== null) return null; // ambiguous: leave the binary alone
    found = at + STORE_AT;
  }
  return found;
}

/** A copy of `bytes` with the store NOP'ed, or `null` when it is not found exactly once. */
export function patchVmrunVectorStore(bytes: Uint8Array): Uint8Array | null {
  const at = findVmrunVectorStore(bytes);
  if (at === null) return null;
  const out = bytes.slice();
  out.set(NOP6, at);
  return out;
}

/** Which QEMU the sandbox runs, and why. */
export interface SandboxQemu {
  /** the executable to spawn */
  path: string;
  /** whether it carries the fix */
  fixed: boolean;
  /** one line for the log: what was done, or why the host's binary is used as is */
  note: string;
}

/**
 * The QEMU to run: a fixed copy of `hostQemu` when its bytes allow (cached in the sandbox's
 * cache directory, keyed by the binary's path, size and mtime), else `hostQemu` itself.
 * `DENO_KVM_SANDBOX_QEMU_FIX=0` turns the fix off (to compare, or to rule it out).
 *
 * The copy lives at `<dir>/usr/bin/qemu-system-x86_64` next to `usr/share` and `usr/lib` links
 * to the host's: QEMU finds its firmware and its modules (the TCG accelerator is one) relative
 * to its own executable.
 */
export async function sandboxQemu(hostQemu: string): Promise<SandboxQemu> {
  if (Deno.env.get("DENO_KVM_SANDBOX_QEMU_FIX") === "0") {
    return { path: hostQemu, fixed: false, note: "QEMU fix off (DENO_KVM_SANDBOX_QEMU_FIX=0)" };
  }
  const real = await Deno.realPath(hostQemu);
  const st = await Deno.stat(real);
  const key = await hashKey([real, String(st.size), String(st.mtime?.getTime() ?? 0)]);
  const root = join(cacheDir(), `qemu-fix-${key}`);
  const exe = join(root, "usr", "bin", "qemu-system-x86_64");
  const ready = await Deno.stat(exe).then(() => true, () => false);
  if (!ready) {
    const patched = patchVmrunVectorStore(await Deno.readFile(real));
    if (!patched) {
      return {
        path: hostQemu,
        fixed: false,
        note: `QEMU unfixed: ${real} is not the 7.2 build whose VMRUN store is known`,
      };
    }
    const prefix = dirname(dirname(real)); // /usr for /usr/bin/qemu-system-x86_64
    await Deno.mkdir(join(root, "usr", "bin"), { recursive: true });
    for (const d of ["share", "lib"]) {
      await Deno.symlink(join(prefix, d), join(root, "usr", d)).catch((e) => {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      });
    }
    const tmp = `${exe}.${Deno.pid}.tmp`;
    await Deno.writeFile(tmp, patched, { mode: 0o755 });
    await Deno.rename(tmp, exe); // atomic: a concurrent run sees the old state or the whole file
  }
  return {
    path: exe,
    fixed: true,
    note: "QEMU fixed: VMRUN's injected interrupt no longer left in exception_index",
  };
}
