// A `throws` validator shared by the kernel-loading tests: the error is a
// BootImageError for the given check, errno and message.

import { ok, strictEqual } from "node:assert/strict";
import { BootImageError, type BootImageProblem } from "../../src/boot/bzimage.ts";

/** Asserts a BootImageError with this problem, errno name and message. */
export function refused(problem: BootImageProblem, code: string, message: RegExp) {
  return (error: unknown): true => {
    ok(error instanceof BootImageError, `a BootImageError, got ${error}`);
    strictEqual(error.problem, problem);
    strictEqual(error.code, code);
    strictEqual(error.operation, "load kernel");
    ok(message.test(error.message), `${JSON.stringify(error.message)} matches ${message}`);
    return true;
  };
}
