//! PEFT adapter IO: round trips keep logits and PEFT's names and shapes; rank/alpha
//! patterns and rsLoRA are honoured; unsupported adapters are refused with clear errors;
//! merging folds an adapter into the base.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tributary_model::decoder::CausalLm;
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};
use tributary_model::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, merge_into};
use tributary_model::weights::TensorStore;

fn load(name: &str) -> (CausalLm, LoraAdapter) {
    let dev = device();
    let model = CausalLm::load(&model_dir(name), &dev).expect("load model");
    let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
        .expect("load adapter");
    (model, adapter)
}

fn rows(name: &str) -> Vec<Vec<u32>> {
    int_rows(&reference(name), "input_ids")
        .into_iter()
        .map(|r| r.into_iter().map(|t| t as u32).collect())
        .collect()
}

fn shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let s = TensorStore::open_file(path).expect("open");
    s.names()
        .into_iter()
        .map(|n| (n.clone(), s.shape(&n).expect("shape")))
        .collect()
}

#[test]
fn saved_adapter_reloads_with_identical_logits_and_peft_layout() {
    for name in MODELS {
        let (model, adapter) = load(name);
        let dir = tempfile::tempdir().expect("tempdir");
        adapter.save(dir.path()).expect("save");
        assert_eq!(
            shapes(&dir.path().join(ADAPTER_WEIGHTS)),
            shapes(&model_dir(name).join("adapter").join(ADAPTER_WEIGHTS)),
            "{name}: names/shapes differ from PEFT's"
        );
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).expect("config"),
        )
        .expect("json");
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], 4);
        assert_eq!(cfg["lora_alpha"], 8);
        let back = LoraAdapter::load(dir.path(), model.config(), model.device()).expect("reload");
        let ids = rows(name);
        let a = model.forward(ids_tensor(&ids, model.device()), &[], Some(&adapter), None);
        let b = model.forward(ids_tensor(&ids, model.device()), &[], Some(&back), None);
        assert_eq!(
            values(&a),
            values(&b),
            "{name}: logits differ after a save/load round trip"
        );
    }
}

fn write_adapter(dir: &Path, mutate: impl FnOnce(&mut serde_json::Value)) {
    let src = model_dir("tiny-llama").join("adapter");
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join(ADAPTER_CONFIG)).expect("read"))
            .expect("json");
    mutate(&mut cfg);
    std::fs::write(dir.join(ADAPTER_CONFIG), cfg.to_string()).expect("write");
    std::fs::copy(src.join(ADAPTER_WEIGHTS), dir.join(ADAPTER_WEIGHTS)).expect("copy");
}

