// Soundness at the edges of the core (issue 11): each case runs a script of
// tests/kvm/soundness/ in its own process, since the failure it guards
// against is a SIGSEGV of the whole process (or a silent write into memory
// that is not the guest's). A case passes only when the child exits
// normally (no signal, status 0) and prints what the library promised: a
// typed error or a documented no-op. The racy ones loop 20 times inside the
// child.

import { ok as assert } from "node:assert/strict";

async function runScript(name: string): Promise<string> {
  const script = new URL(`./soundness/${name}.ts`, import.meta.url).pathname;
  const { code, signal, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert(signal === null, `${name} was killed by ${signal}:\n${out}`);
  assert(code === 0, `${name} exited with ${code}:\n${out}`);
  return out;
}

Deno.test("kicking a closed vCPU is a no-op (was: a write to address 1, SIGSEGV)", async () => {
  assert((await runScript("kick_after_close")).includes("no-op ok"));
});

Deno.test("a kick target taken before vm.close() kicks nothing, reused address untouched", async () => {
  assert((await runScript("kick_after_vm_close")).includes("no-op ok"));
});

Deno.test("kicks from a Worker racing vm.close() and new mappings (20 rounds)", async () => {
  assert((await runScript("kick_race")).includes("20 rounds ok"));
});

Deno.test("an adopted vCPU running on a Worker while vm.close(): EBADF, no SIGSEGV (20 rounds)", async () => {
  const out = await runScript("adopt_run_vs_close");
  assert(/run EBADF x\d+/.test(out), out);
});

Deno.test("KvmContext.close() with a handler stuck in native code keeps its memory, reports it", async () => {
  const out = await runScript("context_close_stuck");
  assert(out.includes("kept vCPU 0 mapped, handler state 2 ok"), out);
  assert(out.includes("could not be stopped"), out);
});

Deno.test("closing guest memory that a slot uses is EBUSY; after removing the slot it closes", async () => {
  const out = await runScript("memory_close_in_slot");
  assert(out.includes("EBUSY ok") && out.includes("closed=true"), out);
});

Deno.test("negative, fractional and NaN lengths and addresses are EINVAL naming the parameter", async () => {
  const out = await runScript("negative_length");
  assert(!out.includes("VIOLATION") && out.includes("readGuest(0, 0): 0 bytes"), out);
});

Deno.test("GuestRam views outlive their owner's close until GuestRam.close(); view() then EBADF", async () => {
  const out = await runScript("guest_ram_after_close");
  assert(out.includes("readable until GuestRam.close() ok") && !out.includes("VIOLATION"), out);
});
