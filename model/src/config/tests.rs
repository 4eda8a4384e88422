//! Unit tests of config parsing: both transformers layouts, eos lists, RoPE scaling, refusals.

use super::*;

#[test]
fn rope_theta_in_both_layouts_and_eos_list() {
    let v4 = serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 8, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 1e6,
        "eos_token_id": [2, 3]});
    let c = ModelConfig::from_json_value(&v4, "t").expect("parse 4.x");
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.eos_token_ids, vec![2, 3]);
    assert_eq!(c.head_dim, 4);
    let v5 = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}, "eos_token_id": 2});
    let c = ModelConfig::from_json_value(&v5, "t").expect("parse 5.x");
    assert_eq!(c.rope_theta, 500.0);
    assert_eq!(c.eos_token_ids, vec![2]);
    let back = ModelConfig::from_json_value(&c.to_json_value(), "t").expect("round trip");
    assert_eq!(back, c);
}

#[test]
fn rope_scaling_llama3_and_refusals() {
    let v = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
    let c = ModelConfig::from_json_value(&v, "t").expect("llama3 parses");
    assert!(matches!(
        c.rope_scaling,
        RopeScaling::Llama3 { factor: 8.0, .. }
    ));
    let back = ModelConfig::from_json_value(&c.to_json_value(), "t").expect("round trip");
    assert_eq!(back, c);
    // High frequencies unchanged, low frequencies divided by the factor.
    let mut f = vec![1.0f32, 1e-5];
    c.rope_scaling.apply(&mut f);
    assert_eq!(f[0], 1.0);
    assert!((f[1] - 1.25e-6).abs() < 1e-12);
    let mut bad = v.clone();
    bad["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    let e = ModelConfig::from_json_value(&bad, "t").expect_err("yarn refused");
    assert!(e.to_string().contains("yarn"));
}

#[test]
fn unsupported_architecture_is_named() {
    let v = serde_json::json!({"architectures": ["GPT2LMHeadModel"]});
    let e = ModelConfig::from_json_value(&v, "t").expect_err("must fail");
    assert!(e.to_string().contains("GPT2LMHeadModel"));
}

#[test]
fn sizes_beyond_the_limits_name_the_field() {
    let base = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 8,
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2});
    for (field, value, limit) in [
        ("vocab_size", 1u64 << 40, MAX_DIM),
        ("intermediate_size", u64::MAX, MAX_DIM),
        ("num_hidden_layers", 1 << 20, MAX_LAYERS),
        ("head_dim", 1 << 23, MAX_DIM),
    ] {
        let mut v = base.clone();
        v[field] = serde_json::json!(value);
        let err = ModelConfig::from_json_value(&v, "config.json").expect_err(field);
        let msg = err.to_string();
        assert!(msg.contains(&format!("field `{field}`")), "{msg}");
        assert!(msg.contains(&format!("limit {limit}")), "{msg}");
    }
}
