//! Device selection: `--device auto|cpu|wgpu|cuda[:N]` (env `TRIBUTARY_DEVICE`) onto a burn
//! device.
//!
//! On this machine burn-flex and burn-ndarray reach the same f32 GEMM speed (see
//! `shared/STACK.md`); flex is the maintained one, so it is the CPU. With the cargo feature
//! `wgpu` the GPU path (burn-wgpu) is built in as well, with `cuda` burn's CUDA backend
//! (burn-cuda: cubecl-cuda over cudarc, which loads `libcuda` at run time, so the build needs
//! no CUDA toolkit), and the request decides:
//!
//! - `auto` (the default): a CUDA device if the build has `cuda` and the driver reports one,
//!   else a hardware GPU adapter if wgpu finds one, else the CPU. A software adapter (Mesa's
//!   lavapipe or llvmpipe, SwiftShader, WARP) is never picked automatically: it runs the GPU
//!   kernels on the CPU, far slower than burn-flex.
//! - `cpu`: burn-flex, whatever the build.
//! - `wgpu`: wgpu explicitly, on the best adapter found, software included (that is how CI
//!   runs the GPU code path, on lavapipe). An error without the feature or without any
//!   adapter.
//! - `cuda[:N]`: CUDA device N (default 0). An error without the feature or without that
//!   device.
//!
//! The choice is the pure function [`choose`] over [`AdapterInfo`]s, so it is tested without
//! a GPU. The adapters come from the graphics API that burn's wgpu runtime itself settles on
//! (see [`probe`]), and the chosen one is addressed the way that runtime addresses adapters:
//! by type and index among the adapters of that type.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "wgpu")]
mod probe;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The device type (re-exported so crates above the model need not depend on burn).
pub use burn::tensor::Device;

/// The environment variable that `--device` reads.
pub const DEVICE_ENV: &str = "TRIBUTARY_DEVICE";

/// Failures choosing a device; each names the request and what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The request is not one of the accepted names.
    #[error("device `{value}`: expected one of auto, cpu, wgpu, cuda[:N]")]
    Unknown {
        /// What was asked for.
        value: String,
    },
    /// `wgpu` was asked for in a build without the `wgpu` cargo feature.
    #[error("device `wgpu`: this binary was built without the `wgpu` cargo feature")]
    NotBuilt,
    /// `wgpu` was asked for and wgpu found no adapter at all.
    #[error(
        "device `wgpu`: no adapter found (no GPU driver and no software Vulkan driver such as \
         Mesa's lavapipe; on Debian: apt-get install mesa-vulkan-drivers libvulkan1)"
    )]
    NoAdapter,
    /// `cuda` was asked for in a build without the `cuda` cargo feature.
    #[error("device `cuda`: this binary was built without the `cuda` cargo feature")]
    CudaNotBuilt,
    /// `cuda:N` was asked for and the driver reports fewer devices.
    #[error(
        "device `cuda:{index}`: the CUDA driver reports {found} device(s) (no NVIDIA driver \
         loaded, or fewer cards)"
    )]
    NoCudaDevice {
        /// The index asked for.
        index: usize,
        /// How many devices there are.
        found: usize,
    },
    /// Enumerating the adapters failed.
    #[error("device `wgpu`: enumerating adapters: {0}")]
    Probe(String),
    /// A path that exists only on the CPU was asked to run on another device.
    #[error("--device {device}: {what} runs only on the CPU (pass --device cpu{hint})")]
    CpuOnly {
        /// The device that was chosen.
        device: String,
        /// What is CPU-only ("the serving engine (packed host decode kernels)").
        what: String,
        /// An alternative that does run on the device, when there is one.
        hint: String,
    },
}

