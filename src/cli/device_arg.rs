//! `--device` (env `TRIBUTARY_DEVICE`): the one device flag of every command that computes
//! (`model finetune`, `model generate`, `dev`, `worker`, `bench train|generate|attribution`),
//! parsed into a [`DeviceRequest`] and resolved by `tributary_model::device::select`.
//!
//! Some paths exist only on the CPU ([`CpuOnly`]):
//! - generation with `--dtype f32-packed` (the default) or `bf16`: the host decode kernels
//!   (`--dtype f32` runs on any device),
//! - `--quantize nf4`: the NF4 kernels are host code on burn-flex,
//! - the serving engine (`dev`/`worker --base-model`): it always uses the host decode
//!   kernels (`tributary_worker::engine::EngineConfig::device` refuses other devices).
//!
//! Asked for explicitly (`--device wgpu`), another device is refused on these paths with an
//! error naming the flag (`DeviceError::CpuOnly`), never quietly replaced by the CPU. Under
//! `auto` they run on the CPU, where their kernels are the fast path.

use clap::Args;
use tributary_model::device::{DeviceError, DeviceRequest, Selected, select};

/// The help text shared by every `--device`.
pub const DEVICE_HELP: &str = "Where to compute: auto (a CUDA device if the build has \
`cuda` and the driver reports one, else a hardware GPU adapter if the build has `wgpu`, else \
the CPU; never a software adapter; CPU-only paths such as --dtype f32-packed, --quantize nf4 \
and serving stay on the CPU), cpu, wgpu (its best adapter, software included), or cuda[:N] \
(CUDA device N); CPU-only paths fail on an explicit wgpu or cuda";

/// `--device`, flattened into a command's arguments.
#[derive(Debug, Clone, Copy, Args)]
pub struct DeviceArg {
    #[arg(
        long = "device",
        env = tributary_model::device::DEVICE_ENV,
        default_value = "auto",
        value_parser = parse_device,
        help = DEVICE_HELP
    )]
    pub device: DeviceRequest,
}

/// Parses a `--device` value.
pub fn parse_device(s: &str) -> Result<DeviceRequest, DeviceError> {
    s.parse()
}

/// A path that runs only on the CPU: what it is, and the alternative that runs on other
/// devices (empty when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOnly {
    pub what: &'static str,
    pub hint: &'static str,
}

/// NF4 storage of the base (training and generation).
pub const NF4: CpuOnly = CpuOnly {
    what: "--quantize nf4 (host NF4 kernels)",
    hint: "--quantize none",
};

/// llama.cpp's block formats on the host int8 kernels.
pub const GGUF_BLOCKS: CpuOnly = CpuOnly {
    what: "--quantize gguf and --quantize q4_1 (host int8 kernels)",
    hint: "--quantize none",
};

/// Generation on the host decode kernels' layouts.
pub const HOST_DECODE: CpuOnly = CpuOnly {
    what: "--dtype f32-packed and --dtype bf16 (host decode kernels)",
    hint: "--dtype f32",
};

impl DeviceArg {
    /// The device asked for, chosen (adapters probed when the request could use one).
    pub fn select(&self) -> Result<Selected, DeviceError> {
        select(self.device)
    }

    /// The device for a path that may be CPU-only: `auto` gives the CPU there, an explicit
    /// request for another device fails naming `--device` and the path.
    pub fn select_for(&self, cpu_only: Option<CpuOnly>) -> Result<Selected, DeviceError> {
        match cpu_only {
            Some(_) if self.device == DeviceRequest::Auto => Ok(Selected::cpu()),
            Some(path) => {
                let selected = self.select()?;
                require(&selected, path)?;
                Ok(selected)
            }
            None => self.select(),
        }
    }

    /// The serving engine's device when the command's own device is `selected`: the CPU
    /// under `auto`, else `selected` (which the engine refuses unless it is the CPU).
    pub fn for_serving(&self, selected: &Selected) -> Selected {
        if self.device == DeviceRequest::Auto {
            Selected::cpu()
        } else {
            selected.clone()
        }
    }
}

/// Fails unless `selected` is the CPU, naming the path.
pub fn require(selected: &Selected, path: CpuOnly) -> Result<(), DeviceError> {
    selected.require_cpu(path.what, path.hint)
}

/// How a worker describes its device in membership and job records: the choice as
/// `tributary_model::device::Choice` prints it (`cpu (burn-flex)`, `wgpu: NAME [API, TYPE]`).
pub fn described(selected: &Selected) -> String {
    selected.choice.to_string()
}

/// Reports the device of a node that computes: `tributary_device_info` on its `/metrics`,
/// and a line on stderr.
pub fn report(selected: &Selected) {
    tributary_worker::metrics::set_device_info(selected);
    eprintln!("computing on {}", selected.choice);
}
