/**
 * Codecs of `KVM_CREATE_DEVICE` and the device-attribute ioctls (`<linux/kvm.h>`).
 *
 * @module
 */

import { defineStruct, type StructDef } from "./struct.ts";

/** `kvm_create_device.flags`: only check that the type is supported; create nothing. */
export const KVM_CREATE_DEVICE_TEST = 1;
/** Device type: the VFIO pseudo device (the one type x86 offers besides vendor ones). */
export const KVM_DEV_TYPE_VFIO = 4;
/** VFIO device attribute group: VFIO groups. */
export const KVM_DEV_VFIO_GROUP = 1;
/** VFIO group attribute: add a group (the data is a group fd). */
export const KVM_DEV_VFIO_GROUP_ADD = 1;
/** VFIO group attribute: remove a group. */
export const KVM_DEV_VFIO_GROUP_DEL = 2;

/** Field layout (offsets and types) of the struct codec below. */
export const kvmCreateDeviceFields = {
  type: { offset: 0, type: "u32" },
  /** Out: the new device's fd. */
  fd: { offset: 4, type: "u32" },
  flags: { offset: 8, type: "u32" },
} as const;
/** `struct kvm_create_device`: the argument of `KVM_CREATE_DEVICE`. */
export const KvmCreateDevice: StructDef<typeof kvmCreateDeviceFields> = defineStruct(
  "struct kvm_create_device",
  12,
  kvmCreateDeviceFields,
);

/** Field layout (offsets and types) of the struct codec below. */
export const kvmDeviceAttrFields = {
  flags: { offset: 0, type: "u32" },
  group: { offset: 4, type: "u32" },
  attr: { offset: 8, type: "u64" },
  /** Host address of the attribute's data. */
  addr: { offset: 16, type: "u64" },
} as const;
/** `struct kvm_device_attr`: one attribute of a device created with `KVM_CREATE_DEVICE`. */
export const KvmDeviceAttr: StructDef<typeof kvmDeviceAttrFields> = defineStruct(
  "struct kvm_device_attr",
  24,
  kvmDeviceAttrFields,
);
