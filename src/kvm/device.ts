/**
 * Devices created inside a VM with `KVM_CREATE_DEVICE`.
 *
 * @module
 */

import * as Ioctl from "../abi/ioctls.ts";
import { KvmDeviceAttr } from "../abi/device.ts";
import { Errno, KvmError } from "../errors.ts";
import { native } from "../ffi/library.ts";
import { OwnedFd, pointerOf } from "./owned_fd.ts";
import { u32, u64 } from "./validate.ts";

/** A device attribute: a group, an attribute in it, and for get/set the data's buffer. */
export interface DeviceAttr {
  /** Device-defined group (`kvm_device_attr.group`). */
  group: number;
  /** Group-defined attribute (`kvm_device_attr.attr`). */
  attr: number | bigint;
  /** Flags; none are defined today. */
  flags?: number;
}

/**
 * A kernel device owned by its VM (an in-kernel VFIO bridge on x86; interrupt
 * controllers on other architectures), driven through attributes.
 *
 * @example
 * ```ts
 * import { Kvm } from "@deno-kvm/kvm";
 * import { KVM_DEV_TYPE_VFIO, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD } from "@deno-kvm/kvm/abi";
 * using kvm = Kvm.open();
 * using vm = kvm.createVm();
 * const vfio = vm.createDevice(KVM_DEV_TYPE_VFIO);
 * console.log(vfio.hasAttr({ group: KVM_DEV_VFIO_GROUP, attr: KVM_DEV_VFIO_GROUP_ADD }));
 * ```
 */
export class Device extends OwnedFd {
  /** Names this object in error messages. */
  protected readonly label: string;
  /** The `KVM_DEV_TYPE_*` it was created with. */
  readonly type: number;
  #attr = new KvmDeviceAttr();
  #attrPtr = pointerOf(this.#attr.bytes);
  #onClose: () => void;

  private constructor(fd: number, type: number, onClose: () => void) {
    super(fd);
    this.type = type;
    this.label = `device of type ${type}`;
    this.#onClose = onClose;
  }

  /** @internal Used by `Vm.createDevice`. */
  static fromFd(fd: number, type: number, onClose: () => void): Device {
    return new Device(fd, type, onClose);
  }

  #fill(op: string, attr: DeviceAttr, data?: Uint8Array): void {
    u32(op, "flags", attr.flags ?? 0);
    u32(op, "group", attr.group);
    u64(op, "attr", attr.attr);
    const address = data && data.byteLength > 0
      ? BigInt(Deno.UnsafePointer.value(pointerOf(data)))
      : 0n;
    this.#attr.assign({
      flags: attr.flags ?? 0,
      group: attr.group,
      attr: attr.attr,
      addr: address,
    });
  }

  #describe(attr: DeviceAttr): () => string {
    return () => `${this.label}, group ${attr.group}, attribute ${attr.attr}`;
  }

  /** `KVM_SET_DEVICE_ATTR`: the kernel reads the attribute's value from `data`. */
  setAttr(attr: DeviceAttr, data?: Uint8Array): void {
    this.#fill("KVM_SET_DEVICE_ATTR", attr, data);
    this.ioctlPtr(
      "KVM_SET_DEVICE_ATTR",
      Ioctl.KVM_SET_DEVICE_ATTR,
      this.#attrPtr,
      this.#describe(attr),
    );
  }

  /** `KVM_GET_DEVICE_ATTR`: the kernel writes the attribute's value into `data`. */
  getAttr(attr: DeviceAttr, data: Uint8Array): Uint8Array {
    this.#fill("KVM_GET_DEVICE_ATTR", attr, data);
    this.ioctlPtr(
      "KVM_GET_DEVICE_ATTR",
      Ioctl.KVM_GET_DEVICE_ATTR,
      this.#attrPtr,
      this.#describe(attr),
    );
    return data;
  }

  /** `KVM_HAS_DEVICE_ATTR`: whether the device knows the attribute (`ENXIO` means no). */
  hasAttr(attr: DeviceAttr): boolean {
    const op = "KVM_HAS_DEVICE_ATTR";
    this.#fill(op, attr);
    const result = native().kvm_ioctl_ptr(this.fd(op), Ioctl.KVM_HAS_DEVICE_ATTR, this.#attrPtr);
    if (result === -Errno.ENXIO) return false;
    if (result < 0) throw new KvmError(op, -result, this.#describe(attr)());
    return true;
  }

  /** Closes what this object owns before its fd. */
  protected override releaseResources(): void {
    this.#onClose();
  }
}
