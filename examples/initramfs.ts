/**
 * Builds a tiny initramfs (a newc cpio archive) from a static busybox and an
 * `/init` shell script: enough for `boot_linux.ts` to reach a shell.
 *
 * CLI: `deno run -A examples/initramfs.ts [--busybox /bin/busybox] [--init FILE] -o OUT`
 * (without `--init`, the init mounts /proc, /sys and /dev and starts a shell
 * on the console; exiting the shell reboots).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { buildInitramfs } from "@deno-kvm/kvm/vmm";

export {
  buildInitramfs,
  hostKernelPath,
  type InitramfsOptions,
  SHELL_INIT,
} from "@deno-kvm/kvm/vmm";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      busybox: { type: "string", default: "/bin/busybox" },
      init: { type: "string" },
      output: { type: "string", short: "o" },
    },
  });
  if (!values.output) {
    console.error("usage: initramfs.ts [--busybox PATH] [--init FILE] -o OUT");
    Deno.exit(2);
  }
  const initrd = await buildInitramfs({
    busybox: await Deno.readFile(values.busybox),
    init: values.init ? await Deno.readTextFile(values.init) : undefined,
  });
  await Deno.writeFile(values.output, initrd);
  console.error(`${values.output}: ${initrd.length} bytes`);
}
