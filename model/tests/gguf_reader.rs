//! The GGUF reader and dequantizers against the reference implementation: `dequant.gguf`
//! (written by `scripts/gguf/make_test_data.py` with the `gguf` Python package) holds, for
//! every supported type, a tensor in that type and the values `gguf.quants.dequantize`
//! gives for it; plus metadata of every value type and a non-default alignment.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::path::PathBuf;

use tributary_model::gguf::{GgufError, GgufFile, Value, dequant::GgmlType};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf")
        .join(name)
}

#[test]
fn every_supported_type_dequantizes_as_the_reference() {
    let f = GgufFile::open(&data("dequant.gguf")).expect("open");
    let types = [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K",
    ];
    for name in types {
        let info = f.tensor(name).unwrap_or_else(|| panic!("{name} in file"));
        let ty = f.ggml_type(info).expect("supported");
        assert_eq!(ty.name(), name);
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        let (shape, got) = f.tensor_f32(info).expect("dequantize");
        let want_info = f.tensor(&format!("{name}.expected")).expect("expected");
        let (want_shape, want) = f.tensor_f32(want_info).expect("expected values");
        assert_eq!(shape, vec![4, 512], "{name} shape");
        assert_eq!(shape, want_shape, "{name}");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{name}: max |diff| {diff:e} (max |value| {scale})");
        assert!(scale > 0.0, "{name}: all zeros would prove nothing");
        assert!(
            diff <= scale * 1e-6,
            "{name}: max |diff| {diff} > 1e-6 × {scale}"
        );
    }
}

#[test]
fn metadata_of_every_type_and_the_alignment_are_read() {
    let f = GgufFile::open(&data("dequant.gguf")).expect("open");
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert!(f.tensors.iter().all(|t| t.offset % 64 == 0));
    let get = |k: &str| f.get(k).unwrap_or_else(|| panic!("{k}")).clone();
    assert_eq!(get("general.architecture"), Value::String("test".into()));
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.u64"), Value::U64((1 << 40) + 7));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 40) - 7));
    assert_eq!(get("test.f32"), Value::F32(1.5));
    assert_eq!(get("test.f64"), Value::F64(-2.25));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string"), Value::String("héllo 🦀".into()));
    let arr = get("test.array");
    let items: Vec<&str> = arr
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect();
    assert_eq!(items, ["a", "bc", ""]);
    let ints: Vec<u64> = get("test.ints")
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("int"))
        .collect();
    assert_eq!(ints, [1, 2, 3]);
}

#[test]
fn version_2_is_read_and_version_1_refused() {
    let bytes = std::fs::read(data("dequant.gguf")).expect("read");
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::parse(v2, &data("v2.gguf")).expect("v2 parses");
    assert_eq!(f.version, 2);
    assert_eq!(f.tensors.len(), 18);
    let mut v1 = bytes;
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = GgufFile::parse(v1, &data("v1.gguf")).expect_err("v1 refused");
    assert!(err.to_string().contains("version 1"), "{err}");
}

#[test]
fn corrupt_files_are_clear_errors() {
    let bytes = std::fs::read(data("dequant.gguf")).expect("read");
    // Truncated inside the data section: the last tensor runs past the end.
    let cut = bytes[..bytes.len() - 100].to_vec();
    let err = GgufFile::parse(cut, &data("cut.gguf")).expect_err("truncated");
    assert!(matches!(err, GgufError::Tensor { .. }), "{err}");
    assert!(err.to_string().contains("past the end"), "{err}");
    // Truncated inside the header.
    let err = GgufFile::parse(bytes[..40].to_vec(), &data("head.gguf")).expect_err("header");
    assert!(err.to_string().contains("truncated"), "{err}");
    let mut bad = bytes;
    bad[0] = b'X';
    let err = GgufFile::parse(bad, &data("magic.gguf")).expect_err("magic");
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn an_unsupported_type_names_the_tensor_and_the_type() {
    let f = GgufFile::open(&data("unsupported.gguf")).expect("header parses");
    let info = f.tensor("blk.0.attn_q.weight").expect("tensor");
    let err = f.tensor_f32(info).expect_err("Q5_0 is not read");
    let msg = err.to_string();
    assert!(msg.contains("blk.0.attn_q.weight"), "{msg}");
    assert!(msg.contains("Q5_0"), "{msg}");
    // Loading it as a model names the architecture first.
    let err = tributary_model::gguf::mapping::load(&data("unsupported.gguf")).expect_err("arch");
    assert!(err.to_string().contains("architecture `test`"), "{err}");
}
