/**
 * An application processor's worker as one module: the vCPU worker (which
 * takes its `init` message) and, as the default export, the AP device it
 * loads (`ap_device.ts`). The boot CLI's launcher bundles it, and the
 * machines' AP workers start the bundle (`setApWorkerModule`) and load the
 * device from the same module, so the worker reads one module instead of
 * about sixty (see `bundle_cache.ts`).
 *
 * @module
 * @internal
 */

import "../context/vcpu_worker.ts";

export { default } from "../boot/ap_device.ts";
