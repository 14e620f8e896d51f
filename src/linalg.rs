//! Numeric kernels shared by the evaluator, the plan executor and the statistics: the matrix
//! types and the eigenvalue routines behind the copying scores.
//!
//! It sits below every numeric stage and imports none of them, so `eval`, `plan::exec` and
//! `stats` all point down to it.
//!
//! `complex_eigenvalues()` on a matrix can loop forever (nalgebra issues #611, #764, #1291,
//! #1528): [`eigenvalues`] bounds every attempt by [`SCHUR_MAX_ITER`] and says `None` instead
//! of hanging.

use nalgebra::linalg::Schur;
use nalgebra::{Complex, DMatrix, RowDVector};

/// Every matrix of the numeric stages: f64, in TransformerLens's row layout (`x @ W`).
pub type Matrix = DMatrix<f64>;
/// A row vector: a bias or a LayerNorm weight, added to every row (position) of a `Matrix`.
pub type Row = RowDVector<f64>;

/// The iteration limit of each attempt at the Schur decomposition behind the copying scores.
pub const SCHUR_MAX_ITER: usize = 10_000;
/// How many times [`eigenvalues`] retries a stalled Schur decomposition with a looser tolerance.
pub const SCHUR_RETRIES: usize = 4;

/// The Schur decomposition of a head's d_head × d_head circuit matrix stalled in every attempt
/// (`max_iter` iterations each, see [`eigenvalues`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the eigenvalues of {circuit} of head L{layer}H{head} did not converge in {max_iter} iterations")]
pub struct NoConvergence {
    pub circuit: &'static str,
    pub layer: usize,
    pub head: usize,
    pub max_iter: usize,
}

impl NoConvergence {
    /// The error for `circuit` (`"the OV circuit"`, `"the QK circuit"`) of head `(layer, head)`.
    pub fn of(circuit: &'static str, (layer, head): (usize, usize)) -> NoConvergence {
        NoConvergence { circuit, layer, head, max_iter: SCHUR_MAX_ITER }
    }
}

/// The eigenvalues of a square matrix, read from the quasi-triangular factor of a real Schur
/// decomposition `Schur::try_new(m, eps, SCHUR_MAX_ITER)`; `None` if no attempt converged.
///
/// The deflation tolerance `eps` starts at `f64::EPSILON` and, if the QR iteration stalls, is
/// multiplied by 8 for each of up to [`SCHUR_RETRIES`] further attempts (at most `8⁴ ε ≈ 9·10⁻¹³`,
/// relative to the neighbouring diagonal entries, so a backward error of that order at worst).
/// nalgebra's iteration has no exceptional shifts: on a cluster of equal eigenvalues (64 × 64
/// identity plus low rank, say) the Hessenberg reduction leaves subdiagonal entries of a few ε
/// that a tolerance of ε never deflates, and the shifted steps make no progress — with
/// `Schur::new` that loops forever; `4 ε` already converges there.
pub fn eigenvalues(m: Matrix) -> Option<Vec<Complex<f64>>> {
    let mut eps = f64::EPSILON;
    for _ in 0..=SCHUR_RETRIES {
        if let Some(schur) = Schur::try_new(m.clone(), eps, SCHUR_MAX_ITER) {
            return Some(schur.complex_eigenvalues().iter().copied().collect());
        }
        eps *= 8.0;
    }
    None
}

/// `Σ Re λ / Σ |λ|` over the eigenvalues of `m` (the copying score); 0 if every eigenvalue is 0
/// (a head whose circuit vanishes copies nothing). `None` if the eigenvalues did not converge.
pub fn copying_score(m: Matrix) -> Option<f64> {
    let eig = eigenvalues(m)?;
    let re: f64 = eig.iter().map(|z| z.re).sum();
    let abs: f64 = eig.iter().map(|z| z.norm()).sum();
    Some(if abs == 0.0 { 0.0 } else { re / abs })
}

