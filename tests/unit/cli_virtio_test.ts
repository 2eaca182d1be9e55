// The boot CLI's virtio options: --disk PATH[,ro] (repeatable), --rng,
// --console serial|virtio, their refusals (exit 2 before any KVM), and the
// default command line they imply (ACPI on: the devices are in the DSDT).

import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  DEFAULT_CMDLINE,
  defaultCmdline,
  parseBootArgs,
  UsageError,
} from "../../src/cli/boot_linux.ts";

Deno.test("CLI: --disk PATH[,ro] in order, --rng, --console virtio", () => {
  const config = parseBootArgs([
    "--kernel",
    "k",
    "--disk",
    "root.ext4",
    "--disk",
    "/data/a,b.img,ro",
    "--rng",
    "--console",
    "virtio",
  ]);
  if (typeof config === "string") throw new Error(config);
  deepStrictEqual(config.disks, [
    { path: "root.ext4", readOnly: false },
    { path: "/data/a,b.img", readOnly: true },
  ]);
  strictEqual(config.rng, true);
  strictEqual(config.console, "virtio");
  strictEqual(defaultCmdline(config), "console=ttyS0 panic=-1 pci=off console=hvc0");
});

Deno.test("CLI: without virtio devices the default command line is unchanged", () => {
  const config = parseBootArgs(["--kernel", "k"]);
  if (typeof config === "string") throw new Error(config);
  deepStrictEqual(config.disks, []);
  strictEqual(defaultCmdline(config), DEFAULT_CMDLINE);
  const disk = parseBootArgs(["--kernel", "k", "--disk", "d"]);
  if (typeof disk === "string") throw new Error(disk);
  strictEqual(defaultCmdline(disk).includes("acpi=off"), false);
});

Deno.test("CLI: bad virtio options are usage errors", () => {
  const refuse = (args: string[], re: RegExp) =>
    throws(
      () => parseBootArgs(["--kernel", "k", ...args]),
      (e) => e instanceof UsageError && re.test(e.message),
    );
  refuse(["--console", "vga"], /--console/);
  refuse(["--virtio-transport", "isa"], /--virtio-transport/);
  refuse(["--disk", ",ro"], /--disk/);
  refuse(Array.from({ length: 9 }, (_, i) => ["--disk", `d${i}`]).flat(), /at most 8/);
});

Deno.test("CLI: --virtio-transport pci, and its default command line keeps the PCI bus", () => {
  const config = parseBootArgs(["--kernel", "k", "--disk", "d", "--virtio-transport", "pci"]);
  if (typeof config === "string") throw new Error(config);
  strictEqual(config.virtioTransport, "pci");
  strictEqual(defaultCmdline(config), "console=ttyS0 panic=-1");
  const mmio = parseBootArgs(["--kernel", "k", "--disk", "d"]);
  if (typeof mmio === "string") throw new Error(mmio);
  strictEqual(mmio.virtioTransport, "mmio");
  strictEqual(defaultCmdline(mmio), "console=ttyS0 panic=-1 pci=off");
});
