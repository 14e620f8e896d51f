//! Numeric kernels shared by the evaluator, the plan executor and the statistics: the matrix
//! types and the eigenvalue routines behind the copying scores.
//!
//! It sits below every numeric stage and imports none of them, so `eval`, `plan::exec` and
//! `stats` all point down to it.
//!
//! nalgebra's `complex_eigenvalues()` on a matrix can loop forever (nalgebra issues #611, #764,
//! #1291, #1528): [`eigenvalues`] is a QR iteration of its own, bounded by [`SCHUR_MAX_ITER`],
//! that says `None` instead of hanging.

use nalgebra::{Complex, DMatrix, RowDVector};

/// Every matrix of the numeric stages: f64, in TransformerLens's row layout (`x @ W`).
pub type Matrix = DMatrix<f64>;
/// A row vector: a bias or a LayerNorm weight, added to every row (position) of a `Matrix`.
pub type Row = RowDVector<f64>;

/// The `rows × cols` matrix whose row-major entries are `data` (a safetensors or a `torch.save`
/// tensor's layout) in nalgebra's column-major storage: a transposing copy in square tiles, so
/// that both the reads and the writes of a tile stay in cache. nalgebra's `from_row_slice` does
/// the same entry by entry through an iterator, several times slower on weight-sized matrices
/// (it was 4 % of `pathc stats` on GPT-2 small).
/// `data` may be `f32` (a tensor read as stored, [`crate::weights::Weights::read_f32`]): each
/// entry is widened as it is copied, exactly.
pub fn from_row_major<T: Copy + Into<f64>>(rows: usize, cols: usize, data: &[T]) -> Matrix {
    Matrix::from_vec(rows, cols, column_major(rows, cols, data, T::into))
}

/// The column-major storage of the `rows × cols` matrix whose row-major entries are `data`,
/// each converted by `into` ([`from_row_major`]'s tiled copy).
fn column_major<S: Copy, T: Copy + Default>(rows: usize, cols: usize, data: &[S], into: impl Fn(S) -> T) -> Vec<T> {
    const TILE: usize = 32;
    assert_eq!(data.len(), rows * cols, "a {rows}×{cols} matrix from {} entries", data.len());
    let mut out = vec![T::default(); rows * cols];
    if rows % 8 == 0 && cols % 8 == 0 && rows * cols >= 1 << 16 {
        // Large matrices 8 × 8 blocks at a time, through a block on the stack: 8 rows of 8
        // contiguous entries read, 8 columns of 8 written. A 32 × 32 tile's 32 rows, when
        // `cols` is a multiple of 1,024 entries (`W_U`'s chunks), fall in one set of the L1
        // cache, which holds 8 of them: 2.2× slower on a 768 × 1,024 chunk.
        for i0 in (0..rows).step_by(8) {
            for j0 in (0..cols).step_by(8) {
                let mut block = [[T::default(); 8]; 8];
                for (a, row) in data[i0 * cols + j0..].chunks(cols).take(8).enumerate() {
                    for (b, &x) in row[..8].iter().enumerate() {
                        block[b][a] = into(x);
                    }
                }
                for (b, column) in block.iter().enumerate() {
                    out[(j0 + b) * rows + i0..][..8].copy_from_slice(column);
                }
            }
        }
        return out;
    }
    for j0 in (0..cols).step_by(TILE) {
        let j1 = cols.min(j0 + TILE);
        for i0 in (0..rows).step_by(TILE) {
            let i1 = rows.min(i0 + TILE);
            for j in j0..j1 {
                let column = &mut out[j * rows + i0..j * rows + i1];
                for (x, i) in column.iter_mut().zip(i0..i1) {
                    *x = into(data[i * cols + j]);
                }
            }
        }
    }
    out
}

/// `m`ᵀ by the tiled copy of [`from_row_major`] (`m`'s column-major storage is `m`ᵀ's row-major
/// one); nalgebra's `transpose` goes entry by entry.
pub fn transposed<T: nalgebra::Scalar + Copy + Default>(m: &nalgebra::DMatrix<T>) -> nalgebra::DMatrix<T> {
    nalgebra::DMatrix::from_vec(m.ncols(), m.nrows(), column_major(m.ncols(), m.nrows(), m.as_slice(), |x| x))
}

/// The iteration limit of the QR iteration behind the copying scores ([`eigenvalues`]: double
/// steps, in all), and of the symmetric eigendecomposition behind a rank-deficient [`gram_root`].
pub const SCHUR_MAX_ITER: usize = 10_000;

