/**
 * `deno bench -A`: case 6, `KVM_GET_DIRTY_LOG` of a 1 GiB slot and a scan of
 * its bitmap, where the guest wrote a known set of 1024 pages since the last
 * retrieval; case 6b, the same pages harvested from the vCPU's dirty ring
 * and `KVM_RESET_DIRTY_RINGS`. Each iteration lets the guest make one pass
 * (not timed), then times the retrieval and the scan. Skipped, with a note,
 * without `/dev/kvm` (6b also without `KVM_CAP_DIRTY_LOG_RING`).
 *
 * @module
 */

import { DirtyLogFixture, DirtyRingFixture, whyNoDirtyRing } from "./cases.ts";
import { whyNoKvm } from "./guests.ts";

const noKvm = whyNoKvm();
if (noKvm) console.log(`dirty_log_bench: skipped: ${noKvm}; \`deno task bench\` uses the sandbox`);
const noRing = noKvm ?? whyNoDirtyRing();
if (!noKvm && noRing) console.log(`dirty_log_bench: case 6b skipped: ${noRing}`);

let fixture: DirtyLogFixture | undefined;
let ringFixture: DirtyRingFixture | undefined;
globalThis.addEventListener("unload", () => {
  fixture?.close();
  ringFixture?.close();
});

Deno.bench({
  name: "6. dirty log of 1 GiB with 1024 dirty pages: KVM_GET_DIRTY_LOG + scan",
  ignore: noKvm !== null,
  warmup: 2,
  fn(b) {
    fixture ??= new DirtyLogFixture();
    fixture.pass();
    b.start();
    fixture.scan();
    b.end();
  },
});

Deno.bench({
  name: "6b. dirty ring with 1024 dirty pages (1 GiB slot): harvest + KVM_RESET_DIRTY_RINGS",
  ignore: noRing !== null,
  warmup: 2,
  fn(b) {
    ringFixture ??= new DirtyRingFixture();
    ringFixture.pass();
    b.start();
    ringFixture.scan();
    b.end();
  },
});
