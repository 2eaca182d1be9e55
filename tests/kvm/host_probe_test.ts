// The per-user record of this host's CPU and guest speed probes (issue 17): a
// later boot reads the answers back instead of running the probe guests again,
// and a machine built on the same Kvm uses them; a damaged, foreign or
// world-writable record is not believed.

import { deepStrictEqual, notStrictEqual, ok, strictEqual } from "node:assert/strict";
import {
  hostProbeKey,
  hostProbeKeyAsync,
  probeHost,
  probeHostAsync,
} from "../../src/boot/host_probe.ts";
import { probeCpu } from "../../src/boot/cpu_probe.ts";
import { Kvm } from "../../src/kvm/kvm.ts";

/** One record in `dir` (no temporary files left), and its path. */
function onlyRecord(dir: string): string {
  const names = [...Deno.readDirSync(dir)].map((e) => e.name);
  strictEqual(names.length, 1, `one record, no temporaries: ${names.join(", ")}`);
  ok(/^host-[0-9a-f]{64}\.json$/.test(names[0]));
  return `${dir}/${names[0]}`;
}

Deno.test("host probe: measured once, then read back and used by probeCpu on another Kvm", () => {
  const dir = Deno.makeTempDirSync({ prefix: "host-probe-" });
  try {
    using kvm = Kvm.open();
    const first = probeHost(kvm, { directory: dir });
    strictEqual(first.source, "probed");
    if (!first.path) {
      // A probe timed out or the speed loop did not finish (a loaded host): nothing kept.
      console.log("  (not recorded on this run: a probe timed out)");
      deepStrictEqual([...Deno.readDirSync(dir)], []);
      return;
    }
    strictEqual(onlyRecord(dir), first.path);
    using other = Kvm.open();
    strictEqual(hostProbeKey(other), hostProbeKey(kvm), "the key is the host's, not the fd's");
    const again = probeHost(other, { directory: dir });
    strictEqual(again.source, "cache");
    deepStrictEqual(again.cpu, first.cpu, "the same report");
    strictEqual(again.speed.mips, first.speed.mips);
    strictEqual(again.speed.practical, first.speed.practical);
    strictEqual(probeCpu(other), again.cpu, "a machine on this Kvm does not probe again");
    const fresh = probeHost(other, { directory: dir, fresh: true });
    strictEqual(fresh.source, "probed");
    notStrictEqual(fresh.cpu, again.cpu);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("host probe: the boot CLI's WebCrypto key is the same key, and finds the same record", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "host-probe-" });
  try {
    using kvm = Kvm.open();
    strictEqual(await hostProbeKeyAsync(kvm), hostProbeKey(kvm));
    const first = probeHost(kvm, { directory: dir });
    if (!first.path) {
      console.log("  (not recorded on this run: a probe timed out)");
      return;
    }
    using other = Kvm.open();
    const again = await probeHostAsync(other, { directory: dir });
    strictEqual(again.source, "cache");
    strictEqual(again.path, first.path);
    deepStrictEqual(again.cpu, first.cpu);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("host probe: a damaged, foreign or world-writable record is probed again", () => {
  const dir = Deno.makeTempDirSync({ prefix: "host-probe-" });
  try {
    using kvm = Kvm.open();
    const first = probeHost(kvm, { directory: dir });
    if (!first.path) {
      console.log("  (not recorded on this run: a probe timed out)");
      return;
    }
    const path = first.path;
    const good = Deno.readTextFileSync(path);
    const record = JSON.parse(good);
    const damaged: [string, string][] = [
      ["truncated", good.slice(0, good.length >> 1)],
      ["another host's key", JSON.stringify({ ...record, key: "0".repeat(64) })],
      [
        "a report of another shape",
        JSON.stringify({ ...record, cpu: { ...record.cpu, unusable: 3 } }),
      ],
      ["a zero speed", JSON.stringify({ ...record, speed: { mips: 0, ms: 1 } })],
    ];
    for (const [what, text] of damaged) {
      Deno.writeTextFileSync(path, text);
      using fresh = Kvm.open();
      const again = probeHost(fresh, { directory: dir });
      strictEqual(again.source, "probed", what);
      if (again.path) strictEqual(JSON.parse(Deno.readTextFileSync(path)).key, record.key, what);
    }
    Deno.writeTextFileSync(path, good);
    Deno.chmodSync(path, 0o666);
    using fresh = Kvm.open();
    strictEqual(probeHost(fresh, { directory: dir }).source, "probed", "writable by others");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

const hasTaskset = (() => {
  try {
    return new Deno.Command("taskset", { args: ["-c", "0", "true"] }).outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "host probe: the key is the same on every host CPU (KVM fills in the caller's APIC id)",
  ignore: !hasTaskset || navigator.hardwareConcurrency < 2,
  fn() {
    const script = `import { hostProbeKey } from "${
      new URL("../../src/boot/host_probe.ts", import.meta.url).href
    }"; import { Kvm } from "${new URL("../../src/kvm/kvm.ts", import.meta.url).href}";
      using kvm = Kvm.open(); console.log(hostProbeKey(kvm));`;
    const keys = [0, 1].map((cpu) => {
      const out = new Deno.Command("taskset", {
        args: ["-c", String(cpu), Deno.execPath(), "eval", script],
        stderr: "inherit",
      }).outputSync();
      strictEqual(out.code, 0, `the key on CPU ${cpu}`);
      return new TextDecoder().decode(out.stdout).trim();
    });
    ok(/^[0-9a-f]{64}$/.test(keys[0]), keys[0]);
    strictEqual(keys[1], keys[0]);
  },
});
