/**
 * Numbers of the virtio 1.x specification (OASIS virtio v1.2) that the
 * transport, the queues and the devices share: device status bits, feature
 * bits, device ids, descriptor flags and the virtio-mmio register offsets
 * (section 4.2.2, "MMIO Device Register Layout", version 2).
 *
 * @module
 */

/** Device status bits (spec 2.1, "Device Status Field"). */
export const Status = {
  /** The guest noticed the device. */
  ACKNOWLEDGE: 1,
  /** The guest has a driver for it. */
  DRIVER: 2,
  /** The driver is set up and the device may run. */
  DRIVER_OK: 4,
  /** The driver accepted the features (the device keeps it set only when it agrees). */
  FEATURES_OK: 8,
  /** The device met an error it cannot recover from until a reset. */
  DEVICE_NEEDS_RESET: 0x40,
  /** The driver gave up on the device. */
  FAILED: 0x80,
} as const;

/** `VIRTIO_F_VERSION_1` (bit 32): the device follows virtio 1.x, not the legacy layout. */
export const VIRTIO_F_VERSION_1 = 1n << 32n;
/** `VIRTIO_RING_F_INDIRECT_DESC` (bit 28): descriptors may point to a table of descriptors. */
export const VIRTIO_RING_F_INDIRECT_DESC = 1n << 28n;
/**
 * `VIRTIO_F_EVENT_IDX` (bit 29): the driver's `used_event` and the device's
 * `avail_event` say when an interrupt and a kick are wanted.
 */
export const VIRTIO_F_EVENT_IDX = 1n << 29n;

/** Device ids (spec 5, "Device Types"). */
export const DeviceId = {
  /** Network card. */
  NET: 1,
  /** Block device. */
  BLOCK: 2,
  /** Console (hvc). */
  CONSOLE: 3,
  /** Entropy source. */
  RNG: 4,
} as const;

/** Descriptor flags (spec 2.7.5). */
export const DescFlags = {
  /** The chain continues in `next`. */
  NEXT: 1,
  /** The buffer is written by the device (otherwise read). */
  WRITE: 2,
  /** The buffer is a table of descriptors. */
  INDIRECT: 4,
} as const;

/** virtio-mmio version 2 register offsets from the device's base. */
export const MmioReg = {
  /** `0x74726976` ("virt"). */
  MAGIC: 0x000,
  /** 2 for a virtio 1.x (non-legacy) device. */
  VERSION: 0x004,
  /** Device id; 0 means no device. */
  DEVICE_ID: 0x008,
  /** Vendor id. */
  VENDOR_ID: 0x00c,
  /** 32 bits of the device's features, chosen by `DEVICE_FEATURES_SEL`. */
  DEVICE_FEATURES: 0x010,
  /** Which 32 bits `DEVICE_FEATURES` shows. */
  DEVICE_FEATURES_SEL: 0x014,
  /** 32 bits of the features the driver accepts. */
  DRIVER_FEATURES: 0x020,
  /** Which 32 bits `DRIVER_FEATURES` sets. */
  DRIVER_FEATURES_SEL: 0x024,
  /** The queue the queue registers below refer to. */
  QUEUE_SEL: 0x030,
  /** The largest size of the selected queue (0: no such queue). */
  QUEUE_NUM_MAX: 0x034,
  /** The size the driver chose for the selected queue. */
  QUEUE_NUM: 0x038,
  /** 1 once the driver set the selected queue up. */
  QUEUE_READY: 0x044,
  /** Write a queue index: the queue has new buffers (the kick). */
  QUEUE_NOTIFY: 0x050,
  /** Why the device interrupted: bit 0 used buffers, bit 1 configuration change. */
  INTERRUPT_STATUS: 0x060,
  /** Write the bits of `INTERRUPT_STATUS` the driver handled. */
  INTERRUPT_ACK: 0x064,
  /** Device status (0 written: reset). */
  STATUS: 0x070,
  /** Descriptor table address, low and high halves. */
  QUEUE_DESC_LOW: 0x080,
  /** See `QUEUE_DESC_LOW`. */
  QUEUE_DESC_HIGH: 0x084,
  /** Available ring ("driver area") address. */
  QUEUE_DRIVER_LOW: 0x090,
  /** See `QUEUE_DRIVER_LOW`. */
  QUEUE_DRIVER_HIGH: 0x094,
  /** Used ring ("device area") address. */
  QUEUE_DEVICE_LOW: 0x0a0,
  /** See `QUEUE_DEVICE_LOW`. */
  QUEUE_DEVICE_HIGH: 0x0a4,
  /** Changes whenever the configuration space changes. */
  CONFIG_GENERATION: 0x0fc,
  /** Start of the device-specific configuration space. */
  CONFIG: 0x100,
} as const;

/** `MmioReg.MAGIC`'s value, "virt" little-endian. */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** The vendor id this VMM reports ("DKVM" little-endian). */
export const VIRTIO_VENDOR_ID = 0x4d564b44;
/** Bytes of one virtio-mmio device window (registers and configuration space). */
export const VIRTIO_MMIO_SIZE = 0x1000;

/** `INTERRUPT_STATUS` bit: the device used buffers. */
export const INT_VRING = 1;
/** `INTERRUPT_STATUS` bit: the configuration (or NEEDS_RESET) changed. */
export const INT_CONFIG = 2;
