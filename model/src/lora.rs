//! LoRA applied without merging (the base stays shared): per-module A/B tensors and scales.
//!
//! A [`LoraAdapter`] holds, for every adapted linear module of the decoder, `A` with shape
//! `[r, in]` and `B` with shape `[out, r]` (PEFT's `lora_A.weight` / `lora_B.weight`) and the
//! scale `alpha / r` (or `alpha / sqrt(r)` with rsLoRA). The decoder adds
//! `dropout(x) · Aᵀ · Bᵀ · scale` to the base projection's output, exactly as PEFT's
//! `lora.Linear` does, so one base model can serve many adapters at once.
//!
//! Module names follow transformers: `model.layers.{N}.self_attn.{q,k,v,o}_proj` and
//! `model.layers.{N}.mlp.{gate,up,down}_proj`. Which modules an adapter targets, and with
//! which rank and alpha, is decided by [`LoraConfig`] with PEFT's matching rules
//! (see [`crate::peft`] for the file format).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kernels::LoraFactors;
use crate::weights::read_f32;

/// The seven linear projections of a decoder layer that LoRA may adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TargetModule {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl TargetModule {
    /// All seven, in a fixed order (the order used everywhere a deterministic order matters).
    pub const ALL: [TargetModule; 7] = [
        TargetModule::Q,
        TargetModule::K,
        TargetModule::V,
        TargetModule::O,
        TargetModule::Gate,
        TargetModule::Up,
        TargetModule::Down,
    ];

    /// The leaf module name (`q_proj`, …).
    pub fn name(self) -> &'static str {
        match self {
            TargetModule::Q => "q_proj",
            TargetModule::K => "k_proj",
            TargetModule::V => "v_proj",
            TargetModule::O => "o_proj",
            TargetModule::Gate => "gate_proj",
            TargetModule::Up => "up_proj",
            TargetModule::Down => "down_proj",
        }
    }

    /// Index in [`TargetModule::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The full transformers module path for layer `layer`.
    pub fn path(self, layer: usize) -> String {
        let block = match self {
            TargetModule::Q | TargetModule::K | TargetModule::V | TargetModule::O => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}", self.name())
    }

    /// `(in_features, out_features)` of this projection in `cfg`.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        match self {
            TargetModule::Q => (cfg.hidden_size, q),
            TargetModule::K | TargetModule::V => (cfg.hidden_size, kv),
            TargetModule::O => (q, cfg.hidden_size),
            TargetModule::Gate | TargetModule::Up => (cfg.hidden_size, cfg.intermediate_size),
            TargetModule::Down => (cfg.intermediate_size, cfg.hidden_size),
        }
    }

    /// Parses a leaf name (`q_proj`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// PEFT's `target_modules`: a list of names (matched as the module name or its last
/// dotted components) or one regular expression (matched against the full module name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    /// A list of names, e.g. `["q_proj", "v_proj"]`.
    List(Vec<String>),
    /// A regular expression, or `"all-linear"`.
    Regex(String),
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec::List(vec!["q_proj".into(), "v_proj".into()])
    }
}

/// The fields of PEFT's `adapter_config.json` that Tributary reads and writes.
///
/// Unknown fields are ignored on load; what Tributary cannot honour (DoRA,
/// `modules_to_save`, biases, …) is refused by [`LoraConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// rsLoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Which modules are adapted.
    #[serde(default)]
    pub target_modules: TargetSpec,
    /// Modules never adapted (same matching as `target_modules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_modules: Option<TargetSpec>,
    /// Per-module rank overrides (keys are regexes matched against module-name suffixes).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Dropout probability on the LoRA path (training only).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Must be false: DoRA is not supported.
    #[serde(default)]
    pub use_dora: bool,
    /// Must be empty: fully fine-tuned extra modules are not supported.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Must be `"none"`.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Must be false (no Conv1D-style weights in Llama/Qwen2).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Restrict adaptation to these layer indices.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    /// Must be `"LORA"`.
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    /// `"CAUSAL_LM"`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base checkpoint this adapter was trained on, if recorded.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Everything else in the file, kept so that a round trip does not lose it.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_bias() -> String {
    "none".into()
}

fn default_peft_type() -> String {
    "LORA".into()
}

