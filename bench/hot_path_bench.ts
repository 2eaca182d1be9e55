/**
 * `deno bench -A`: the run loop's hot path, one operation per iteration, on
 * this machine's `/dev/kvm` (skipped, with a note, where there is none:
 * `deno task bench` then measures in the sandbox, against the C baseline).
 *
 * Cases 1, 2 and 5 of bench/cases.ts; the guests are in bench/guests.ts.
 *
 * @module
 */

import type { Regs } from "../mod.ts";
import type { Guest } from "./guests.ts";
import { MMIO_GUEST, openGuest, PIO_GUEST, whyNoKvm } from "./guests.ts";
import { mmioStep, pioStep } from "./cases.ts";

const noKvm = whyNoKvm();
if (noKvm) console.log(`hot_path_bench: skipped: ${noKvm}; \`deno task bench\` uses the sandbox`);

/** Opens a guest on first use and closes it when the process ends. */
function lazyGuest(spec: typeof PIO_GUEST): () => Guest {
  let guest: Guest | undefined;
  globalThis.addEventListener("unload", () => guest?.close());
  return () => guest ??= openGuest(spec);
}

const pioGuest = lazyGuest(PIO_GUEST);
let pioNext = 0;
Deno.bench({
  name: "1. PIO exit round trip (KVM_RUN, decode, handler)",
  group: "exits",
  ignore: noKvm !== null,
  warmup: 1000,
  fn() {
    pioNext = pioStep(pioGuest().vcpu, pioNext);
  },
});

const mmioGuest = lazyGuest(MMIO_GUEST);
let mmioState = 0;
Deno.bench({
  name: "2. MMIO exit round trip (write and read of an unmapped address)",
  group: "exits",
  ignore: noKvm !== null,
  warmup: 1000,
  fn() {
    mmioState = mmioStep(mmioGuest().vcpu, mmioState);
  },
});

const regsGuest = lazyGuest(PIO_GUEST);
Deno.bench({
  name: "5a. KVM_GET_REGS",
  group: "ioctls",
  ignore: noKvm !== null,
  fn() {
    regsGuest().vcpu.getRegs();
  },
});

let regs: Regs | undefined;
Deno.bench({
  name: "5b. KVM_SET_REGS",
  group: "ioctls",
  ignore: noKvm !== null,
  fn() {
    const vcpu = regsGuest().vcpu;
    vcpu.setRegs(regs ??= vcpu.getRegs());
  },
});
