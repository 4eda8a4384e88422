//! Fixed-order gradient reduction: micro-batch gradients are summed in micro-batch index
//! order, whatever order they arrived in and whichever worker computed them, so the update
//! is bit-identical for any number of workers.

/// One micro-batch's contribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub index: u32,
    /// Summed loss over the micro-batch.
    pub loss_sum: f64,
    pub tokens: u64,
    /// Gradient of the summed loss.
    pub grads: Vec<f32>,
}

/// The reduced step.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    /// Sum of the micro-batch gradients, in index order.
    pub grads: Vec<f32>,
    /// Mean loss per token over the step.
    pub loss: f32,
    pub tokens: u64,
}

/// Why a set of contributions cannot be reduced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReduceError {
    #[error("micro-batch {0} is missing")]
    Missing(u32),
    #[error("micro-batch {0} was contributed twice")]
    Duplicate(u32),
    #[error("micro-batch {index} has {len} gradient values, expected {expected}")]
    Length {
        index: u32,
        len: usize,
        expected: usize,
    },
    #[error("nothing to reduce")]
    Empty,
}

/// Reduces exactly the micro-batches `0..expected`, in index order.
pub fn reduce_in_order(
    mut parts: Vec<Contribution>,
    expected: u32,
) -> Result<Reduced, ReduceError> {
    if expected == 0 {
        return Err(ReduceError::Empty);
    }
    parts.sort_by_key(|c| c.index);
    for (i, c) in parts.iter().enumerate() {
        if i > 0 && parts[i - 1].index == c.index {
            return Err(ReduceError::Duplicate(c.index));
        }
    }
    for i in 0..expected {
        if parts.get(i as usize).map(|c| c.index) != Some(i) {
            return Err(ReduceError::Missing(i));
        }
    }
    if let Some(extra) = parts.get(expected as usize) {
        return Err(ReduceError::Duplicate(extra.index));
    }
    let len = parts[0].grads.len();
    let mut grads = vec![0f32; len];
    let mut loss = 0f64;
    let mut tokens = 0u64;
    for c in &parts {
        if c.grads.len() != len {
            return Err(ReduceError::Length {
                index: c.index,
                len: c.grads.len(),
                expected: len,
            });
        }
        for (acc, g) in grads.iter_mut().zip(&c.grads) {
            *acc += g;
        }
        loss += c.loss_sum;
        tokens += c.tokens;
    }
    Ok(Reduced {
        grads,
        loss: if tokens > 0 {
            (loss / tokens as f64) as f32
        } else {
            0.0
        },
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<Contribution> {
        // Values chosen so float addition order matters.
        let vals = [1e8f32, 1.0, -1e8, 3.5e-3, 7.25, -2.0];
        vals.iter()
            .enumerate()
            .map(|(i, v)| Contribution {
                index: i as u32,
                loss_sum: f64::from(*v),
                tokens: i as u64,
                grads: vec![*v, v * 0.5, 1.0 / (1.0 + v.abs())],
            })
            .collect()
    }

    #[test]
    fn result_is_independent_of_arrival_order() {
        let want = reduce_in_order(parts(), 6).unwrap();
        let mut p = parts();
        p.reverse();
        assert_eq!(reduce_in_order(p.clone(), 6).unwrap(), want);
        p.swap(1, 4);
        p.swap(0, 2);
        let got = reduce_in_order(p, 6).unwrap();
        for (a, b) in got.grads.iter().zip(&want.grads) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(want.tokens, 15);
        // Arrival order would have mattered for a naive sum: the fixed order is not a no-op.
        let naive: f32 = [-2.0f32, 7.25, 3.5e-3, -1e8, 1.0, 1e8].iter().sum();
        let ordered: f32 = [1e8f32, 1.0, -1e8, 3.5e-3, 7.25, -2.0].iter().sum();
        assert_ne!(naive.to_bits(), ordered.to_bits());
    }

    #[test]
    fn incomplete_or_inconsistent_input_is_an_error() {
        let mut p = parts();
        p.remove(2);
        assert_eq!(reduce_in_order(p, 6), Err(ReduceError::Missing(2)));
        let mut p = parts();
        p.push(p[1].clone());
        assert_eq!(reduce_in_order(p, 6), Err(ReduceError::Duplicate(1)));
        let mut p = parts();
        p[3].grads.pop();
        assert!(matches!(
            reduce_in_order(p, 6),
            Err(ReduceError::Length { index: 3, .. })
        ));
        assert_eq!(reduce_in_order(vec![], 0), Err(ReduceError::Empty));
    }
}
