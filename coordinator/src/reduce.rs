//! Fixed-order gradient reduction: micro-batch gradients are summed in micro-batch index
//! order, whatever order they arrived in and whichever worker computed them, so the update
//! is bit-identical for any number of workers. The function is the training driver's
//! (`tributary_model::train::driver`), the one the CLI's single-process step also uses.

pub use tributary_model::train::driver::{Contribution, ReduceError, Reduced, reduce_in_order};

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
