// KvmError's shape, and the failures that need no KVM to observe.

import { ok, strictEqual, throws } from "node:assert/strict";
import { Errno, errnoName, Kvm, KvmError } from "../../mod.ts";

Deno.test("KvmError carries operation, errno, code and a readable message", () => {
  const error = new KvmError("KVM_SET_USER_MEMORY_REGION", Errno.EEXIST, "slot 1 overlaps slot 0");
  ok(error instanceof Error);
  strictEqual(error.name, "KvmError");
  strictEqual(error.errno, 17);
  strictEqual(error.code, "EEXIST");
  strictEqual(error.operation, "KVM_SET_USER_MEMORY_REGION");
  strictEqual(
    error.message,
    "KVM_SET_USER_MEMORY_REGION failed: EEXIST (already exists): slot 1 overlaps slot 0",
  );
  strictEqual(errnoName(22), "EINVAL");
  strictEqual(errnoName(9999), "errno 9999");
});

Deno.test("opening a missing device is an ENOENT KvmError that points to the sandbox", () => {
  throws(() => Kvm.open("/dev/no-such-kvm"), (error: unknown) => {
    ok(error instanceof KvmError);
    strictEqual(error.code, "ENOENT");
    strictEqual(error.operation, "open /dev/no-such-kvm");
    ok(error.message.includes("sandbox"));
    return true;
  });
});
