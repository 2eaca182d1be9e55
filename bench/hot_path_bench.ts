/**
 * `deno bench -A`: the run loop's hot path, one operation per iteration, on
 * this machine's `/dev/kvm` (skipped, with a note, where there is none:
 * `deno task bench` then measures in the sandbox, against the C baseline).
 *
 * Cases 1, 2 and 5 of bench/cases.ts; the guests are in bench/guests.ts.
 * Beside case 1, the same exit through the shim's `kvm_ioctl_ptr` symbol and
 * plain typed-array reads of the run area, with no library code: the
 * difference between the two is what `Vcpu.run()`, the exit decoder and the
 * handler's reads cost per exit (see bench/RESULTS.md, "Per-exit breakdown").
 *
 * @module
 */

import type { Regs } from "../mod.ts";
import type { Guest } from "./guests.ts";
import { MMIO_GUEST, openGuest, PIO_GUEST, PIO_PORT, whyNoKvm } from "./guests.ts";
import { mmioStep, pioStep } from "./cases.ts";
import { native } from "../src/ffi/library.ts";
import { KVM_RUN } from "../src/abi/ioctls.ts";

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

/** The PIO guest's exit read by hand: fd, the FFI symbol, typed arrays over the run area. */
interface BareLoop {
  fd: number;
  bytes: Uint8Array;
  reason: Uint32Array;
  next: number;
}
const bareGuest = lazyGuest(PIO_GUEST);
let bare: BareLoop | undefined;
function openBare(): BareLoop {
  const vcpu = bareGuest().vcpu;
  const bytes = vcpu.runArea.bytes;
  return {
    fd: vcpu.unsafeFd,
    bytes,
    reason: new Uint32Array(bytes.buffer, bytes.byteOffset + 8, 1),
    next: 0,
  };
}
const kvmIoctlPtr = noKvm ? undefined : native().kvm_ioctl_ptr;
Deno.bench({
  name: "1x. the same exit without the library (kvm_ioctl_ptr symbol, typed-array reads)",
  group: "exits",
  ignore: noKvm !== null,
  warmup: 1000,
  fn() {
    const b = bare ??= openBare();
    if (kvmIoctlPtr!(b.fd, KVM_RUN, null) < 0) throw new Error("KVM_RUN failed");
    const bytes = b.bytes;
    // KVM_EXIT_IO = 2; io.port at 34, io.data_offset at 40 (struct kvm_run).
    if (b.reason[0] !== 2 || (bytes[34] | bytes[35] << 8) !== PIO_PORT) throw new Error("exit");
    const value = bytes[bytes[40] | bytes[41] << 8 | bytes[42] << 16];
    if (value !== (b.next & 0xff)) throw new Error(`PIO guest sent ${value}`);
    b.next++;
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