/// The QR iteration on a head's d_head × d_head circuit matrix did not converge in `max_iter`
/// iterations ([`eigenvalues`]).
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

/// The eigenvalues of a square matrix, in no particular order; `None` if the QR iteration did
/// not converge in [`SCHUR_MAX_ITER`] iterations.
///
/// nalgebra's Hessenberg reduction (Householder, its `Q` never formed), then the Francis
/// double-shift QR iteration on the Hessenberg matrix alone (`hqr` below). Written here because
/// nalgebra has no bounded routine for the eigenvalues alone: its `Schur::try_new` also
/// accumulates the Schur vectors, which the copying scores never read (about 1.5× the work), and
/// its `eigenvalues()` / `complex_eigenvalues()`, which skip them, have no iteration limit and
/// loop forever on some matrices (nalgebra issues #611, #764, #1291, #1528; a 64 × 64 identity
/// plus low rank is one: its iteration has no exceptional shifts, which `hqr` has). The matrix
/// is divided by a power of two first, and the eigenvalues multiplied back ([`copying_score`]
/// does without: its ratio does not change).
pub fn eigenvalues(m: Matrix) -> Option<Vec<Complex<f64>>> {
    let (eig, scale) = scaled_eigenvalues(m)?;
    Some(eig.into_iter().map(|z| z * scale).collect())
}

/// The eigenvalues of `m / scale` and `scale`, the power of two at or above `m`'s largest
/// magnitude ([`power_of_two_above`]): dividing by it is exact and keeps every square and product
/// of the iteration inside f64's range (a finite `m` of entries near 1e200 has finite eigenvalues,
/// which an unscaled iteration would lose to overflow).
fn scaled_eigenvalues(mut m: Matrix) -> Option<(Vec<Complex<f64>>, f64)> {
    let n = m.nrows();
    assert_eq!(n, m.ncols(), "eigenvalues of a non-square matrix");
    if n == 0 {
        return Some((Vec::new(), 1.0));
    }
    let scale = power_of_two_above(largest_magnitude(m.as_slice()));
    m /= scale;
    let h = nalgebra::linalg::Hessenberg::new(m).h();
    let mut rows: Vec<f64> = h.transpose().as_slice().to_vec();
    Some((hqr(&mut rows, n, SCHUR_MAX_ITER)?, scale))
}

/// The largest magnitude in `values`, NaN skipped (0 for none; [`max_abs`] says NaN instead), as a fold through `max` gives
/// it, but in eight independent lanes of `if |x| > lane`, which the compiler vectorises (the fold
/// it does not, for `max`'s NaN rule): it was 2 % of `pathc stats` on GPT-2 small.
pub fn largest_magnitude<T: num_traits::Float>(values: &[T]) -> T {
    let larger = |m: T, x: T| if x.abs() > m { x.abs() } else { m };
    let mut lanes = [T::zero(); 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = larger(*lane, x);
        }
    }
    lanes.into_iter().fold(chunks.remainder().iter().fold(T::zero(), |m, &x| larger(m, x)), larger)
}

/// The power of two at or above `largest` (1 for 0 or a non-finite one), clamped to `2^±1000`.
pub fn power_of_two_above(largest: f64) -> f64 {
    if largest > 0.0 && largest.is_finite() {
        2f64.powi((largest.log2().ceil() as i32).clamp(-1000, 1000))
    } else {
        1.0
    }
}