/// What was asked for, by `--device` or `TRIBUTARY_DEVICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// A hardware GPU if there is one, else the CPU.
    #[default]
    Auto,
    /// burn-flex on the CPU.
    Cpu,
    /// wgpu on its best adapter, software included.
    Wgpu,
    /// CUDA device N (`cuda` alone: 0).
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda(0)),
            v => v
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown {
                    value: s.to_string(),
                }),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Wgpu => f.write_str("wgpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The kind of adapter, as the graphics API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdapterType {
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU sharing the CPU's package and memory.
    IntegratedGpu,
    /// A virtualised GPU (a VM's passthrough or vGPU).
    VirtualGpu,
    /// A CPU implementation of the API (lavapipe, llvmpipe, SwiftShader).
    Cpu,
    /// Anything else the API reports.
    Other,
}

/// One adapter, as much of wgpu's `AdapterInfo` as the choice needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// The adapter's name ("NVIDIA H100 80GB HBM3", "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// Its kind.
    pub adapter_type: AdapterType,
    /// The driver's name ("NVIDIA", "llvmpipe").
    pub driver: String,
    /// The graphics API it was found on ("Vulkan", "Gl").
    pub api: String,
}

/// Names that only software implementations of a graphics API carry.
const SOFTWARE_NAMES: [&str; 6] = [
    "llvmpipe",
    "lavapipe",
    "softpipe",
    "swiftshader",
    "microsoft basic render",
    "mesa offscreen",
];

impl AdapterInfo {
    /// Whether this adapter computes on the CPU: reported as a CPU device, or named as one
    /// of the known software implementations (some APIs report those as `Other`).
    pub fn is_software(&self) -> bool {
        if self.adapter_type == AdapterType::Cpu {
            return true;
        }
        let name = self.name.to_ascii_lowercase();
        let driver = self.driver.to_ascii_lowercase();
        SOFTWARE_NAMES
            .iter()
            .any(|s| name.contains(s) || driver.contains(s))
    }

    /// Preference among adapters, lower first: discrete, integrated, virtual, other, software.
    fn rank(&self) -> u8 {
        if self.is_software() {
            return 4;
        }
        match self.adapter_type {
            AdapterType::DiscreteGpu => 0,
            AdapterType::IntegratedGpu => 1,
            AdapterType::VirtualGpu => 2,
            AdapterType::Other | AdapterType::Cpu => 3,
        }
    }
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {:?}", self.name, self.api, self.adapter_type)?;
        if self.is_software() {
            f.write_str(", software")?;
        }
        f.write_str("]")
    }
}

/// A chosen wgpu adapter, addressed as burn's wgpu runtime addresses adapters: its type and
/// its index among the adapters of that type, in enumeration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterChoice {
    /// The adapter's type.
    pub adapter_type: AdapterType,
    /// Its index among the adapters of its type.
    pub index: usize,
    /// The adapter.
    pub info: AdapterInfo,
}

/// A chosen CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaChoice {
    /// Its index among the driver's devices.
    pub index: usize,
    /// Its name ("NVIDIA H100 80GB HBM3").
    pub name: String,
}

/// Where to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// burn-flex on the CPU.
    Cpu,
    /// burn-wgpu on this adapter.
    Wgpu(AdapterChoice),
    /// burn-cuda on this device.
    Cuda(CudaChoice),
}

impl Choice {
    /// The backend's short name: `cpu` or `wgpu` (the label `kind` of
    /// `tributary_device_info`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu(_) => "wgpu",
            Self::Cuda(_) => "cuda",
        }
    }

    /// The device's name: `burn-flex` on the CPU, the adapter's name on wgpu.
    pub fn name(&self) -> String {
        match self {
            Self::Cpu => "burn-flex".into(),
            Self::Wgpu(c) => c.info.name.clone(),
            Self::Cuda(c) => c.name.clone(),
        }
    }

    /// Whether this is a hardware GPU: never the CPU, never a software adapter (lavapipe
    /// runs the GPU kernels on the CPU and is not a GPU for placement or reporting).
    pub fn is_gpu(&self) -> bool {
        match self {
            Self::Cpu => false,
            Self::Wgpu(c) => !c.info.is_software(),
            Self::Cuda(_) => true,
        }
    }

    /// Whether this is the CPU path (burn-flex), where the host-only kernels run.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu)
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu (burn-flex)"),
            Self::Wgpu(c) => write!(f, "wgpu: {}", c.info),
            Self::Cuda(c) => write!(f, "cuda:{}: {}", c.index, c.name),
        }
    }
}

