// Run as a child process by context_test.ts: closes a KvmContext while vCPU 0
// spins in `jmp $` and vCPU 1 (an AP that never gets a SIPI) sleeps inside
// KVM_RUN, then returns from the module without Deno.exit(): the process must
// end by itself, which it only does once every worker is gone.

import { KvmContext } from "../../../mod.ts";

const ctx = await KvmContext.create({ memory: 1 << 20, vcpus: 2 });
ctx.vm.writeGuest(0x1000, [0xeb, 0xfe]); // jmp $
const vcpu = ctx.vcpu(0);
const sregs = vcpu.getSregs();
sregs.cs.base = 0n;
sregs.cs.selector = 0;
vcpu.setSregs(sregs);
vcpu.setRegs(vcpu.getRegs().assign({ rip: 0x1000n, rflags: 2n }));
const run = ctx.run();
await new Promise((r) => setTimeout(r, 100));
await ctx.close();
const result = await run;
console.log(`closed: ${JSON.stringify(result.vcpus.map((v) => v.stop.kind))}`);
