/**
 * Boots a Linux (or Multiboot) kernel with a serial console on this terminal:
 * `deno task boot:linux -- --kernel PATH [options]`; `--help` lists the options
 * and the exit codes. The command line lives in the package
 * (`src/cli/boot_linux.ts`, exported as `@deno-kvm/kvm/cli`); this is the
 * repository's entry to it. It runs the CLI from a bundle of its sources kept
 * in the per-user cache while every source file is unchanged, else from the
 * sources, and then rebuilds the bundle (`src/cli/bundle_cache.ts`; one module
 * instead of about a hundred starts faster; `DENO_KVM_CLI_BUNDLE=0` turns it off).
 *
 * @module
 */

import { launch } from "../src/cli/bundle_cache.ts";

if (import.meta.main) {
  // Deno.exit: the stdin pump may still sit in a read.
  Deno.exit(
    await launch(Deno.args, { entry: new URL("../src/cli/boot_linux.ts", import.meta.url) }),
  );
}