/// The eigenvalues of the upper Hessenberg matrix `a` (`n × n`, row-major; destroyed), by the
/// Francis double-shift QR iteration: EISPACK's `hqr` (Martin, Peters & Wilkinson, Numer. Math.
/// 14, 1970), as transcribed in Numerical Recipes in C (2nd ed., §11.6), here with 1-based
/// indices as there (`at(i, j)`), an exceptional shift after every 10 iterations without a
/// deflation (there: after 10 and 20), and a limit of `max_iter` iterations in all instead of an
/// error after 30. A deflation is a subdiagonal entry negligible next to its diagonal neighbours
/// (`|a(l, l−1)| + s == s`); each root of a deflated 1 × 1 or 2 × 2 block is read off directly.
fn hqr(a: &mut [f64], n: usize, max_iter: usize) -> Option<Vec<Complex<f64>>> {
    let at = |i: usize, j: usize| (i - 1) * n + (j - 1);
    let mut wr = vec![0.0; n + 1];
    let mut wi = vec![0.0; n + 1];
    let mut anorm = 0.0;
    for i in 1..=n {
        for j in i.saturating_sub(1).max(1)..=n {
            anorm += a[at(i, j)].abs();
        }
    }
    let (mut nn, mut t, mut iterations) = (n, 0.0, 0);
    while nn >= 1 {
        let mut its = 0;
        loop {
            // The last negligible subdiagonal entry at or above row nn: the active block is l..nn.
            let mut l = nn;
            while l >= 2 {
                let mut s = a[at(l - 1, l - 1)].abs() + a[at(l, l)].abs();
                if s == 0.0 {
                    s = anorm;
                }
                if a[at(l, l - 1)].abs() + s == s {
                    a[at(l, l - 1)] = 0.0;
                    break;
                }
                l -= 1;
            }
            let mut x = a[at(nn, nn)];
            if l == nn {
                // One root.
                wr[nn] = x + t;
                wi[nn] = 0.0;
                nn -= 1;
            } else {
                let mut y = a[at(nn - 1, nn - 1)];
                let mut w = a[at(nn, nn - 1)] * a[at(nn - 1, nn)];
                if l == nn - 1 {
                    // Two roots: the trailing 2 × 2 block's.
                    let p = 0.5 * (y - x);
                    let q = p * p + w;
                    let z = q.abs().sqrt();
                    x += t;
                    if q >= 0.0 {
                        let z = p + z.copysign(p);
                        wr[nn - 1] = x + z;
                        wr[nn] = if z != 0.0 { x - w / z } else { x + z };
                        wi[nn - 1] = 0.0;
                        wi[nn] = 0.0;
                    } else {
                        wr[nn - 1] = x + p;
                        wr[nn] = x + p;
                        wi[nn - 1] = -z;
                        wi[nn] = z;
                    }
                    nn -= 2;
                } else {
                    if iterations >= max_iter {
                        return None;
                    }
                    if its > 0 && its % 10 == 0 {
                        // An exceptional shift.
                        t += x;
                        for i in 1..=nn {
                            a[at(i, i)] -= x;
                        }
                        let s = a[at(nn, nn - 1)].abs() + a[at(nn - 1, nn - 2)].abs();
                        x = 0.75 * s;
                        y = x;
                        w = -0.4375 * s * s;
                    }
                    its += 1;
                    iterations += 1;
                    // The shifts, and where two consecutive subdiagonal entries are small.
                    let mut m = nn - 2;
                    let (mut p, mut q, mut r);
                    loop {
                        let z = a[at(m, m)];
                        let (rr, ss) = (x - z, y - z);
                        p = (rr * ss - w) / a[at(m + 1, m)] + a[at(m, m + 1)];
                        q = a[at(m + 1, m + 1)] - z - rr - ss;
                        r = a[at(m + 2, m + 1)];
                        let s = p.abs() + q.abs() + r.abs();
                        if s != 0.0 {
                            p /= s;
                            q /= s;
                            r /= s;
                        }
                        if m == l {
                            break;
                        }
                        let u = a[at(m, m - 1)].abs() * (q.abs() + r.abs());
                        let v = p.abs() * (a[at(m - 1, m - 1)].abs() + z.abs() + a[at(m + 1, m + 1)].abs());
                        if u + v == v {
                            break;
                        }
                        m -= 1;
                    }
                    for i in m + 2..=nn {
                        a[at(i, i - 2)] = 0.0;
                        if i != m + 2 {
                            a[at(i, i - 3)] = 0.0;
                        }
                    }
                    // The double QR step on rows l..nn and columns m..nn.
                    for k in m..nn {
                        if k != m {
                            p = a[at(k, k - 1)];
                            q = a[at(k + 1, k - 1)];
                            r = if k != nn - 1 { a[at(k + 2, k - 1)] } else { 0.0 };
                            x = p.abs() + q.abs() + r.abs();
                            if x != 0.0 {
                                p /= x;
                                q /= x;
                                r /= x;
                            }
                        }
                        let s = (p * p + q * q + r * r).sqrt().copysign(p);
                        if s == 0.0 {
                            continue;
                        }
                        if k == m {
                            if l != m {
                                a[at(k, k - 1)] = -a[at(k, k - 1)];
                            }
                        } else {
                            a[at(k, k - 1)] = -s * x;
                        }
                        p += s;
                        x = p / s;
                        y = q / s;
                        let z = r / s;
                        q /= p;
                        r /= p;
                        // Rows k, k+1 (and k+2) from column k to nn, as slices: no index
                        // checks in the loop.
                        let (row_k, below) = a[at(k, 1)..].split_at_mut(n);
                        let (row_k1, below) = below.split_at_mut(n);
                        let columns = k - 1..nn;
                        if k != nn - 1 {
                            let row_k2 = &mut below[..n];
                            for ((ak, ak1), ak2) in row_k[columns.clone()]
                                .iter_mut()
                                .zip(&mut row_k1[columns.clone()])
                                .zip(&mut row_k2[columns])
                            {
                                let p = *ak + q * *ak1 + r * *ak2;
                                *ak2 -= p * z;
                                *ak1 -= p * y;
                                *ak -= p * x;
                            }
                        } else {
                            for (ak, ak1) in row_k[columns.clone()].iter_mut().zip(&mut row_k1[columns]) {
                                let p = *ak + q * *ak1;
                                *ak1 -= p * y;
                                *ak -= p * x;
                            }
                        }
                        // Columns k, k+1 (and k+2) from row l to min(nn, k+3): adjacent in a row.
                        let width = if k != nn - 1 { 3 } else { 2 };
                        for i in l..=nn.min(k + 3) {
                            let c = &mut a[at(i, k)..at(i, k) + width];
                            let mut p = x * c[0] + y * c[1];
                            if width == 3 {
                                p += z * c[2];
                                c[2] -= p * r;
                            }
                            c[1] -= p * q;
                            c[0] -= p;
                        }
                    }
                }
            }
            if l + 1 >= nn {
                break;
            }
        }
    }
    let eig: Vec<Complex<f64>> = (1..=n).map(|i| Complex::new(wr[i], wi[i])).collect();
    eig.iter().all(|z| z.re.is_finite() && z.im.is_finite()).then_some(eig)
}

