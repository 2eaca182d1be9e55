/**
 * The error every kernel-loading check raises (bzImage, ELF kernel, payload
 * extraction, command line, initrd, memory size, the guest layout, reading
 * the image files).
 *
 * @module
 */

import { KvmError } from "../errors.ts";

/** Why a bzImage or its companions were refused. */
export type BootImageProblem =
  | "not-bzimage"
  | "truncated"
  | "unsupported-protocol"
  | "cmdline-too-long"
  | "initrd-too-large"
  | "memory-too-small"
  | "bad-elf"
  | "unsupported-payload"
  | "bad-payload"
  | "bad-layout"
  | "bad-file"
  | "file-too-large"
  | "damaged-cache-entry";

/**
 * A kernel image, initrd, command line or memory size refused by the loader,
 * before any VM is created. A {@linkcode KvmError} (operation `"load kernel"`)
 * whose `problem` says which check failed.
 */
export class BootImageError extends KvmError {
  /** Which check failed. */
  readonly problem: BootImageProblem;

  /** Creates the error; `detail` is the human-readable reason. */
  constructor(problem: BootImageProblem, errno: number, detail: string) {
    super("load kernel", errno, detail);
    this.name = "BootImageError";
    this.problem = problem;
  }
}