fn load_err(dir: &Path, model: &CausalLm) -> String {
    match LoraAdapter::load(dir, model.config(), model.device()) {
        Ok(_) => panic!("adapter in {} should have been refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_adapters_are_refused_clearly() {
    let (model, _) = load("tiny-llama");
    let tmp = tempfile::tempdir().expect("tempdir");
    type Mutate = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutate, &str)> = vec![
        ("dora", Box::new(|c| c["use_dora"] = true.into()), "DoRA"),
        (
            "mts",
            Box::new(|c| c["modules_to_save"] = serde_json::json!(["lm_head"])),
            "modules_to_save",
        ),
        (
            "unknown",
            Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj", "c_attn"])),
            "c_attn",
        ),
        (
            "lmhead",
            Box::new(|c| c["target_modules"] = serde_json::json!(["lm_head"])),
            "lm_head",
        ),
        (
            "fewer",
            Box::new(|c| c["target_modules"] = serde_json::json!(["q_proj"])),
            "does not select",
        ),
        ("rank", Box::new(|c| c["r"] = 8.into()), "expected shape"),
        ("bias", Box::new(|c| c["bias"] = "all".into()), "bias"),
        ("ia3", Box::new(|c| c["peft_type"] = "IA3".into()), "IA3"),
    ];
    for (dir, mutate, needle) in cases {
        let d = tmp.path().join(dir);
        write_adapter(&d, mutate);
        let e = load_err(&d, &model);
        assert!(
            e.contains(needle),
            "{dir}: error `{e}` does not mention `{needle}`"
        );
    }
    // Missing tensor: drop one from the file.
    let d = tmp.path().join("missing");
    write_adapter(&d, |_| {});
    let store = TensorStore::open_file(&d.join(ADAPTER_WEIGHTS)).expect("open");
    let mut kept = BTreeMap::new();
    for n in store.names() {
        if !n.contains("layers.1.mlp.up_proj.lora_B") {
            let (shape, values) = store.get_f32(&n).expect("get");
            kept.insert(n, tributary_model::weights::HostTensor { shape, values });
        }
    }
    tributary_model::weights::save_f32(&d.join(ADAPTER_WEIGHTS), &kept).expect("save");
    let e = load_err(&d, &model);
    assert!(
        e.contains("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"),
        "{e}"
    );
    // A base mismatch: the tiny-llama adapter on a model with another MLP width.
    let mut other = model.config().clone();
    other.intermediate_size = 128;
    let e = LoraAdapter::load(
        &model_dir("tiny-llama").join("adapter"),
        &other,
        model.device(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("mlp") && e.contains("expected shape"), "{e}");
}

#[test]
fn rank_and_alpha_patterns_and_rslora_are_honoured() {
    let (model, _) = load("tiny-qwen2");
    let mut cfg = LoraConfig::new(
        4,
        8.0,
        &[TargetModule::Q, TargetModule::V, TargetModule::Down],
    );
    cfg.rank_pattern.insert("v_proj".into(), 2);
    cfg.rank_pattern
        .insert(r"model.layers.1.mlp.down_proj".into(), 6);
    cfg.alpha_pattern
        .insert(r"layers\.0\.self_attn\.q_proj".into(), 2.0);
    let adapter = LoraAdapter::init(cfg.clone(), model.config(), 3, model.device()).expect("init");
    let q0 = adapter.module(0, TargetModule::Q).expect("q0");
    assert_eq!(q0.a.dims(), [4, 64]);
    assert_eq!(q0.scale, 0.5);
    let q1 = adapter.module(1, TargetModule::Q).expect("q1");
    assert_eq!(q1.scale, 2.0);
    assert_eq!(
        adapter.module(0, TargetModule::V).expect("v").b.dims(),
        [32, 2]
    );
    assert_eq!(adapter.module(0, TargetModule::V).expect("v").scale, 4.0);
    assert_eq!(
        adapter.module(1, TargetModule::Down).expect("d").a.dims(),
        [6, 176]
    );
    assert_eq!(
        adapter.module(0, TargetModule::Down).expect("d").a.dims(),
        [4, 176]
    );
    assert!(adapter.module(0, TargetModule::K).is_none());
    let dir = tempfile::tempdir().expect("tempdir");
    adapter.save(dir.path()).expect("save");
    let back = LoraAdapter::load(dir.path(), model.config(), model.device()).expect("reload");
    assert_eq!(
        back.module(1, TargetModule::Down).expect("d").a.dims(),
        [6, 176]
    );
    assert_eq!(back.module(0, TargetModule::Q).expect("q").scale, 0.5);

    let mut rs = LoraConfig::new(4, 8.0, &[TargetModule::Q]);
    rs.use_rslora = true;
    let a = LoraAdapter::init(rs, model.config(), 0, model.device()).expect("init");
    assert_eq!(a.module(0, TargetModule::Q).expect("q").scale, 4.0);

    // A regex target_modules string is matched against full module names.
    let mut re = LoraConfig::new(4, 8.0, &[]);
    re.target_modules =
        tributary_model::lora::TargetSpec::Regex(r".*layers\.1\..*(k|o)_proj".into());
    let a = LoraAdapter::init(re, model.config(), 0, model.device()).expect("init");
    let got: Vec<_> = a.iter().map(|(l, t, _)| (l, t)).collect();
    assert_eq!(got, vec![(1, TargetModule::K), (1, TargetModule::O)]);
}

#[test]
fn merged_checkpoint_computes_base_plus_adapter() {
    for name in MODELS {
        let (model, adapter) = load(name);
        let ids = rows(name);
        let want = model.forward(ids_tensor(&ids, model.device()), &[], Some(&adapter), None);
        let mut merged = model.clone();
        merge_into(&mut merged, &adapter).expect("merge");
        let dir = tempfile::tempdir().expect("tempdir");
        merged.save_pretrained(dir.path()).expect("save merged");
        let reloaded = CausalLm::load(dir.path(), model.device()).expect("load merged");
        assert_eq!(reloaded.config(), model.config());
        let got = reloaded.forward(ids_tensor(&ids, model.device()), &[], None, None);
        let d = max_abs_diff(&values(&got), &values(&want));
        assert!(d < 1e-4, "{name}: merged logits differ by {d}");
        if model.config().tie_word_embeddings {
            assert!(
                !TensorStore::open_checkpoint(dir.path())
                    .expect("open")
                    .contains("lm_head.weight")
            );
        }
    }
}

#[test]
fn model_types_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<CausalLm>();
    send_sync::<LoraAdapter>();
    send::<tributary_model::decoder::KvCache>();
    send::<tributary_model::train::Trainer>();
    send::<tributary_model::train::LoraGradients>();
}
