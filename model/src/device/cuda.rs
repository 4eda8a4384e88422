//! The CUDA devices this machine offers (cargo feature `cuda`: burn's CUDA backend,
//! cubecl-cuda over cudarc). cudarc loads `libcuda` at run time, so the binary builds and
//! starts without a CUDA toolkit or driver; without the driver no device is found.

use burn::tensor::DeviceType;

use super::{CudaChoice, Device};

/// Each CUDA device's name, in index order (empty without an NVIDIA driver). Opens every
/// device to ask its name; [`super::cuda_devices`] asks once per process.
pub(super) fn device_names() -> Vec<String> {
    Device::enumerate(DeviceType::Cuda)
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.identity()
                .map_or_else(|| format!("CUDA device {i}"), |id| id.name)
        })
        .collect()
}

/// The burn device for a chosen CUDA device.
pub(super) fn cuda_device(c: &CudaChoice) -> Device {
    Device::cuda(c.index)
}
