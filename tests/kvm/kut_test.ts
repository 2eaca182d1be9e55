// A few programs of kvm-unit-tests (the KVM community's own test suite) on the
// MultibootMachine: each must end through the isa-debug-exit port with status 1
// (its report_summary() found no failure). They are quick ones that QEMU
// passes on both KVMs of this project (`deno task kut --subset ci` runs them
// on QEMU too). The suite is GPL test data, built on the host from
// ../shared/peer/ into .cache/kut (git-ignored); where it cannot be built (no
// make or gcc, no tarball: the sandbox guest has neither) the tests skip with
// the reason. KUT_BUILD names another build.

import { deepStrictEqual } from "node:assert/strict";
import { MultibootMachine } from "../../src/boot/multiboot_machine.ts";
import { ensureBuild, environ } from "../../tools/kut/kut.ts";
import { featureTest } from "./kvm_features.ts";

let suite = "";
let missing: string | undefined;
try {
  const given = Deno.env.get("KUT_BUILD");
  suite = given ? await ensureBuild(given, undefined, { build: false }) : await ensureBuild();
} catch (e) {
  missing = `kvm-unit-tests cannot be built here: ${(e as Error).message.split("\n")[0]}`;
}

/**
 * The subset: [unittests.cfg name, program, vCPUs, test_args]. realmode needs
 * pc-testdev's IRQ 11 at the BIOS's vector 0x73 (test_sti_inhibit) and, on a
 * KVM that emulates real mode, the most time; s3 sleeps through the PM1
 * control register and resumes at the FACS's waking vector.
 */
const SUBSET: [string, string, number, string][] = [
  ["smptest", "smptest.flat", 2, ""],
  ["smptest3", "smptest.flat", 3, ""],
  ["setjmp", "setjmp.flat", 1, ""],
  ["vmexit_cpuid", "vmexit.flat", 1, "cpuid"],
  ["realmode", "realmode.flat", 1, ""],
  ["s3", "s3.flat", 1, ""],
];

for (const [name, file, cpus, args] of SUBSET) {
  featureTest(
    `kvm-unit-tests ${name} (${cpus} vCPU${cpus > 1 ? "s" : ""}) passes on the Multiboot machine`,
    missing,
    async () => {
      let serial = "";
      using machine = MultibootMachine.create({
        kernel: Deno.readFileSync(`${suite}/x86/${file}`),
        // As QEMU's Multiboot loader: "<kernel file> <append>".
        cmdline: args ? `x86/${file} ${args}` : `x86/${file}`,
        modules: [{ data: new TextEncoder().encode(environ(cpus, 256)), cmdline: "env" }],
        memorySize: 256 << 20,
        cpus,
        serialOutput: (b) => serial += String.fromCharCode(b),
      });
      // realmode: 14-40 s on a KVM that emulates real mode (kvm_pvm), under load.
      const exit = await machine.run({ timeoutMs: name === "realmode" ? 180_000 : 60_000 });
      // status 1 = exit(0) through port 0xf4: every check of the program passed.
      deepStrictEqual(
        { reason: exit.reason, status: exit.status },
        { reason: "debugExit", status: 1 },
        `${name}: ${exit.reason} ${exit.detail ?? ""}\nserial:\n${serial}`,
      );
    },
  );
}