/// What a machine and a build offer, for [`choose_among`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Offered<'a> {
    /// Whether the binary has the `wgpu` feature.
    pub wgpu_built: bool,
    /// The adapters wgpu found, in enumeration order.
    pub adapters: &'a [AdapterInfo],
    /// Whether the binary has the `cuda` feature.
    pub cuda_built: bool,
    /// The CUDA devices' names, in index order.
    pub cuda: &'a [String],
}

/// The device for `request` on a build without `cuda`: [`choose_among`].
pub fn choose(
    request: DeviceRequest,
    wgpu_built: bool,
    adapters: &[AdapterInfo],
) -> Result<Choice, DeviceError> {
    choose_among(
        request,
        &Offered {
            wgpu_built,
            adapters,
            ..Offered::default()
        },
    )
}

/// The device for `request`, given what is offered. `auto` prefers a CUDA device, then a
/// hardware wgpu adapter, then the CPU, and never takes a software adapter; `wgpu` takes the
/// best adapter there is, software included (ties go to the first enumerated); `cuda:N`
/// takes device N.
pub fn choose_among(request: DeviceRequest, offered: &Offered<'_>) -> Result<Choice, DeviceError> {
    let Offered {
        wgpu_built,
        adapters,
        cuda_built,
        cuda,
    } = *offered;
    let cuda_at = |index: usize| {
        cuda.get(index).map(|name| {
            Choice::Cuda(CudaChoice {
                index,
                name: name.clone(),
            })
        })
    };
    let best = |allow_software: bool| {
        adapters
            .iter()
            .enumerate()
            .filter(|(_, a)| allow_software || !a.is_software())
            .min_by_key(|(i, a)| (a.rank(), *i))
            .map(|(i, a)| AdapterChoice {
                adapter_type: a.adapter_type,
                index: adapters
                    .iter()
                    .take(i)
                    .filter(|b| b.adapter_type == a.adapter_type)
                    .count(),
                info: a.clone(),
            })
    };
    match request {
        DeviceRequest::Cpu => Ok(Choice::Cpu),
        DeviceRequest::Cuda(_) if !cuda_built => Err(DeviceError::CudaNotBuilt),
        DeviceRequest::Cuda(index) => cuda_at(index).ok_or(DeviceError::NoCudaDevice {
            index,
            found: cuda.len(),
        }),
        DeviceRequest::Auto if cuda_built && !cuda.is_empty() => {
            cuda_at(0).ok_or(DeviceError::NoCudaDevice { index: 0, found: 0 })
        }
        DeviceRequest::Auto if !wgpu_built => Ok(Choice::Cpu),
        DeviceRequest::Auto => Ok(best(false).map_or(Choice::Cpu, Choice::Wgpu)),
        DeviceRequest::Wgpu if !wgpu_built => Err(DeviceError::NotBuilt),
        DeviceRequest::Wgpu => best(true).map(Choice::Wgpu).ok_or(DeviceError::NoAdapter),
    }
}

/// A device and why it was chosen.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The burn device.
    pub device: Device,
    /// What was chosen.
    pub choice: Choice,
}

impl Default for Selected {
    /// The CPU: what runs when nothing asked for a device.
    fn default() -> Self {
        Self::cpu()
    }
}

impl Selected {
    /// The CPU (burn-flex), chosen without probing.
    pub fn cpu() -> Self {
        Self {
            device: cpu_device(),
            choice: Choice::Cpu,
        }
    }

    /// Fails with [`DeviceError::CpuOnly`] unless this is the CPU: for the paths that exist
    /// only there (`what` names the path, `hint` an alternative that runs on the device,
    /// empty when there is none).
    pub fn require_cpu(&self, what: &str, hint: &str) -> Result<(), DeviceError> {
        if self.choice.is_cpu() {
            return Ok(());
        }
        Err(DeviceError::CpuOnly {
            device: self.choice.kind().to_string(),
            what: what.to_string(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!(", or {hint}")
            },
        })
    }
}

