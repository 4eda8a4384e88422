//! `[resources]` of a job spec: what each worker that runs the job must have.
//!
//! ```toml
//! [resources]
//! gpu = 1        # or `true`: only workers advertising a hardware GPU (default 0: any worker)
//! ```
//!
//! A worker advertises a GPU in its membership record (`WorkerInfo::gpu`) when its
//! `--device` chose a hardware GPU; a software adapter (Mesa's lavapipe) is not one. The
//! coordinator places a job with `resources.gpu` only on such workers, and while there are
//! none the job stays queued with the reason in its record.

use serde::{Deserialize, Deserializer, Serialize};

/// Most GPUs a worker uses for one job (a worker trains on one device).
pub const MAX_GPU: u32 = 1;

/// What each worker of a job must have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Hardware GPUs each worker must have: 0 (any worker) or 1. `true`/`false` mean 1/0.
    #[serde(default, deserialize_with = "gpu_count")]
    pub gpu: u32,
}

impl Resources {
    /// Whether nothing is asked for (the spec then leaves `[resources]` out).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the job needs workers with a hardware GPU.
    pub fn needs_gpu(&self) -> bool {
        self.gpu > 0
    }

    /// Checks the fields against their limits; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.gpu > MAX_GPU {
            return Err(format!(
                "resources.gpu = {} is out of range: must be 0..={MAX_GPU} (a worker trains on one device)",
                self.gpu
            ));
        }
        Ok(())
    }
}

/// `gpu` as a count, or as a flag (`true` = 1).
fn gpu_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Gpu {
        Flag(bool),
        Count(u32),
    }
    match Gpu::deserialize(d) {
        Ok(Gpu::Flag(b)) => Ok(u32::from(b)),
        Ok(Gpu::Count(n)) => Ok(n),
        Err(_) => Err(serde::de::Error::custom(
            "resources.gpu must be a GPU count (0 or 1) or true/false",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::JobSpec;

    const BASE: &str = r#"
base_model = "models/tiny"
data = "data/train.jsonl"
[train]
steps = 2
"#;

    fn with(resources: &str) -> Result<JobSpec, String> {
        JobSpec::from_toml_str(&format!("{BASE}[resources]\n{resources}\n"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn gpu_takes_a_count_or_a_flag_and_defaults_to_none() {
        assert!(!JobSpec::from_toml_str(BASE).unwrap().resources.needs_gpu());
        assert_eq!(with("gpu = 1").unwrap().resources.gpu, 1);
        assert_eq!(with("gpu = true").unwrap().resources.gpu, 1);
        assert_eq!(with("gpu = false").unwrap().resources.gpu, 0);
        let json =
            r#"{"base_model":"m","data":"d.jsonl","train":{"steps":1},"resources":{"gpu":1}}"#;
        assert!(JobSpec::from_json_str(json).unwrap().resources.needs_gpu());
    }

    #[test]
    fn bad_values_name_the_field_and_the_limit() {
        let e = with("gpu = 2").unwrap_err();
        assert!(
            e.contains("resources.gpu = 2 is out of range: must be 0..=1"),
            "{e}"
        );
        let e = with("gpu = \"yes\"").unwrap_err();
        assert!(e.contains("resources.gpu must be a GPU count"), "{e}");
        let e = with("gpus = 1").unwrap_err();
        assert!(e.contains("gpus"), "{e}");
    }

    #[test]
    fn a_spec_without_resources_serializes_as_before() {
        let spec = JobSpec::from_toml_str(BASE).unwrap();
        assert!(!spec.to_json().unwrap().contains("resources"));
        let gpu = with("gpu = 1").unwrap();
        let back = JobSpec::from_json_str(&gpu.to_json().unwrap()).unwrap();
        assert_eq!(back.resources.gpu, 1);
    }
}
