/**
 * `deno bench -A`: case 6, `KVM_GET_DIRTY_LOG` of a 1 GiB slot and a scan of
 * its bitmap, where the guest wrote a known set of 1024 pages since the last
 * retrieval. Each iteration lets the guest make one pass (not timed), then
 * times the retrieval and the scan. Skipped, with a note, without `/dev/kvm`.
 *
 * @module
 */

import { DirtyLogFixture } from "./cases.ts";
import { whyNoKvm } from "./guests.ts";

const noKvm = whyNoKvm();
if (noKvm) console.log(`dirty_log_bench: skipped: ${noKvm}; \`deno task bench\` uses the sandbox`);

let fixture: DirtyLogFixture | undefined;
globalThis.addEventListener("unload", () => fixture?.close());

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
