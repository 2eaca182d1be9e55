/**
 * Boots a Linux (or Multiboot) kernel with a serial console on this terminal:
 * `deno task boot:linux -- --kernel PATH [options]`; `--help` lists the options
 * and the exit codes. The command line lives in the package
 * (`src/cli/boot_linux.ts`, exported as `@deno-kvm/kvm/cli`); this is the
 * repository's entry to it. It runs the CLI from a bundle of its sources kept
 * in the per-user cache while every source file is unchanged (and the AP
 * workers from theirs), else from the sources, and then rebuilds the bundles
 * (`src/cli/bundle_cache.ts`: one module starts faster than about a hundred;
 * `DENO_KVM_CLI_BUNDLE=0` turns it off).
 *
 * @module
 */

import { bootCliBundle, launch } from "../src/cli/bundle_cache.ts";

if (import.meta.main) {
  // Deno.exit: the stdin pump may still sit in a read.
  Deno.exit(await launch(Deno.args, bootCliBundle()));
}
