//! A safe front for the `gemm` crate's f32 product (the GEMM burn-flex itself calls), for
//! fused training ops that multiply host buffers with strides (transposes for free) and
//! accumulate into an existing output, without burn's zero-filled output tensors. Its
//! strided view ([`MatRef`]) is also what the bf16 GEMM packs from
//! ([`super::bf16_gemm::gemm_view_into`]).
// Views are checked once at construction, then indexed in packing loops (the exception
// issue 12 allows for kernels).
#![allow(clippy::indexing_slicing)]

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

    /// `data` read with explicit strides (element `(i, j)` at `i·row_stride + j·col_stride`);
    /// `None` when an element of the view would lie outside `data`.
    pub fn strided(
        data: &'a [f32],
        [rows, cols]: [usize; 2],
        [row_stride, col_stride]: [usize; 2],
    ) -> Option<Self> {
        let view = Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        };
        let inside = rows == 0 || cols == 0 || view.last_index() < data.len();
        inside.then_some(view)
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Row `i` as one slice, where the view's rows are contiguous (column stride 1).
    pub fn row(&self, i: usize) -> Option<&'a [f32]> {
        if self.col_stride != 1 || i >= self.rows {
            return None;
        }
        self.data
            .get(i * self.row_stride..i * self.row_stride + self.cols)
    }

    /// Column `j` as one slice, where the view's columns are contiguous (row stride 1, a
    /// transposed matrix).
    pub fn col(&self, j: usize) -> Option<&'a [f32]> {
        if self.row_stride != 1 || j >= self.cols {
            return None;
        }
        self.data
            .get(j * self.col_stride..j * self.col_stride + self.rows)
    }

    /// Element `(i, j)` (inside the view: checked at construction).
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }

    /// The index of the view's last element in `data`.
    fn last_index(&self) -> usize {
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
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
    assert!(lhs.last_index() < lhs.data.len() && rhs.last_index() < rhs.data.len());
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