impl LoraConfig {
    /// A plain config: rank `r`, alpha `alpha`, the given target modules, no dropout.
    pub fn new(r: usize, alpha: f64, targets: &[TargetModule]) -> Self {
        Self {
            r,
            lora_alpha: alpha,
            use_rslora: false,
            target_modules: TargetSpec::List(
                targets.iter().map(|t| t.name().to_string()).collect(),
            ),
            exclude_modules: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            lora_dropout: 0.0,
            use_dora: false,
            modules_to_save: None,
            bias: default_bias(),
            fan_in_fan_out: false,
            layers_to_transform: None,
            peft_type: default_peft_type(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            extra: BTreeMap::new(),
        }
    }

    /// Refuses what Tributary does not implement; `src` names the config in errors.
    pub fn validate(&self, src: &std::path::Path) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::adapter(src, reason));
        if self.peft_type != "LORA" {
            return bad(format!(
                "peft_type `{}` is not supported (only LORA)",
                self.peft_type
            ));
        }
        if self.use_dora {
            return bad("use_dora=true: DoRA adapters are not supported".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad(format!(
                "modules_to_save={:?}: fully trained extra modules are not supported",
                self.modules_to_save.as_deref().unwrap_or_default()
            ));
        }
        if self.bias != "none" {
            return bad(format!(
                "bias=`{}`: only bias=\"none\" is supported",
                self.bias
            ));
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out=true is not supported for Llama/Qwen2".into());
        }
        if self.r == 0 {
            return bad("r must be positive".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            ));
        }
        for (field, unsupported) in [
            ("use_qalora", "QA-LoRA"),
            ("lora_bias", "LoRA biases"),
            ("use_bdlora", "BD-LoRA"),
        ] {
            if self.extra.get(field).and_then(|v| v.as_bool()) == Some(true) {
                return bad(format!("{field}=true: {unsupported} is not supported"));
            }
        }
        for field in [
            "target_parameters",
            "trainable_token_indices",
            "layer_replication",
            "alora_invocation_tokens",
            "layers_pattern",
        ] {
            if let Some(v) = self.extra.get(field)
                && !v.is_null()
                && v != &serde_json::Value::Array(vec![])
            {
                return bad(format!("{field}={v} is not supported"));
            }
        }
        if let Some(v) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return bad(format!("rank_pattern `{}` gives rank 0", v.0));
        }
        Ok(())
    }

    /// The modules of a model with `num_layers` layers that this config adapts, in layer
    /// then [`TargetModule::ALL`] order. Errors when a listed target names no supported
    /// module (e.g. `lm_head`, `embed_tokens`, a typo) or when nothing is targeted.
    pub fn resolve_targets(
        &self,
        num_layers: usize,
        src: &std::path::Path,
    ) -> Result<Vec<(usize, TargetModule)>, ModelError> {
        let all_paths: Vec<(usize, TargetModule, String)> = (0..num_layers)
            .flat_map(|l| {
                TargetModule::ALL
                    .into_iter()
                    .map(move |m| (l, m, m.path(l)))
            })
            .collect();
        if let TargetSpec::List(names) = &self.target_modules {
            for n in names {
                if !all_paths.iter().any(|(_, _, p)| suffix_match(p, n)) {
                    return Err(ModelError::adapter(
                        src,
                        format!(
                            "target module `{n}` is not supported (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                        ),
                    ));
                }
            }
        }
        let target_re = match &self.target_modules {
            TargetSpec::Regex(s) if s != "all-linear" => Some(full_regex(s, src)?),
            _ => None,
        };
        let exclude_re = match &self.exclude_modules {
            Some(TargetSpec::Regex(s)) => Some(full_regex(s, src)?),
            _ => None,
        };
        let mut out = Vec::new();
        for (l, m, path) in &all_paths {
            let targeted = match &self.target_modules {
                TargetSpec::Regex(s) if s == "all-linear" => true,
                TargetSpec::Regex(_) => target_re.as_ref().is_some_and(|re| re.is_match(path)),
                TargetSpec::List(names) => names.iter().any(|n| suffix_match(path, n)),
            };
            let excluded = match &self.exclude_modules {
                None => false,
                Some(TargetSpec::Regex(_)) => {
                    exclude_re.as_ref().is_some_and(|re| re.is_match(path))
                }
                Some(TargetSpec::List(names)) => names.iter().any(|n| suffix_match(path, n)),
            };
            let layer_ok = self
                .layers_to_transform
                .as_ref()
                .is_none_or(|ls| ls.contains(l));
            if targeted && !excluded && layer_ok {
                out.push((*l, *m));
            }
        }
        if out.is_empty() {
            return Err(ModelError::adapter(
                src,
                format!(
                    "target_modules {:?} match no module of the base model",
                    self.target_modules
                ),
            ));
        }
        Ok(out)
    }

    /// Rank and alpha of the module at `path` after `rank_pattern` / `alpha_pattern`.
    pub fn rank_alpha(
        &self,
        path: &str,
        src: &std::path::Path,
    ) -> Result<(usize, f64), ModelError> {
        let r = match pattern_key(self.rank_pattern.keys(), path, src)? {
            Some(k) => self.rank_pattern.get(&k).copied().unwrap_or(self.r),
            None => self.r,
        };
        let alpha = match pattern_key(self.alpha_pattern.keys(), path, src)? {
            Some(k) => self
                .alpha_pattern
                .get(&k)
                .copied()
                .unwrap_or(self.lora_alpha),
            None => self.lora_alpha,
        };
        Ok((r, alpha))
    }

    /// The LoRA scale for rank `r` and alpha `alpha` (`alpha/r`, or `alpha/sqrt(r)` with rsLoRA).
    pub fn scale_for(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

/// PEFT's list matching: the module name equals `target` or ends with `.target`.
fn suffix_match(path: &str, target: &str) -> bool {
    path == target || path.ends_with(&format!(".{target}"))
}

fn full_regex(s: &str, src: &std::path::Path) -> Result<regex::Regex, ModelError> {
    regex::Regex::new(&format!("^(?:{s})$"))
        .map_err(|e| ModelError::adapter(src, format!("invalid module regex `{s}`: {e}")))
}

/// PEFT's pattern lookup: an exact key wins, otherwise the first key `k` (in file order,
/// which serde keeps sorted here) for which `(.*\.)?(k)$` matches the module path.
fn pattern_key<'a>(
    keys: impl Iterator<Item = &'a String>,
    path: &str,
    src: &std::path::Path,
) -> Result<Option<String>, ModelError> {
    let keys: Vec<&String> = keys.collect();
    if let Some(k) = keys.iter().find(|k| k.as_str() == path) {
        return Ok(Some((*k).clone()));
    }
    for k in keys {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .map_err(|e| ModelError::adapter(src, format!("invalid pattern key `{k}`: {e}")))?;
        if re.is_match(path) {
            return Ok(Some(k.clone()));
        }
    }
    Ok(None)
}

/// One adapted projection: `A` `[r, in]`, `B` `[out, r]`, and the scale.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// `lora_A.weight`, shape `[r, in]`.
    pub a: Tensor<2>,
    /// `lora_B.weight`, shape `[out, r]`.
    pub b: Tensor<2>,
    /// The factor applied to `x·Aᵀ·Bᵀ`.
    pub scale: f32,
}