/// `Σ Re λ / Σ |λ|` over the eigenvalues of `m` (the copying score); 0 if every eigenvalue is 0
/// (a head whose circuit vanishes copies nothing). `None` if the eigenvalues did not converge.
pub fn copying_score(m: Matrix) -> Option<f64> {
    // The ratio does not change when `m` is scaled: the scaled eigenvalues, which cannot
    // overflow.
    let (eig, _) = scaled_eigenvalues(m)?;
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
    use super::{copying_score, eigenvalues, from_row_major, gram_root, largest_magnitude, transposed, Matrix};
    use nalgebra::Complex;

    /// The same value as the fold through `max` it replaces, NaN skipped, infinities kept, at
    /// lengths around its eight lanes.
    #[test]
    fn largest_magnitude_is_the_max_fold() {
        let mut next = entries(3);
        for len in [0usize, 1, 7, 8, 9, 16, 17, 100] {
            for special in [None, Some(f64::NAN), Some(f64::INFINITY), Some(f64::NEG_INFINITY), Some(-1e300)] {
                for at in [0, len / 2, len.saturating_sub(1)] {
                    let mut values: Vec<f64> = (0..len).map(|_| next()).collect();
                    if let (Some(x), true) = (special, at < len) {
                        values[at] = x;
                    }
                    let want = values.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                    assert_eq!(largest_magnitude(&values).to_bits(), want.to_bits(), "{values:?}");
                    let single: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                    let want = single.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                    assert_eq!(largest_magnitude(&single).to_bits(), want.to_bits());
                }
            }
        }
    }

    /// Entry (i, j) of the result is `data[i · cols + j]`, at every size around the tile's
    /// (32), and on large matrices copied 8 × 8 blocks at a time (`W_U`'s chunk's shape among
    /// them) or not (a side not a multiple of 8), checked entry by entry against the definition.
    #[test]
    fn from_row_major_is_the_row_major_layout() {
        let sizes = [(0, 0), (0, 5), (3, 0), (1, 1), (1, 70), (70, 1), (31, 33), (32, 32), (65, 64), (97, 3)];
        for (rows, cols) in sizes.into_iter().chain([(8, 8192), (768, 1024), (256, 264), (257, 256), (8192, 9)]) {
            let data: Vec<f64> = (0..rows * cols).map(|k| k as f64 + 0.5).collect();
            let m = from_row_major(rows, cols, &data);
            assert_eq!(m.shape(), (rows, cols));
            assert_eq!(transposed(&m), m.transpose());
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(m[(i, j)], data[i * cols + j], "({i}, {j}) of {rows}×{cols}");
                }
            }
        }
    }

    /// Deterministic entries in [-0.5, 0.5).
    fn entries(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }
    }

    /// The largest distance from each of `want` to its nearest unmatched one of `got`.
    fn spectrum_distance(got: &[Complex<f64>], want: &[Complex<f64>]) -> f64 {
        assert_eq!(got.len(), want.len());
        let mut unused: Vec<Complex<f64>> = got.to_vec();
        let mut worst = 0.0f64;
        for w in want {
            let (i, d) = unused
                .iter()
                .map(|g| (g - w).norm())
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("as many as wanted");
            unused.swap_remove(i);
            worst = worst.max(d);
        }
        worst
    }

    /// Known spectra: a triangular matrix's diagonal, the companion matrix of (x−1)(x−2)(x−3)(x−4),
    /// and rotation-scaling blocks `r (cos θ ± i sin θ)` moved by a similarity `S D S⁻¹`.
    #[test]
    fn eigenvalues_of_known_spectra() {
        let triangular =
            Matrix::from_fn(9, 9, |i, j| if i <= j { (i * 7 + j * 3) as f64 % 5.0 - 2.0 + i as f64 } else { 0.0 });
        let want: Vec<Complex<f64>> = (0..9).map(|i| Complex::new(triangular[(i, i)], 0.0)).collect();
        assert!(spectrum_distance(&eigenvalues(triangular).unwrap(), &want) < 1e-12);

        // x⁴ − 10x³ + 35x² − 50x + 24.
        let companion = Matrix::from_row_slice(
            4,
            4,
            &[10.0, -35.0, 50.0, -24.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        );
        let want: Vec<Complex<f64>> = (1..=4).map(|k| Complex::new(k as f64, 0.0)).collect();
        assert!(spectrum_distance(&eigenvalues(companion).unwrap(), &want) < 1e-10);

        let mut next = entries(7);
        let (n, mut d, mut want) = (12, Matrix::zeros(12, 12), Vec::new());
        for b in 0..n / 2 {
            let (r, theta) = (0.5 + b as f64, 0.3 + 0.4 * b as f64);
            let (c, s) = (r * theta.cos(), r * theta.sin());
            d[(2 * b, 2 * b)] = c;
            d[(2 * b, 2 * b + 1)] = -s;
            d[(2 * b + 1, 2 * b)] = s;
            d[(2 * b + 1, 2 * b + 1)] = c;
            want.extend([Complex::new(c, s), Complex::new(c, -s)]);
        }
        let similarity = Matrix::identity(n, n) + Matrix::from_fn(n, n, |_, _| 0.3 * next());
        let m = &similarity * d * similarity.clone().try_inverse().unwrap();
        let got = eigenvalues(m.clone()).unwrap();
        assert!(spectrum_distance(&got, &want) < 1e-9, "{got:?}");
        // Entries near 2^±660 (1e±199): the same spectrum scaled, no overflow or underflow on the way,
        // and the same copying score.
        for factor in [2f64.powi(660), 2f64.powi(-660)] {
            let scaled = eigenvalues(&m * factor).unwrap();
            let unscaled: Vec<Complex<f64>> = got.iter().map(|z| z * factor).collect();
            assert!(spectrum_distance(&scaled, &unscaled) < 1e-12 * factor, "{factor:e}: {scaled:?}");
            assert_eq!(copying_score(&m * factor), copying_score(m.clone()));
        }
        assert!(eigenvalues(Matrix::zeros(0, 0)).unwrap().is_empty());
        assert_eq!(eigenvalues(Matrix::from_element(1, 1, -3.5)).unwrap(), vec![Complex::new(-3.5, 0.0)]);
    }

    /// The same spectra as nalgebra's real Schur decomposition (an independent implementation)
    /// on random matrices of every size up to 70, scaled from 1e-3 to 1e3.
    #[test]
    fn eigenvalues_agree_with_nalgebras_schur() {
        let mut next = entries(11);
        for n in 1..=70 {
            for scale in [1e-3, 1.0, 1e3] {
                let m = Matrix::from_fn(n, n, |_, _| scale * next());
                let want: Vec<Complex<f64>> =
                    nalgebra::linalg::Schur::new(m.clone()).complex_eigenvalues().iter().copied().collect();
                let got = eigenvalues(m.clone()).unwrap();
                let norm = m.norm().max(f64::MIN_POSITIVE);
                let d = spectrum_distance(&got, &want);
                assert!(d <= 1e-10 * norm, "n = {n}, scale {scale}: {d:e} (‖m‖ {norm:e})");
                let trace: f64 = got.iter().map(|z| z.re).sum();
                assert!((trace - m.trace()).abs() <= 1e-10 * norm, "n = {n}: trace {trace} vs {}", m.trace());
            }
        }
    }

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
