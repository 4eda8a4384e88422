//! Device selection: the fastest CPU backend measured here by default, burn-wgpu behind the `wgpu` feature.
//!
//! On this machine burn-flex and burn-ndarray reach the same f32 GEMM speed (see
//! `shared/STACK.md`); flex is the maintained one, so it is the CPU default. With the cargo
//! feature `wgpu`, [`default_device`] returns the default wgpu device instead (a GPU when
//! one is present). `TRIBUTARY_DEVICE=cpu` forces the CPU even in a wgpu build.

/// The device type (re-exported so crates above the model need not depend on burn).
pub use burn::tensor::Device;

/// The device Tributary computes on unless told otherwise.
pub fn default_device() -> Device {
    #[cfg(feature = "wgpu")]
    {
        if std::env::var("TRIBUTARY_DEVICE").as_deref() != Ok("cpu") {
            return Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        }
    }
    Device::flex()
}

/// The CPU device (burn-flex), whatever features are enabled.
pub fn cpu_device() -> Device {
    Device::flex()
}
