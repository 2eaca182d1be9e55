/**
 * Boots a Linux (or Multiboot) kernel with a serial console on this terminal:
 * `deno task boot:linux -- --kernel PATH [options]`; `--help` lists the options
 * and the exit codes. The command line lives in the package
 * (`src/cli/boot_linux.ts`, exported as `@deno-kvm/kvm/cli`); this is the
 * repository's entry to it.
 *
 * @module
 */

import { main } from "@deno-kvm/kvm/cli";

if (import.meta.main) {
  // Deno.exit: the stdin pump may still sit in a read.
  Deno.exit(await main(Deno.args));
}