impl LoraModule {
    /// The LoRA delta for `x` `[n, in]`: `x·Aᵀ·Bᵀ·scale`, shape `[n, out]`.
    pub fn delta(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.a.clone().transpose())
            .matmul(self.b.clone().transpose())
            .mul_scalar(self.scale)
    }

    /// The merged weight delta `scale·B·A`, shape `[out, in]`.
    pub fn weight_delta(&self) -> Tensor<2> {
        self.b.clone().matmul(self.a.clone()).mul_scalar(self.scale)
    }
}

/// Per layer and [`TargetModule::index`], an adapter's factors packed for the host kernels.
pub type HostLoraModules = Vec<[Option<LoraFactors>; 7]>;

/// The adapter's factors packed for the host kernels, in f32 and in bf16, each made on
/// first use and dropped whenever the modules may change (any mutable access).
#[derive(Debug, Clone, Default)]
struct HostFactorCache {
    f32: OnceLock<Arc<HostLoraModules>>,
    bf16: OnceLock<Arc<HostLoraModules>>,
}

/// A LoRA adapter for one base model: its config and its modules, layer by layer.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The PEFT config it was loaded with or will be saved with.
    pub config: LoraConfig,
    /// `modules[layer][TargetModule::index()]`.
    pub(crate) modules: Vec<[Option<LoraModule>; 7]>,
    host: HostFactorCache,
}

impl LoraAdapter {
    /// An adapter with the given modules; `modules[layer][TargetModule::index()]`.
    pub fn from_modules(config: LoraConfig, modules: Vec<[Option<LoraModule>; 7]>) -> Self {
        Self {
            config,
            modules,
            host: HostFactorCache::default(),
        }
    }

    /// This adapter with every `B` set to zero: it changes nothing in the base model's
    /// outputs, and its gradient with respect to `B` is the base model's weight gradient
    /// projected through this adapter's `A` (`∂L/∂B = s · δ (A x)ᵀ`), the attribution
    /// features of [`crate::features`]' base-gradient mode.
    pub fn with_zero_b(&self) -> LoraAdapter {
        let modules = self
            .modules
            .iter()
            .map(|layer| {
                layer.clone().map(|m| {
                    m.map(|m| LoraModule {
                        b: m.b.zeros_like(),
                        ..m
                    })
                })
            })
            .collect();
        LoraAdapter::from_modules(self.config.clone(), modules)
    }

