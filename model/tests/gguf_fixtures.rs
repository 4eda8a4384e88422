//! GGUF files made from the reference fixtures as llama.cpp's converter makes them
//! (`scripts/gguf/make_test_data.py`: Q/K rows permuted for `llama`, byte-level BPE
//! vocabulary, chat template) load into the same model: the fixture's reference logits,
//! the fixture tokenizer's ids, the same chat rendering, and the same canonical base digest
//! as the fixture directory and as the directory `import` writes.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::path::PathBuf;

use common::*;
use tributary_model::decoder::CausalLm;
use tributary_model::gguf::import::{ImportDtype, import};
use tributary_model::source::{base_model_digest, open_checkpoint};
use tributary_model::tokenizer::{ChatMessage, Tokenizer};

fn gguf(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf")
        .join(format!("{name}.gguf"))
}

fn assert_reference_logits(model: &CausalLm, name: &str, what: &str) {
    let reference = reference(name);
    let rows = input_rows(name);
    let logits = model.forward(ids_tensor(&rows, model.device()), &[], None, None);
    let (shape, want) = reference.get_f32("base_logits").expect("base_logits");
    assert_eq!(logits.dims().to_vec(), shape, "{name} {what} shape");
    let diff = max_abs_diff(&values(&logits), &want);
    eprintln!("{name} {what}: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "{name} {what}: max abs diff {diff} > 1e-4");
}

#[test]
fn converted_fixtures_give_the_reference_logits() {
    for name in MODELS {
        let dev = device();
        let model = CausalLm::load(&gguf(name), &dev).expect("load gguf");
        let dir_cfg = CausalLm::load(&model_dir(name), &dev).expect("load dir");
        let (a, b) = (model.config(), dir_cfg.config());
        assert_eq!(a.num_attention_heads, b.num_attention_heads, "{name}");
        assert_eq!(a.num_key_value_heads, b.num_key_value_heads, "{name}");
        assert_eq!(a.head_dim, b.head_dim, "{name}");
        assert_eq!(a.rope_theta, b.rope_theta, "{name}");
        assert_eq!(a.tie_word_embeddings, b.tie_word_embeddings, "{name}");
        assert_eq!(a.attention_bias, b.attention_bias, "{name}");
        assert_eq!(
            a.max_position_embeddings, b.max_position_embeddings,
            "{name}"
        );
        assert!((a.rms_norm_eps - b.rms_norm_eps).abs() < 1e-9, "{name}");
        assert_eq!(a.eos_token_ids, b.eos_token_ids, "{name}");
        assert_reference_logits(&model, name, "gguf");
        // NF4 loading goes through the same path.
        let nf4 = CausalLm::load_nf4(&gguf(name), &dev).expect("load gguf nf4");
        assert!(nf4.linear_weight_bytes() < model.linear_weight_bytes() / 4);
    }
}

#[test]
fn without_undoing_the_permutation_the_logits_would_differ() {
    // The converter's permutation is real in these files: q_proj as stored differs from
    // the fixture's q_proj, and equals it once un-permuted (what the loader does).
    let file = tributary_model::gguf::GgufFile::open(&gguf("tiny-llama")).expect("open");
    let info = file.tensor("blk.0.attn_q.weight").expect("q");
    let (shape, stored) = file.tensor_f32(info).expect("values");
    let fixture = tributary_model::weights::TensorStore::open_checkpoint(&model_dir("tiny-llama"))
        .expect("fixture");
    let (_, want) = fixture
        .get_f32("model.layers.0.self_attn.q_proj.weight")
        .expect("q_proj");
    assert!(
        max_abs_diff(&stored, &want) > 1e-3,
        "stored rows are permuted"
    );
    let fixed = tributary_model::gguf::mapping::unpermute_rows(&stored, shape[0], shape[1], 4);
    assert_eq!(fixed, want);
}

#[test]
fn quantized_q8_0_file_dequantizes_as_the_reference() {
    let path = gguf("tiny-llama-q8_0");
    let ckpt = open_checkpoint(&path).expect("open q8_0");
    let expected = tributary_model::weights::TensorStore::open_file(
        &path.with_file_name("tiny-llama-q8_0.expected.safetensors"),
    )
    .expect("expected");
    for name in expected.names() {
        let (shape, want) = expected.get_f32(&name).expect("expected tensor");
        let (got_shape, got) = ckpt.store.get_f32(&name).expect("loaded tensor");
        assert_eq!(got_shape, shape, "{name}");
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-7, "{name}: {diff}");
    }
    // Q8_0 is close to the f32 model: the reference logits hold to a looser bound.
    let model = CausalLm::load(&path, &device()).expect("load");
    let logits = model.forward(
        ids_tensor(&input_rows("tiny-llama"), model.device()),
        &[],
        None,
        None,
    );
    let (_, want) = reference("tiny-llama")
        .get_f32("base_logits")
        .expect("logits");
    let diff = max_abs_diff(&values(&logits), &want);
    eprintln!("tiny-llama q8_0: max abs diff {diff:e}");
    assert!(diff > 1e-6 && diff < 5e-2, "q8_0 logits diff {diff}");
}

