// Loaded before every test module (`deno test --preload`, see tests/run.ts).
//
// The native shim stays loaded for the life of the process by design, so it
// is loaded here, outside any test, where the resource sanitizer does not
// count it as a leak of the first test that happens to open KVM.
//
// It also names the KVM under test once per process (the runner reports it
// per target), and bounds every guest the tests run on this thread: the first
// `run()` of each vCPU arms its watchdog (`Vcpu.setWatchdog`), so a guest that
// never exits, on a KVM that never reports what the test expects, fails that
// test with ETIMEDOUT and the registers instead of hanging the suite. Tests
// that probe for a KVM feature arm a shorter watchdog themselves. A
// `KvmContext.run()` without a timeout gets the same bound (its vCPUs run on
// Workers, where this module is not loaded).

import { Kvm, KvmContext, loadNative, Vcpu } from "../mod.ts";

await loadNative();

/** Per vCPU, from its first `run()`; `KVM_TEST_RUN_BOUND_MS` overrides. */
const RUN_BOUND_MS = Number(Deno.env.get("KVM_TEST_RUN_BOUND_MS") ?? 120_000);

try {
  using kvm = Kvm.open();
  const { vendorModule, hostKernelRelease } = kvm.implementation();
  console.log(`KVM under test: ${vendorModule ?? "unknown module"}, host ${hostKernelRelease}`);
} catch {
  // No usable /dev/kvm: the unit tests run anyway.
}

const bounded = new WeakSet<Vcpu>();
const { run, setWatchdog } = Vcpu.prototype;
// A test's own watchdog wins.
Vcpu.prototype.setWatchdog = function (this: Vcpu, ms: number | null) {
  bounded.add(this);
  return setWatchdog.call(this, ms);
};
Vcpu.prototype.run = function (this: Vcpu) {
  if (!bounded.has(this) && !this.closed) {
    this.setWatchdog(RUN_BOUND_MS);
  }
  return run.call(this);
};

const contextRun = KvmContext.prototype.run;
KvmContext.prototype.run = function (this: KvmContext, options = {}) {
  return contextRun.call(this, { timeoutMs: RUN_BOUND_MS, ...options });
};
