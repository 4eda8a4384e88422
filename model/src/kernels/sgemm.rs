//! A safe front for the `gemm` crate's f32 product (the GEMM burn-flex itself calls), for
//! fused training ops that multiply host buffers with strides (transposes for free) and
//! accumulate into an existing output, without burn's zero-filled output tensors.

use gemm::Parallelism;

/// A strided view of an f32 matrix: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// `data` as a row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "MatRef: data is not [{rows}, {cols}]"
        );
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (the same values, strides swapped).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `dst = scale·lhs·rhs` (or `dst += scale·lhs·rhs` with `accumulate`), `dst` row-major
/// `[lhs.rows, rhs.cols]`, on rayon's pool.
pub fn sgemm(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>, accumulate: bool, scale: f32) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(
        rhs.rows, k,
        "sgemm: lhs is [{m}, {k}], rhs has {} rows",
        rhs.rows
    );
    assert_eq!(dst.len(), m * n, "sgemm: dst is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // The last element each view reaches lies inside its slice.
    let last = |v: &MatRef<'_>| (v.rows - 1) * v.row_stride + (v.cols - 1) * v.col_stride;
    assert!(last(&lhs) < lhs.data.len() && last(&rhs) < rhs.data.len());
    let stride = |s: usize| isize::try_from(s).unwrap_or(isize::MAX);
    // SAFETY: every index the product reads or writes is inside its slice (asserted above:
    // the views' extents and dst's length); `dst` does not alias the inputs (&mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            scale,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}
