// The boot CLI's virtio options: --disk PATH[,ro] (repeatable), --rng,
// --console serial|virtio, --virtio-transport pci|mmio (default pci), their
// refusals (exit 2 before any KVM), and the default command line they imply
// (ACPI on: the devices or their PCI root bridge are in the DSDT; PCI on with
// the default transport). LinuxMachine's own refusal of virtio-pci devices
// with pci=off, before any VM exists.

import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { cmdlineDisablesPci, LinuxMachine } from "../../src/boot/linux.ts";
import {
  DEFAULT_CMDLINE,
  defaultCmdline,
  main,
  parseBootArgs,
  UsageError,
} from "../../src/cli/boot_linux.ts";
import { KvmError } from "../../src/errors.ts";

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
  strictEqual(config.virtioTransport, "pci");
  strictEqual(defaultCmdline(config), "console=ttyS0 panic=-1 console=hvc0");
});

Deno.test("CLI: without virtio devices the default command line is unchanged", () => {
  const config = parseBootArgs(["--kernel", "k"]);
  if (typeof config === "string") throw new Error(config);
  deepStrictEqual(config.disks, []);
  strictEqual(defaultCmdline(config), DEFAULT_CMDLINE);
  strictEqual(config.virtioTransport, "pci"); // the default, with no virtio device to place
  const disk = parseBootArgs(["--kernel", "k", "--disk", "d"]);
  if (typeof disk === "string") throw new Error(disk);
  strictEqual(defaultCmdline(disk).includes("acpi=off"), false);
  // No virtio device: no PCI bus either way, and pci=off (saving the kernel's probe) is fine.
  const off = parseBootArgs(["--kernel", "k", "--cmdline", "console=ttyS0 pci=off"]);
  if (typeof off === "string") throw new Error(off);
  strictEqual(off.cmdline, "console=ttyS0 pci=off");
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

Deno.test("CLI: virtio-pci by default, its default command line keeps the PCI bus; mmio on request", () => {
  for (const args of [[], ["--virtio-transport", "pci"]]) {
    const config = parseBootArgs(["--kernel", "k", "--disk", "d", ...args]);
    if (typeof config === "string") throw new Error(config);
    strictEqual(config.virtioTransport, "pci");
    strictEqual(defaultCmdline(config), "console=ttyS0 panic=-1");
  }
  const mmio = parseBootArgs(["--kernel", "k", "--disk", "d", "--virtio-transport=mmio"]);
  if (typeof mmio === "string") throw new Error(mmio);
  strictEqual(mmio.virtioTransport, "mmio");
  strictEqual(defaultCmdline(mmio), "console=ttyS0 panic=-1 pci=off");
  // defaultCmdline's own default transport is the CLI's.
  strictEqual(
    defaultCmdline({ disks: [], rng: true, console: "serial" }),
    "console=ttyS0 panic=-1",
  );
});

Deno.test("CLI: --cmdline with pci=off and virtio devices on PCI is a usage error; with mmio it boots", async () => {
  const pciOff = /--cmdline has pci=off.*drop pci=off or add --virtio-transport mmio/;
  for (const devices of [["--disk", "d"], ["--rng"], ["--net", "tap0"], ["--console", "virtio"]]) {
    for (const cmdline of ["console=ttyS0 pci=off", "pci=noacpi,off quiet"]) {
      throws(
        () => parseBootArgs(["--kernel", "k", ...devices, "--cmdline", cmdline]),
        (e) => e instanceof UsageError && pciOff.test(e.message),
      );
    }
    const mmio = parseBootArgs([
      "--kernel",
      "k",
      ...devices,
      "--virtio-transport",
      "mmio",
      "--cmdline",
      "console=ttyS0 pci=off",
    ]);
    ok(typeof mmio === "object" && mmio.virtioTransport === "mmio");
  }
  // Exit 2 with the message on stderr, before any file or KVM is touched.
  const errors: string[] = [];
  const error = console.error;
  console.error = (text: string) => void errors.push(text);
  try {
    strictEqual(await main(["--kernel", "k", "--rng", "--cmdline", "pci=off"]), 2);
  } finally {
    console.error = error;
  }
  ok(errors.some((e) => pciOff.test(e)), errors.join("\n"));
});

Deno.test("cmdlineDisablesPci: pci=off among the kernel's parameters only", () => {
  const yes = [
    "pci=off",
    "console=ttyS0 pci=off quiet",
    "pci=noacpi,off",
    'pci="off"',
    "a pci=off --",
  ];
  const no = [
    "",
    "console=ttyS0 panic=-1",
    "pci=noacpi",
    "pci=offx",
    "xpci=off",
    "init=/init -- pci=off", // init's argument
    'foo="a pci=off"', // inside a quoted value
    "pci=realloc=off",
  ];
  for (const c of yes) strictEqual(cmdlineDisablesPci(c), true, c);
  for (const c of no) strictEqual(cmdlineDisablesPci(c), false, c);
});

Deno.test("LinuxMachine.create: virtio devices on PCI (the default) with pci=off are refused before any VM", () => {
  const refused = (e: unknown) => {
    ok(e instanceof KvmError, `a KvmError, got ${e}`);
    strictEqual(e.code, "EINVAL");
    strictEqual(e.operation, "create Linux machine");
    ok(/pci=off.*drop pci=off or pass virtioTransport: "mmio"/.test(e.message), e.message);
    return true;
  };
  // Refused before the kernel is even looked at (an empty one) or a tap or /dev/kvm is opened.
  const base = {
    kernel: new Uint8Array(0),
    memorySize: 64 << 20,
    cmdline: "console=ttyS0 pci=off",
  };
  throws(() => LinuxMachine.create({ ...base, rng: true }), refused);
  throws(() => LinuxMachine.create({ ...base, disks: [{ path: "/nonexistent" }] }), refused);
  throws(() => LinuxMachine.create({ ...base, net: [{ tap: "tap0" }] }), refused);
  throws(
    () => LinuxMachine.create({ ...base, console: "virtio", virtioTransport: "pci" }),
    refused,
  );
  // With MMIO, or without virtio devices, the command line is not the problem (the empty kernel is).
  for (const options of [{ ...base, rng: true, virtioTransport: "mmio" as const }, base]) {
    throws(
      () => LinuxMachine.create(options),
      (e) => !(e instanceof KvmError && /pci=off/.test(e.message)),
    );
  }
});