/// Whether this binary was built with the `wgpu` feature.
pub const fn wgpu_built() -> bool {
    cfg!(feature = "wgpu")
}

/// Whether this binary was built with the `cuda` feature.
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// The names of the CUDA devices the driver reports, probed once per process (empty without
/// the `cuda` feature or without an NVIDIA driver).
pub fn cuda_devices() -> Vec<String> {
    #[cfg(feature = "cuda")]
    {
        static CUDA: OnceLock<Vec<String>> = OnceLock::new();
        CUDA.get_or_init(cuda::device_names).clone()
    }
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}

/// The adapters wgpu offers on the graphics API its runtime settles on, probed once per
/// process (empty without the `wgpu` feature).
pub fn adapters() -> Result<Vec<AdapterInfo>, DeviceError> {
    #[cfg(feature = "wgpu")]
    {
        static ADAPTERS: OnceLock<Result<Vec<AdapterInfo>, DeviceError>> = OnceLock::new();
        ADAPTERS.get_or_init(probe::settled_adapters).clone()
    }
    #[cfg(not(feature = "wgpu"))]
    Ok(Vec::new())
}

/// The device for `request`: [`choose`] over [`adapters`], then the burn device. Probes the
/// adapters only when the request could use one.
pub fn select(request: DeviceRequest) -> Result<Selected, DeviceError> {
    let wants_cuda = matches!(request, DeviceRequest::Auto | DeviceRequest::Cuda(_));
    let cuda = if wants_cuda && cuda_built() {
        cuda_devices()
    } else {
        Vec::new()
    };
    let wants_wgpu = matches!(request, DeviceRequest::Wgpu)
        || (request == DeviceRequest::Auto && cuda.is_empty());
    let found = if wants_wgpu && wgpu_built() {
        adapters()?
    } else {
        Vec::new()
    };
    let offered = Offered {
        wgpu_built: wgpu_built(),
        adapters: &found,
        cuda_built: cuda_built(),
        cuda: &cuda,
    };
    let choice = choose_among(request, &offered)?;
    let device = match &choice {
        Choice::Cpu => cpu_device(),
        #[cfg(feature = "wgpu")]
        Choice::Wgpu(c) => probe::wgpu_device(c),
        #[cfg(not(feature = "wgpu"))]
        Choice::Wgpu(_) => return Err(DeviceError::NotBuilt),
        #[cfg(feature = "cuda")]
        Choice::Cuda(c) => cuda::cuda_device(c),
        #[cfg(not(feature = "cuda"))]
        Choice::Cuda(_) => return Err(DeviceError::CudaNotBuilt),
    };
    tracing::info!(%request, device = %choice, adapters = found.len(), "compute device chosen");
    Ok(Selected { device, choice })
}

/// The request in `TRIBUTARY_DEVICE` (`auto` when unset).
pub fn request_from_env() -> Result<DeviceRequest, DeviceError> {
    match std::env::var(DEVICE_ENV) {
        Ok(v) => v.parse(),
        Err(_) => Ok(DeviceRequest::Auto),
    }
}

/// The device `TRIBUTARY_DEVICE` asks for, chosen once per process.
pub fn device_from_env() -> Result<Selected, DeviceError> {
    static FROM_ENV: OnceLock<Result<Selected, DeviceError>> = OnceLock::new();
    FROM_ENV
        .get_or_init(|| request_from_env().and_then(select))
        .clone()
}

/// The device Tributary computes on unless told otherwise: [`device_from_env`]. Where that
/// request cannot be met (an unknown name, `wgpu` without the feature or without an
/// adapter, `cuda` without the feature or the device) this logs the error and returns the CPU; commands that take `--device` call
/// [`select`] and fail instead.
pub fn default_device() -> Device {
    match device_from_env() {
        Ok(s) => s.device,
        Err(e) => {
            tracing::error!(error = %e, "falling back to the CPU");
            cpu_device()
        }
    }
}

/// The CPU device (burn-flex), whatever features are enabled.
pub fn cpu_device() -> Device {
    Device::flex()
}

#[cfg(test)]
mod tests;