#[test]
fn gguf_tokenizer_matches_the_fixture_tokenizer_and_template() {
    for name in MODELS {
        let from_gguf = Tokenizer::from_dir(&gguf(name)).expect("gguf tokenizer");
        let fixture = Tokenizer::from_dir(&model_dir(name)).expect("fixture tokenizer");
        let text =
            std::fs::read_to_string(model_dir(name).join("tokenizer_cases.json")).expect("cases");
        let cases: serde_json::Value = serde_json::from_str(&text).expect("json");
        for case in cases["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            let want: Vec<u32> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            assert_eq!(
                from_gguf.encode(text).expect("encode"),
                want,
                "{name} {text:?}"
            );
            assert_eq!(from_gguf.decode(&want, false).expect("decode"), text);
        }
        let chat = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi <|im_end|> there"),
        ];
        assert_eq!(
            from_gguf.render_chat(&chat, true).expect("render"),
            fixture.render_chat(&chat, true).expect("render")
        );
        assert_eq!(
            from_gguf.encode_chat(&chat, true).expect("ids"),
            fixture.encode_chat(&chat, true).expect("ids")
        );
        assert_eq!(from_gguf.eos_token_id(), fixture.eos_token_id(), "{name}");
        assert_eq!(from_gguf.pad_token_id(), fixture.pad_token_id(), "{name}");
    }
}

#[test]
fn import_writes_a_directory_with_the_same_base_digest_and_logits() {
    let tmp = tempfile::tempdir().expect("tmp");
    for name in MODELS {
        let out = tmp.path().join(name);
        let report = import(&gguf(name), &out, ImportDtype::F32).expect("import");
        assert_eq!(report.out, out);
        for f in [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(f).is_file(), "{name}: {f}");
        }
        let from_file = base_model_digest(&gguf(name)).expect("gguf digest");
        let from_dir = base_model_digest(&out).expect("dir digest");
        let fixture = base_model_digest(&model_dir(name)).expect("fixture digest");
        assert_eq!(
            from_file, from_dir,
            "{name}: gguf and its import name one base"
        );
        assert_eq!(
            from_file, fixture,
            "{name}: and the fixture it was made from"
        );
        let model = CausalLm::load(&out, &device()).expect("load import");
        assert_reference_logits(&model, name, "imported dir");
        let tok = Tokenizer::from_dir(&out).expect("imported tokenizer");
        assert!(
            tok.has_chat_template(),
            "{name}: template in tokenizer_config.json"
        );
        // A second import into an existing directory is refused, leaving it untouched.
        let err = import(&gguf(name), &out, ImportDtype::F32).expect_err("exists");
        assert!(err.to_string().contains("already exists"), "{err}");
        // bf16 is a different base (rounded values), with its own digest.
        let bf = tmp.path().join(format!("{name}-bf16"));
        import(&gguf(name), &bf, ImportDtype::Bf16).expect("bf16 import");
        assert_ne!(base_model_digest(&bf).expect("bf16 digest"), from_file);
        assert!(
            std::fs::metadata(bf.join("model.safetensors"))
                .expect("bf16")
                .len()
                < std::fs::metadata(out.join("model.safetensors"))
                    .expect("f32")
                    .len()
                    * 6
                    / 10
        );
    }
    let q8 = base_model_digest(&gguf("tiny-llama-q8_0")).expect("q8 digest");
    assert_ne!(
        q8,
        base_model_digest(&gguf("tiny-llama")).expect("f32 digest")
    );
}

#[test]
fn lora_adapter_exports_in_llama_cpps_layout() {
    use tributary_model::gguf::mapping::permute_rows;
    use tributary_model::lora::LoraAdapter;
    let dev = device();
    let model = CausalLm::load(&gguf("tiny-llama"), &dev).expect("load");
    let cfg = model.config().clone();
    let adapter =
        LoraAdapter::load(&model_dir("tiny-llama").join("adapter"), &cfg, &dev).expect("adapter");
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("lora.gguf");
    let n = tributary_model::gguf::lora_export::export_lora(&adapter, &cfg, &path).expect("export");
    assert_eq!(n, 2 * 7 * cfg.num_hidden_layers);
    let file = tributary_model::gguf::GgufFile::open(&path).expect("reads back");
    let s = |k: &str| file.get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(s("general.architecture").as_deref(), Some("llama"));
    assert_eq!(s("general.type").as_deref(), Some("adapter"));
    assert_eq!(s("adapter.type").as_deref(), Some("lora"));
    let alpha = file.get("adapter.lora.alpha").and_then(|v| v.as_f64());
    assert_eq!(alpha, Some(8.0));
    let peft = tributary_model::weights::TensorStore::open_file(
        &model_dir("tiny-llama").join("adapter/adapter_model.safetensors"),
    )
    .expect("peft file");
    for (gguf_name, peft_name, heads) in [
        ("blk.1.attn_q.weight", "self_attn.q_proj", Some(4)),
        ("blk.1.attn_k.weight", "self_attn.k_proj", Some(2)),
        ("blk.0.ffn_down.weight", "mlp.down_proj", None),
    ] {
        let layer = &gguf_name[4..5];
        let key = |ab: &str| {
            format!("base_model.model.model.layers.{layer}.{peft_name}.lora_{ab}.weight")
        };
        let (a_shape, a) = peft.get_f32(&key("A")).expect("A");
        let (b_shape, b) = peft.get_f32(&key("B")).expect("B");
        let ga = file.tensor(&format!("{gguf_name}.lora_a")).expect("lora_a");
        let gb = file.tensor(&format!("{gguf_name}.lora_b")).expect("lora_b");
        // ggml lists dimensions fastest first: A is ne [in, r], B is ne [r, out].
        assert_eq!(ga.dims, vec![a_shape[1] as u64, a_shape[0] as u64]);
        assert_eq!(gb.dims, vec![b_shape[1] as u64, b_shape[0] as u64]);
        assert_eq!(file.tensor_f32(ga).expect("a").1, a);
        let want_b = match heads {
            Some(h) => permute_rows(&b, b_shape[0], b_shape[1], h),
            None => b,
        };
        assert_eq!(file.tensor_f32(gb).expect("b").1, want_b, "{gguf_name}");
    }
}