/// A square root `R` of a symmetric positive semi-definite matrix `g` (a Gram matrix `xᵀ x`):
/// `Rᵀ R = g` up to rounding. Upper triangular, the transposed Cholesky factor, where `g` is
/// positive definite; otherwise (a rank-deficient Gram, or one that rounding made slightly
/// indefinite) `diag(√max(λ, 0)) Vᵀ` from its symmetric eigendecomposition `V diag(λ) Vᵀ`.
/// `None` if that decomposition did not converge in [`SCHUR_MAX_ITER`] iterations. Only the
/// upper triangle of `g` is read.
pub fn gram_root(g: &Matrix) -> Option<Matrix> {
    let mut upper = g.clone();
    upper.fill_lower_triangle_with_upper_triangle();
    if let Some(cholesky) = upper.clone().cholesky() {
        return Some(cholesky.l().transpose());
    }
    let eigen = nalgebra::SymmetricEigen::try_new(upper, f64::EPSILON, SCHUR_MAX_ITER)?;
    let mut root = eigen.eigenvectors.transpose();
    for (mut row, &lambda) in root.row_iter_mut().zip(eigen.eigenvalues.iter()) {
        row *= lambda.max(0.0).sqrt();
    }
    Some(root)
}

/// A value that is not finite (NaN or ±∞) where a computation produced it: the numbers overflow
/// f64 there (or an operation on such a value made NaN), so there is no number to report. Every
/// numeric stage checks what it computes and reports this instead of printing `inf` or `NaN`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{value} arose in {at}: the computation overflows f64 there, so it has no number to report (are the weights' magnitudes what they should be?)")]
pub struct NonFinite {
    /// The value, `NaN`, `inf` or `-inf`.
    pub value: f64,
    /// Where, in words: `the attention scores of L1H0 at query position 3, key position 0`.
    pub at: String,
}

/// `Ok` if every entry of `m` is finite; else the first non-finite entry in row-major order
/// (earliest position first), located by `at(row, column)`.
pub fn finite(m: &Matrix, at: impl FnOnce(usize, usize) -> String) -> Result<(), NonFinite> {
    // The storage is column-major: one pass in storage order, then the row-major search only
    // when something was found.
    let Some(k) = m.iter().position(|x| !x.is_finite()) else { return Ok(()) };
    let (i, j) = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
        .find(|&(i, j)| !m[(i, j)].is_finite())
        .unwrap_or((k % m.nrows(), k / m.nrows()));
    Err(NonFinite { value: m[(i, j)], at: at(i, j) })
}

/// `Ok` if every value is finite; else the first non-finite one, located by `at(index)`.
pub fn finite_values(values: &[f64], at: impl FnOnce(usize) -> String) -> Result<(), NonFinite> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(NonFinite { value: values[i], at: at(i) }),
    }
}

/// `max |x|` over `values`, NaN if any value is NaN (`f64::max` would skip it: a check that
/// folds with it can say "0 error" about NaN).
pub fn max_abs<'a>(values: impl IntoIterator<Item = &'a f64>) -> f64 {
    values.into_iter().fold(0.0f64, |m, &x| if x.is_nan() || m.is_nan() { f64::NAN } else { m.max(x.abs()) })
}

#[cfg(test)]
mod tests {
    use super::{gram_root, Matrix};

    /// `Rᵀ R = xᵀ x` (the definition), for a full-rank `x` (Cholesky, `R` upper triangular) and
    /// for rank-deficient ones (a zero column, and a repeated one), where Cholesky fails and the
    /// eigendecomposition gives the root.
    #[test]
    fn a_gram_root_squares_to_the_gram() {
        let full = Matrix::from_fn(7, 3, |i, j| ((i * 5 + j * 3) % 7) as f64 - 2.5 + (i == j) as u8 as f64);
        let mut zero_column = full.clone();
        zero_column.column_mut(1).fill(0.0);
        let mut repeated = full.clone();
        let first = repeated.column(0).into_owned();
        repeated.set_column(2, &first);
        for (name, x) in [("full rank", &full), ("a zero column", &zero_column), ("a repeated column", &repeated)] {
            let g = x.transpose() * x;
            let r = gram_root(&g).expect("converges");
            let error = (r.transpose() * &r - &g).abs().max();
            assert!(error < 1e-12 * g.abs().max(), "{name}: |RᵀR − G| = {error:e}");
            assert_eq!(r.shape(), (3, 3), "{name}");
        }
        // Full rank: the Cholesky factor, upper triangular.
        let r = gram_root(&(full.transpose() * &full)).unwrap();
        assert!((0..3).all(|j| (j + 1..3).all(|i| r[(i, j)] == 0.0)), "{r}");
    }
}
