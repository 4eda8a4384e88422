//! Checkpoint loading: sharded files, f16/bf16 upcast, clear errors for a missing tensor,
//! a wrong shape or an unsupported architecture; random init in the Hugging Face layout.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use common::*;
use safetensors::tensor::{Dtype, View};
use tributary_model::decoder::CausalLm;
use tributary_model::init::init_random_checkpoint;
use tributary_model::weights::TensorStore;

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn copy_configs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

/// Writes the fixture's tensors converted by `conv`, split into `shards` files.
fn rewrite(name: &str, to: &Path, dtype: Dtype, shards: usize, skip: Option<&str>) {
    let from = model_dir(name);
    copy_configs(&from, to);
    let store = TensorStore::open_checkpoint(&from).expect("open");
    let names: Vec<String> = store
        .names()
        .into_iter()
        .filter(|n| Some(n.as_str()) != skip)
        .collect();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let mut views = Vec::new();
        for n in chunk {
            let (shape, values) = store.get_f32(n).expect("get");
            let bytes: Vec<u8> = match dtype {
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            views.push((
                n.clone(),
                Raw {
                    dtype,
                    shape,
                    bytes,
                },
            ));
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
        safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &to.join(&file))
            .expect("write");
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(to.join("model.safetensors.index.json"), index.to_string()).expect("index");
    }
}

fn logits(model: &CausalLm, name: &str) -> Vec<f32> {
    let rows: Vec<Vec<u32>> = int_rows(&reference(name), "input_ids")
        .into_iter()
        .map(|r| r.into_iter().map(|t| t as u32).collect())
        .collect();
    values(&model.forward(ids_tensor(&rows, model.device()), &[], None, None))
}

#[test]
fn sharded_and_half_precision_checkpoints_load() {
    for name in MODELS {
        let dev = device();
        let want = logits(&CausalLm::load(&model_dir(name), &dev).expect("load"), name);
        let tmp = tempfile::tempdir().expect("tempdir");
        let sharded = tmp.path().join("sharded");
        rewrite(name, &sharded, Dtype::F32, 3, None);
        assert!(!sharded.join("model.safetensors").exists());
        let got = logits(&CausalLm::load(&sharded, &dev).expect("load sharded"), name);
        assert_eq!(got, want, "{name}: sharded checkpoint computes differently");
        for dtype in [Dtype::F16, Dtype::BF16] {
            let d = tmp.path().join(format!("{dtype:?}"));
            rewrite(name, &d, dtype, 2, None);
            let got = logits(&CausalLm::load(&d, &dev).expect("load half"), name);
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff.is_finite() && diff < 0.5,
                "{name} {dtype:?}: logits off by {diff}"
            );
        }
    }
}

#[test]
fn missing_tensor_wrong_shape_and_architecture_are_named() {
    let dev = device();
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing");
    rewrite(
        "tiny-llama",
        &missing,
        Dtype::F32,
        1,
        Some("model.layers.1.mlp.gate_proj.weight"),
    );
    let e = CausalLm::load(&missing, &dev)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("model.layers.1.mlp.gate_proj.weight"), "{e}");
    // Tied-embedding Qwen2 without lm_head loads; Llama untied without lm_head does not.
    let no_head = tmp.path().join("nohead");
    rewrite(
        "tiny-llama",
        &no_head,
        Dtype::F32,
        1,
        Some("lm_head.weight"),
    );
    let e = CausalLm::load(&no_head, &dev)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("lm_head.weight"), "{e}");
    // Wrong shape: claim a wider MLP than the weights have.
    let wide = tmp.path().join("wide");
    rewrite("tiny-llama", &wide, Dtype::F32, 1, None);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(wide.join("config.json")).expect("read"))
            .expect("json");
    cfg["intermediate_size"] = 200.into();
    std::fs::write(wide.join("config.json"), cfg.to_string()).expect("write");
    let e = CausalLm::load(&wide, &dev)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("200"),
        "{e}"
    );
    // Unsupported architecture.
    cfg["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    std::fs::write(wide.join("config.json"), cfg.to_string()).expect("write");
    let e = CausalLm::load(&wide, &dev)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("MistralForCausalLM"), "{e}");
}

#[test]
fn random_init_writes_a_loadable_deterministic_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg_file = tmp.path().join("cfg.json");
    std::fs::write(
        &cfg_file,
        serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 96, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 1e6, "tie_word_embeddings": true, "eos_token_id": 2})
        .to_string(),
    )
    .expect("write cfg");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    init_random_checkpoint(&cfg_file, 11, &a).expect("init a");
    init_random_checkpoint(&cfg_file, 11, &b).expect("init b");
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).expect("a"),
        std::fs::read(b.join("model.safetensors")).expect("b")
    );
    let model = CausalLm::load(&a, &device()).expect("load");
    assert_eq!(model.generation_config().eos_token_ids, vec![2]);
    assert!(model.config().tie_word_embeddings);
    let out = model.forward(
        ids_tensor(&[vec![1, 2, 3]], model.device()),
        &[],
        None,
        None,
    );
    assert_eq!(out.dims(), [1, 3, 96]);
    assert!(values(&out).iter().all(|v| v.is_finite()));
    // A Llama with tied embeddings and biases (attention_bias covers o_proj too).
    std::fs::write(
        &cfg_file,
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 1, "tie_word_embeddings": true, "attention_bias": true,
            "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}})
        .to_string(),
    )
    .expect("write cfg");
    let c = tmp.path().join("c");
    init_random_checkpoint(&cfg_file, 1, &c).expect("init c");
    let store = TensorStore::open_checkpoint(&c).expect("open");
    assert!(store.contains("model.layers.0.self_attn.o_proj.bias"));
    assert!(!store.contains("lm_head.weight"));
    let model = CausalLm::load(&c, &device()).expect("load llama");
    assert_eq!(model.config().rope_theta, 500.0);
    let out = model.forward(
        ids_tensor(&[vec![1, 2, 3]], model.device()),
        &[],
        None,
        None,
    );
    assert!(values(&out).iter().all(|v| v.is_finite()));
}