    /// Whether [`LoraAdapter::host_factors`] has packed the factors in this precision (and no
    /// mutable access has dropped them since): the decode step's host path has used them.
    pub fn has_host_factors(&self, bf16: bool) -> bool {
        let cell = if bf16 {
            &self.host.bf16
        } else {
            &self.host.f32
        };
        cell.get().is_some()
    }

    /// Every module's factors packed for the host decode kernels (`Bᵀ` scaled, bf16 or f32),
    /// packed on the first call for each `bf16` and kept until the adapter is mutated.
    pub fn host_factors(&self, bf16: bool) -> Result<&HostLoraModules, ModelError> {
        let cell = if bf16 {
            &self.host.bf16
        } else {
            &self.host.f32
        };
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        let mut packed: HostLoraModules = Vec::with_capacity(self.modules.len());
        for (l, layer) in self.modules.iter().enumerate() {
            let mut out: [Option<LoraFactors>; 7] = Default::default();
            for (slot, m) in out.iter_mut().zip(layer) {
                if let Some(m) = m {
                    let ([r, fan_in], [fan_out, _]) = (m.a.dims(), m.b.dims());
                    let a = read_f32(&m.a, &format!("layer {l} lora_A"))?;
                    let b = read_f32(&m.b, &format!("layer {l} lora_B"))?;
                    *slot = Some(LoraFactors::new(
                        &a,
                        &b,
                        [r, fan_in, fan_out],
                        m.scale,
                        bf16,
                    ));
                }
            }
            packed.push(out);
        }
        Ok(cell.get_or_init(|| Arc::new(packed)))
    }

    /// A fresh adapter as PEFT initialises one: `A` kaiming-uniform (bound `1/sqrt(in)`),
    /// `B` zero, from a seeded generator (same seed, same adapter).
    pub fn init(
        config: LoraConfig,
        model: &ModelConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let src = std::path::Path::new("lora config");
        config.validate(src)?;
        let targets = config.resolve_targets(model.num_hidden_layers, src)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut modules: Vec<[Option<LoraModule>; 7]> = (0..model.num_hidden_layers)
            .map(|_| Default::default())
            .collect();
        for (layer, m) in targets {
            let (r, alpha) = config.rank_alpha(&m.path(layer), src)?;
            let (fan_in, fan_out) = m.dims(model);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a: Vec<f32> = (0..r * fan_in)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let a = Tensor::from_data(TensorData::new(a, [r, fan_in]), device);
            let b = Tensor::zeros([fan_out, r], device);
            let module = LoraModule {
                a,
                b,
                scale: config.scale_for(r, alpha) as f32,
            };
            if let Some(slot) = modules.get_mut(layer).and_then(|l| l.get_mut(m.index())) {
                *slot = Some(module);
            }
        }
        Ok(Self::from_modules(config, modules))
    }

    /// The module adapting `target` in `layer`, if any.
    pub fn module(&self, layer: usize, target: TargetModule) -> Option<&LoraModule> {
        self.modules
            .get(layer)
            .and_then(|l| l.get(target.index())?.as_ref())
    }

    /// Mutable access to a module.
    pub fn module_mut(&mut self, layer: usize, target: TargetModule) -> Option<&mut LoraModule> {
        self.host = HostFactorCache::default();
        self.modules
            .get_mut(layer)
            .and_then(|l| l.get_mut(target.index())?.as_mut())
    }

    /// Number of layers the adapter was built for.
    pub fn num_layers(&self) -> usize {
        self.modules.len()
    }

    /// Every adapted module as `(layer, target, module)` in the canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, TargetModule, &LoraModule)> {
        self.modules.iter().enumerate().flat_map(|(l, ms)| {
            TargetModule::ALL
                .into_iter()
                .zip(ms)
                .filter_map(move |(t, m)| m.as_ref().map(|m| (l, t, m)))
        })
    }

    /// Every adapted module, mutably, in the canonical order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, TargetModule, &mut LoraModule)> {
        self.host = HostFactorCache::default();
        self.modules.iter_mut().enumerate().flat_map(|(l, ms)| {
            TargetModule::ALL
                .into_iter()
                .zip(ms.iter_mut())
                .filter_map(move |(t, m)| m.as_mut().map(|m| (l, t, m)))
        })
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.iter()
            .map(|(_, _, m)| m.a.shape().num_elements() + m.b.shape().num_elements())
            .sum()
    }

    /// The same adapter with its tensors moved to `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        let mut out = self.clone();
        for (_, _, m) in out.iter_mut() {
            m.a = m.a.clone().to_device(device);
            m.b = m.b.clone().to_device(device);
        }
        out
    }
}
