//! Malformed GGUF headers: each is an error naming the field, the byte offset and the
//! limit, never a panic, an overflow or an allocation the file does not back.

use super::*;

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn string(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s);
}

fn u32s(b: &mut Vec<u8>, xs: &[u32]) {
    xs.iter()
        .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
}

fn u64s(b: &mut Vec<u8>, xs: &[u64]) {
    xs.iter()
        .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
}

/// A file with one tensor info `t` (F32, `dims`, `offset`) followed by `data` bytes.
fn one_tensor(dims: &[u64], offset: u64, data: usize) -> Vec<u8> {
    let mut b = header(1, 0);
    string(&mut b, b"t");
    u32s(&mut b, &[dims.len() as u32]);
    u64s(&mut b, dims);
    u32s(&mut b, &[0]);
    u64s(&mut b, &[offset]);
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

fn err(bytes: Vec<u8>) -> String {
    GgufFile::parse(bytes, Path::new("x.gguf"))
        .expect_err("malformed input must be refused")
        .to_string()
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` missing from: {msg}");
    }
}

#[test]
fn a_truncated_header_names_the_field_and_offset() {
    let mut b = header(0, 0);
    b.truncate(12);
    has(
        &err(b),
        &[
            "x.gguf",
            "truncated",
            "the tensor count at byte 8",
            "8 bytes needed, 4 left",
        ],
    );
}

#[test]
fn counts_beyond_the_limit_or_the_bytes_left_are_refused_before_allocating() {
    has(
        &err(header(u64::MAX, 0)),
        &["the tensor count at byte 8", "the limit is 16777216"],
    );
    // Within MAX_COUNT, but 1000 key/values cannot fit in the 0 bytes left.
    has(
        &err(header(0, 1000)),
        &[
            "the metadata count at byte 16 is 1000",
            "0 bytes left hold at most 0",
        ],
    );
    // An array announcing 2^24 items in a 40-byte file: refused by the bytes left, before
    // a 2^24-item vector (half a GiB of values) is reserved.
    let mut b = header(0, 1);
    string(&mut b, b"k");
    u32s(&mut b, &[9, 0]);
    u64s(&mut b, &[1 << 24]);
    has(
        &err(b),
        &["array `k` at byte 41 is 16777216", "0 bytes left"],
    );
    // u64 items: 2 announced, 15 bytes left hold only one.
    let mut b = header(0, 1);
    string(&mut b, b"k");
    u32s(&mut b, &[9, 10]);
    u64s(&mut b, &[2]);
    b.extend_from_slice(&[0; 15]);
    has(
        &err(b),
        &["is 2", "15 bytes left hold at most 1 items of 8 bytes"],
    );
}

#[test]
fn strings_past_the_end_and_bad_utf8_name_the_field() {
    let mut b = header(0, 1);
    u64s(&mut b, &[u64::MAX]);
    b.extend_from_slice(&[0; 16]);
    has(
        &err(b),
        &["metadata key #0 at byte 24 is a string of 18446744073709551615 bytes, 16 left"],
    );
    let mut b = header(0, 1);
    string(&mut b, b"ok\xff");
    u32s(&mut b, &[0]);
    b.push(1);
    has(
        &err(b),
        &[
            "metadata key #0 at byte 24: string is not UTF-8",
            "byte 2 of 3",
        ],
    );
}

#[test]
fn bad_values_name_the_key() {
    let mut b = header(0, 1);
    string(&mut b, b"flag");
    u32s(&mut b, &[7]);
    b.push(7);
    has(&err(b), &["metadata `flag`", "bool byte 7"]);
    let mut b = header(0, 1);
    string(&mut b, b"deep");
    u32s(&mut b, &[9]);
    // Each array holds one array: value type, then (item type, count) per level.
    for _ in 0..5 {
        u32s(&mut b, &[9]);
        u64s(&mut b, &[1]);
    }
    b.extend_from_slice(&[0; 12]);
    has(&err(b), &["metadata `deep`", "nested too deep"]);
    let mut b = header(0, 1);
    string(&mut b, b"weird");
    u32s(&mut b, &[99]);
    has(&err(b), &["metadata `weird`", "unknown value type 99"]);
}

#[test]
fn tensor_sizes_that_overflow_are_errors_naming_the_tensor() {
    // 2^32 · 2^32 · 4 elements overflow u64.
    has(
        &err(one_tensor(&[1 << 32, 1 << 32, 4], 0, 0)),
        &["tensor `t`", "overflow a 64-bit element count"],
    );
    // 2^62 F32 elements fit u64, their 2^64 bytes do not.
    has(
        &err(one_tensor(&[1 << 31, 1 << 31], 0, 0)),
        &["tensor `t`", "overflow a byte size"],
    );
    // An offset near u64::MAX: start + size overflows.
    has(
        &err(one_tensor(&[4], u64::MAX - 31, 16)),
        &["tensor `t`", "run past the end of the file"],
    );
    let msg = err(one_tensor(&[4], 32, 16));
    has(
        &msg,
        &[
            "its 16 bytes at data offset 32 run past the end",
            "data section from byte",
        ],
    );
    has(
        &err(one_tensor(&[1; 5], 0, 4)),
        &["tensor `t`", "5 dimensions (1 to 4 allowed)"],
    );
    has(
        &err(one_tensor(&[4], 3, 16)),
        &["data offset 3 is not a multiple of the alignment 32"],
    );
}

#[test]
fn a_well_formed_tensor_reads_back() {
    let mut b = one_tensor(&[2, 2], 0, 0);
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let f = GgufFile::parse(b, Path::new("x.gguf")).expect("parses");
    let t = f.tensor("t").expect("tensor");
    assert_eq!(t.numel(), Some(4));
    assert_eq!(
        f.tensor_f32(t).expect("f32"),
        (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
    );
}
