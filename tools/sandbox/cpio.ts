// The cpio writer lives in the library (the CLI builds initramfs archives with it).
export * from "../../src/boot/cpio.ts";
