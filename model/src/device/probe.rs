//! The wgpu adapters this machine offers, found the way burn's wgpu runtime (cubecl-wgpu
//! 0.11) finds them, so that the adapter [`super::choose`] picks is the one the runtime
//! then opens.
//!
//! With the graphics API left to it (`Device::wgpu`), the runtime tries its candidate APIs
//! in order (Vulkan, DX12, OpenGL; Metal on macOS) and settles on the first that has an
//! adapter other than a CPU one, or failing that the first with any adapter. It then
//! addresses an adapter by type and index among the adapters of that type on that API.

use burn::tensor::DeviceKind;
use burn::tensor::wgpu::wgpu;

use super::{AdapterChoice, AdapterInfo, AdapterType, Device, DeviceError};

/// The candidate graphics APIs of burn's wgpu runtime with the graphics API on automatic.
fn candidates() -> Vec<wgpu::Backend> {
    if cfg!(target_os = "macos") {
        vec![wgpu::Backend::Metal]
    } else {
        vec![
            wgpu::Backend::Vulkan,
            wgpu::Backend::Dx12,
            wgpu::Backend::Gl,
        ]
    }
}

/// The adapters on the API the runtime settles on (empty when no API has any).
pub(super) fn settled_adapters() -> Result<Vec<AdapterInfo>, DeviceError> {
    let mut software_only = None;
    for api in candidates() {
        let found = probe(api)?;
        if found.iter().any(|a| a.adapter_type != AdapterType::Cpu) {
            return Ok(found);
        }
        if software_only.is_none() && !found.is_empty() {
            software_only = Some(found);
        }
    }
    Ok(software_only.unwrap_or_default())
}

/// The adapters one API has, through an instance limited to it.
fn probe(api: wgpu::Backend) -> Result<Vec<AdapterInfo>, DeviceError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = ready(instance.enumerate_adapters(api.into()))?;
    Ok(adapters.iter().map(|a| info(&a.get_info())).collect())
}

/// The value of a future that native wgpu resolves at once (adapter enumeration does: no
/// browser to wait on), without an executor.
fn ready<T>(future: impl std::future::Future<Output = T>) -> Result<T, DeviceError> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Ok(v),
        std::task::Poll::Pending => Err(DeviceError::Probe(
            "adapter enumeration did not complete at once".into(),
        )),
    }
}

/// wgpu's adapter info as the choice sees it.
fn info(i: &wgpu::AdapterInfo) -> AdapterInfo {
    AdapterInfo {
        name: i.name.clone(),
        adapter_type: match i.device_type {
            wgpu::DeviceType::DiscreteGpu => AdapterType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu => AdapterType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu => AdapterType::VirtualGpu,
            wgpu::DeviceType::Cpu => AdapterType::Cpu,
            wgpu::DeviceType::Other => AdapterType::Other,
        },
        driver: if i.driver_info.is_empty() {
            i.driver.clone()
        } else {
            format!("{} ({})", i.driver, i.driver_info)
        },
        api: format!("{:?}", i.backend),
    }
}

/// The burn device for a chosen adapter. burn has no selector for an adapter of type
/// `Other`; for one the runtime's own default choice (high power first) stands in.
pub(super) fn wgpu_device(c: &AdapterChoice) -> Device {
    let kind = match c.adapter_type {
        AdapterType::DiscreteGpu => DeviceKind::DiscreteGpu(c.index),
        AdapterType::IntegratedGpu => DeviceKind::IntegratedGpu(c.index),
        AdapterType::VirtualGpu => DeviceKind::VirtualGpu(c.index),
        AdapterType::Cpu => DeviceKind::Cpu,
        AdapterType::Other => DeviceKind::DefaultDevice,
    };
    Device::wgpu(kind)
}
