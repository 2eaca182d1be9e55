/**
 * What the boot CLI's launcher bundles and runs (`bundle_cache.ts`): the
 * CLI's `main`, and the hook that points the machines' AP workers at their
 * own bundle.
 *
 * @module
 * @internal
 */

export { main } from "./boot_linux.ts";
export { setApWorkerModule } from "../boot/ap_runtime.ts";
