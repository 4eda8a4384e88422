//! RoPE and grouped-query attention, as transformers computes them in float32.

use burn::tensor::{Device, Tensor, TensorData};

use super::cache::Plan;
use crate::config::ModelConfig;
use crate::fused::{
    FusedAttention, bf16_batched_matmul, causal_softmax, causal_softmax_composite, rope_heads,
};

/// RoPE's `inv_freq = 1/θ^(2i/d)` (`head_dim/2` values, in f32 as transformers computes
/// them), with the config's `rope_scaling` applied.
pub(crate) fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let mut inv_freq: Vec<f32> = (0..d / 2)
        .map(|i| 1.0f32 / base.powf((2 * i) as f32 / d as f32))
        .collect();
    cfg.rope_scaling.apply(&mut inv_freq);
    inv_freq
}

/// `cos` and `sin` tables `[b, 1, s, head_dim]` for the given RoPE positions (`b*s`,
/// row-major), computed as transformers does: `inv_freq = 1/θ^(2i/d)` in f32, angle =
/// position·inv_freq in f32, both halves of the head sharing one frequency.
pub(crate) fn rope_tables(
    positions: &[usize],
    b: usize,
    s: usize,
    cfg: &ModelConfig,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let d = cfg.head_dim;
    let (cos, sin) = rope_values(positions, cfg);
    let cos = Tensor::from_data(TensorData::new(cos, [b, 1, s, d]), device);
    let sin = Tensor::from_data(TensorData::new(sin, [b, 1, s, d]), device);
    (cos, sin)
}

/// The values of [`rope_tables`]: `cos` and `sin` `[positions, head_dim]`, row-major (each
/// row's half-width angles twice: both halves of a head share one frequency).
pub(crate) fn rope_values(positions: &[usize], cfg: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let (cos, sin) = rope_angles(positions, &inv_freq(cfg));
    let half = cfg.head_dim / 2;
    let widen = |v: Vec<f32>| -> Vec<f32> {
        v.chunks(half.max(1))
            .flat_map(|row| row.iter().chain(row).copied())
            .collect()
    };
    (widen(cos), widen(sin))
}

/// `cos` and `sin` `[positions, inv_freq.len()]` of RoPE's angles `position·inv_freq`, in
/// f32 as transformers computes them.
pub(crate) fn rope_angles(positions: &[usize], inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * inv_freq.len());
    let mut sin = Vec::with_capacity(positions.len() * inv_freq.len());
    for &p in positions {
        for &f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// The additive attention mask `[b, 1, s, past+s]`: 0 where query `t` may see key `j`
/// (`j ≤ past+t` and `j` is a real token), `f32::MIN` elsewhere.
pub(crate) fn mask(plan: &Plan, b: usize, s: usize, device: &Device) -> Tensor<4> {
    let total = plan.past + s;
    let mut m = Vec::with_capacity(b * s * total);
    for valid in &plan.key_valid {
        for t in 0..s {
            let limit = plan.past + t;
            m.extend(
                valid
                    .iter()
                    .enumerate()
                    .map(|(j, &ok)| if ok && j <= limit { 0.0f32 } else { f32::MIN }),
            );
        }
    }
    Tensor::from_data(TensorData::new(m, [b, 1, s, total]), device)
}

fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    x.clone()
        .mul(cos.clone())
        .add(rotate_half(x).mul(sin.clone()))
}

/// Self-attention for `q` `[b*s, heads*d]`, `k`/`v` `[b*s, kv_heads*d]`; appends the new
/// keys/values to `cache` when given. Returns `[b*s, heads*d]`. Under autodiff on burn-flex,
/// `fused` (the same mask as `mask` as key ranges, the same RoPE tables) lets RoPE and the
/// masked softmax run as fused ops ([`crate::fused`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    cos: &Tensor<4>,
    sin: &Tensor<4>,
    mask: &Tensor<4>,
    fused: Option<&FusedAttention>,
    cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    b: usize,
    s: usize,
    cfg: &ModelConfig,
) -> Tensor<2> {
    let (nh, kvh, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let g = nh / kvh;
    let rope = |x: Tensor<2>, heads: usize| match fused
        .and_then(|f| f.rope.as_ref())
        .and_then(|r| rope_heads(&x, r))
    {
        Some(y) => y,
        None => apply_rope(x.reshape([b, s, heads, d]).swap_dims(1, 2), cos, sin),
    };
    let v = v.reshape([b, s, kvh, d]).swap_dims(1, 2);
    let q = rope(q, nh);
    // Keys are kept transposed, [b, kv, d, T]: decoding multiplies by them with few query
    // rows, where burn is much faster on a contiguous right-hand side than on a view.
    let mut kt = rope(k, kvh).swap_dims(2, 3);
    let mut v = v;
    if let Some(slot) = cache {
        if let Some((pkt, pv)) = slot.take() {
            kt = Tensor::cat(vec![pkt, kt], 3);
            v = Tensor::cat(vec![pv, v], 2);
        }
        *slot = Some((kt.clone(), v.clone()));
    }
    let total = kt.dims()[3];
    let scale = (d as f64).powf(-0.5);
    // Query heads h = kv·g + j share key/value head kv: fold the group into the rows.
    let qg = q.reshape([b, kvh, g * s, d]);
    // A bf16 trainer multiplies in bf16 (f32 sums), the rest in f32 through burn.
    let matmul = |x: Tensor<4>, y: Tensor<4>| match fused
        .filter(|f| f.bf16_products)
        .and_then(|_| bf16_batched_matmul(&x, &y))
    {
        Some(product) => product,
        None => x.matmul(y),
    };
    let scores = matmul(qg, kt).reshape([b, nh, s, total]);
    let probs = match fused
        .and_then(|f| f.mask.as_ref())
        .and_then(|m| causal_softmax(&scores, scale, m))
    {
        Some(p) => p,
        None => causal_softmax_composite(scores, scale, mask),
    };
    let probs = probs.reshape([b, kvh, g * s, total]);
    let out = matmul(probs, v).reshape([b, nh, s, d]);
    out.swap_dims(1, 2).reshape([b * s, nh * d])
}
