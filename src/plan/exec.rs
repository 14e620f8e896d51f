//! Runs an [`EvalPlan`] on concrete weights, in four stages by the head indices a step depends
//! on ([`Deps`]):
//!
//! 1. **once**: head-independent steps. The products over the vocabulary of two weights
//!    ([`EvalPlan::streamed`], e.g. `W_U · W_E`) are summed chunk by chunk, all in one pass over
//!    [`VocabRows`], so neither `W_E` nor `W_U` is ever held whole: the reader may take them
//!    straight from the file. The vocabulary is cut into [`VOCAB_GROUPS`] fixed groups run
//!    on the threads and added in order, so the bits do not depend on the thread count. Each
//!    matrix is read over its own rows: when `d_vocab_out ≠ d_vocab` the products of `W_E` are
//!    one pass over `d_vocab` rows and those of `W_U` another over `d_vocab_out` (no product
//!    then reads both). In f32 a chunk is read as stored where it is f32 (or narrower), and both
//!    operands of a product are strided views of it: no f64 copy and no transposed copy.
//! 2. **per head**, a layer at a time, layers on the threads: the steps of `h` for each of
//!    the layer's heads (each weight rounded to the precision once however many products read
//!    it), and the layer's stacks (`Stack`) of the per-head operands of the batched pair steps,
//!    made from the values rounded as they are computed.
//! 3. **per right head**, a layer at a time, last layers first (they pair with the most), on
//!    the threads: the steps of `r` (the right head of a composition score) for the layer's
//!    heads and its stacks of the per-right-head operands, then
//! 4. **per pair**, with every earlier layer: a product of a per-head and a per-right-head
//!    matrix ([`EvalPlan::batched`]) is one GEMM of the two layers' stacks; the rest pair by
//!    pair. The right layer's values are dropped when its pairs are done.
//!
//! The heads' weights are asked of a [`HeadSource`] a layer at a time (twice: in stages 2 and
//! 3) and dropped after: a source that reads them from a file keeps no more than one layer per
//! thread in memory, so a run holds the left stacks, the vocabulary products and a few layers'
//! weights, not the model's attention weights.
//! Per-head values are kept only if a pair step or a statistic reads them. Every result is
//! computed by the same sequence of operations whatever the scheduling, so runs are
//! bit-identical.

use std::borrow::Cow;

use egg::Id;

use super::{Deps, EvalPlan, Plan, Stat, VocabMatrix, VOCAB_CHUNK};
use crate::linalg::{
    copying_score, finite, gram_root, largest_magnitude, power_of_two_above, transposed, Matrix, NoConvergence,
    NonFinite,
};
use crate::parallel::parallel_map;
use crate::progress::Progress;
use crate::weights::WeightError;

/// Why a plan could not be run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    NoConvergence(#[from] NoConvergence),
    /// A copying score's matrix is not finite: its eigenvalues are not numbers.
    #[error(transparent)]
    NonFinite(#[from] NonFinite),
    /// A vocabulary-sized weight read chunk by chunk failed.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The caller asked the run to stop ([`Progress::cancelled`]).
    #[error(transparent)]
    Cancelled(#[from] crate::progress::Cancelled),
}

pub use super::Precision;

impl Precision {
    /// `m` as an operand of this precision's products: borrowed in f64, rounded to f32 once.
    fn operand(self, m: &Matrix) -> Operand<'_> {
        match self {
            Precision::F64 => Operand::F64(Cow::Borrowed(m)),
            Precision::F32 => {
                let scale = power_of_two_scale(m);
                let inverse = 1.0 / scale;
                // Over the storage's slice (vectorised), not nalgebra's `map`.
                let rounded = m.as_slice().iter().map(|&x| (x * inverse) as f32).collect();
                Operand::F32(Cow::Owned(nalgebra::DMatrix::from_vec(m.nrows(), m.ncols(), rounded)), scale)
            }
        }
    }
}

/// The power of two at or above a matrix's largest magnitude (1 for a zero or non-finite one):
/// dividing by it is exact, and puts the entries in [-1, 1], so that rounding them to f32 and
/// multiplying neither overflows nor underflows where f64 would not (f32's range ends at 3.4e38;
/// an entry below 1e-38 of the largest is flushed, which changes no sum by more than that).
fn power_of_two_scale(m: &Matrix) -> f64 {
    // Over the storage: nalgebra's `amax` is several times slower. A NaN is skipped (and left
    // for the checks after the products to find).
    power_of_two_above(largest_magnitude(m.as_slice()))
}

/// A product's operand in the precision it is multiplied in (made once where several products
/// read it: a vocabulary chunk, a head-independent matrix); in f32 with the power of two it was
/// divided by ([`power_of_two_scale`]).
#[derive(Debug, Clone)]
enum Operand<'m> {
    F64(Cow<'m, Matrix>),
    F32(Cow<'m, nalgebra::DMatrix<f32>>, f64),
    /// The transpose of an f32 operand, as a view of its storage: a weight's transpose, read
    /// from the weight's own operand without a copy ([`Stages::held`]).
    F32T(Cow<'m, nalgebra::DMatrix<f32>>, f64),
}

impl Operand<'_> {
    fn into_owned(self) -> Operand<'static> {
        match self {
            Operand::F64(m) => Operand::F64(Cow::Owned(m.into_owned())),
            Operand::F32(m, scale) => Operand::F32(Cow::Owned(m.into_owned()), scale),
            Operand::F32T(m, scale) => Operand::F32T(Cow::Owned(m.into_owned()), scale),
        }
    }

    /// The same operand, borrowed.
    fn borrowed(&self) -> Operand<'_> {
        match self {
            Operand::F64(m) => Operand::F64(Cow::Borrowed(&**m)),
            Operand::F32(m, scale) => Operand::F32(Cow::Borrowed(&**m), *scale),
            Operand::F32T(m, scale) => Operand::F32T(Cow::Borrowed(&**m), *scale),
        }
    }

    /// An f32 operand as the kernel reads it, and its power of two.
    fn strided(&self) -> Option<(Strided<'_>, f64)> {
        match self {
            Operand::F64(_) => None,
            Operand::F32(m, scale) => Some((Strided::of(m), *scale)),
            Operand::F32T(m, scale) => Some((Strided::transpose_of(m), *scale)),
        }
    }

    /// `self · b`, in f64.
    fn product(&self, b: &Operand<'_>) -> Matrix {
        match (self, b) {
            (Operand::F64(a), Operand::F64(b)) => &**a * &**b,
            _ => {
                let (product, scale) = self.f32_product(b);
                widened(&product, scale, 1.0)
            }
        }
    }

    /// Both f32 operands of a product as the kernel reads them, each with its power of two.
    fn strided_pair<'b>(&'b self, b: &'b Operand<'_>) -> ((Strided<'b>, f64), (Strided<'b>, f64)) {
        let (Some(a), Some(b)) = (self.strided(), b.strided()) else {
            unreachable!("both operands of a product are made by one precision")
        };
        (a, b)
    }

    /// `self · b` of two f32 operands as the kernel makes it, and the power of two it is
    /// scaled by (the product of the operands').
    fn f32_product(&self, b: &Operand<'_>) -> (nalgebra::DMatrix<f32>, f64) {
        let ((a, sa), (b, sb)) = self.strided_pair(b);
        (f32_product(a, b), sa * sb)
    }

    /// `self · b` where `self = bᵀ` (a Gram matrix, symmetric), only its blocks on and above
    /// the diagonal, [`GRAM_BLOCK`] rows at a time: 58 % of the product's work at d_model 768.
    /// The rest is zero until [`mirror_upper`] fills it in.
    fn gram_upper(&self, b: &Operand<'_>) -> Matrix {
        let blocks = |n: usize| (0..n).step_by(GRAM_BLOCK).map(move |i| (i, GRAM_BLOCK.min(n - i)));
        match (self, b) {
            (Operand::F64(a), Operand::F64(b)) => {
                let mut out = Matrix::zeros(a.nrows(), a.nrows());
                for (i, rows) in blocks(a.nrows()) {
                    let n = a.nrows() - i;
                    out.view_mut((i, i), (rows, n)).copy_from(&(a.rows(i, rows) * b.columns(i, n)));
                }
                out
            }
            _ => {
                let ((a, sa), (b, sb)) = self.strided_pair(b);
                let mut out = nalgebra::DMatrix::<f32>::zeros(a.rows, a.rows);
                for (i, rows) in blocks(a.rows) {
                    let n = a.rows - i;
                    sgemm_into(&mut out, (i, i), a.rows(i, rows), b.columns(i, n));
                }
                widened(&out, sa, sb)
            }
        }
    }
}

/// Products of at most this many multiply-adds run in f64 whatever the precision: rounding
/// their operands to f32 would cost about as much as they do (d_head × d_head × d_head ones).
pub const SMALL_PRODUCT: usize = 128 * 128 * 128;

/// The rows of a Gram matrix computed by one product (`Operand::gram_upper`).
pub const GRAM_BLOCK: usize = 128;

/// Copies a square matrix's upper triangle onto its lower one.
fn mirror_upper(m: &mut Matrix) {
    for c in 0..m.ncols() {
        for r in c + 1..m.nrows() {
            m[(r, c)] = m[(c, r)];
        }
    }
}

/// A head's values that only batched pair steps read, rounded to the precision's operands,
/// waiting to be stacked ([`Stacks::build`]).
type Rounded = Vec<(Id, Operand<'static>)>;

/// A stack's key: the operand, and whether its blocks go one above the other.
type StackKey = (Id, bool);

/// A pair statistic's value: left (layer, head), right (layer, head), value.
type PairValue = (usize, usize, usize, usize, f64);

/// The vocabulary is summed over in this many fixed groups.
pub const VOCAB_GROUPS: usize = 4;

/// One head's weights (TransformerLens layout: `W_Q`, `W_K`, `W_V` d_model × d_head, `W_O`
/// d_head × d_model).
#[derive(Debug, Clone, Copy)]
pub struct HeadWeights<'a> {
    pub w_q: &'a Matrix,
    pub w_k: &'a Matrix,
    pub w_v: &'a Matrix,
    pub w_o: &'a Matrix,
}

/// The vocabulary-sized weights, read a chunk of the vocabulary at a time.
pub trait VocabRows: Sync {
    /// `W_E`'s rows.
    fn d_vocab(&self) -> usize;
    /// `W_U`'s columns.
    fn d_vocab_out(&self) -> usize;
    /// Rows `start .. start + n` of `W_E`, `[n, d_model]` (`start + n ≤ d_vocab`).
    fn embed_rows(&self, start: usize, n: usize) -> Result<Matrix, WeightError>;
    /// Columns `start .. start + n` of `W_U`, `[d_model, n]` (`start + n ≤ d_vocab_out`).
    fn unembed_columns(&self, start: usize, n: usize) -> Result<Matrix, WeightError>;
    /// [`VocabRows::embed_rows`] as row-major `f32` (`[n, d_model]`), if the rows are `f32` (or
    /// narrower) as stored, read without a detour through f64: the f32 products' fast path.
    /// `None` (the default) reads `embed_rows` and rounds.
    fn embed_rows_f32(&self, _start: usize, _n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        Ok(None)
    }
    /// [`VocabRows::unembed_columns`] as row-major `f32` (`[d_model, n]`), as
    /// [`VocabRows::embed_rows_f32`].
    fn unembed_columns_f32(&self, _start: usize, _n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        Ok(None)
    }
}

/// A chunk of `n` vocabulary rows (`[n, d_model]`: `W_E`'s rows or `W_U`'s columns) in f32,
/// row-major, and the power of two it was divided by. Both `X_cᵀ` and `Y_c` of a product are
/// views of it, so no transposed copy is made (the kernel reads any strides).
struct RowsF32 {
    data: Vec<f32>,
    n: usize,
    d: usize,
    scale: f64,
}

/// An f32 matrix in a slice: entry (i, j) at `offset + i · rs + j · cs`, checked to lie in the
/// slice when it is made, so that [`sgemm_into`] may hand it to the kernel.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Strided<'a> {
    fn new(data: &'a [f32], offset: usize, (rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> Strided<'a> {
        if rows > 0 && cols > 0 {
            assert!(offset + (rows - 1) * rs + (cols - 1) * cs < data.len(), "a strided matrix outside its slice");
        }
        Strided { data, offset, rows, cols, rs, cs }
    }

    /// A column-major matrix: (i, j) at `i + j · rows`.
    fn of(m: &'a nalgebra::DMatrix<f32>) -> Strided<'a> {
        Strided::new(m.as_slice(), 0, m.shape(), (1, m.nrows()))
    }

    /// `m`ᵀ, a view of `m`'s column-major storage (row-major for `m`ᵀ).
    fn transpose_of(m: &'a nalgebra::DMatrix<f32>) -> Strided<'a> {
        Strided::new(m.as_slice(), 0, (m.ncols(), m.nrows()), (m.nrows(), 1))
    }

    fn rows(self, start: usize, n: usize) -> Strided<'a> {
        assert!(start + n <= self.rows);
        Strided::new(self.data, self.offset + start * self.rs, (n, self.cols), (self.rs, self.cs))
    }

    fn columns(self, start: usize, n: usize) -> Strided<'a> {
        assert!(start + n <= self.cols);
        Strided::new(self.data, self.offset + start * self.cs, (self.rows, n), (self.rs, self.cs))
    }
}

/// The kernel of the statistics' f32 products (`sgemm_into`): both read any strides, and each
/// is the faster on one kind of machine, as `benches/gemm.rs` measures (both are timed in every
/// run of `benches/speed.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Kernel {
    /// The `matrixmultiply` crate (nalgebra's own), where its AVX-512 kernel runs: measured at
    /// 1.5–1.7× the gemm crate's rate on the large shapes the plans use, on an AVX-512 machine
    /// (the gemm crate's AVX-512 kernels need a nightly compiler).
    MatrixMultiply,
    /// The `gemm` crate (faer's kernel) elsewhere: measured 4–20 % faster than matrixmultiply at
    /// every shape the plans use on a machine where matrixmultiply did not run that kernel.
    Gemm,
}

impl F32Kernel {
    /// The kernel for this machine: a function of its CPU's features only, so that a run's
    /// results are the same bits on every run on that machine, whatever the thread count.
    pub fn detect() -> F32Kernel {
        static KERNEL: std::sync::OnceLock<F32Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                return F32Kernel::MatrixMultiply;
            }
            F32Kernel::Gemm
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            F32Kernel::MatrixMultiply => "matrixmultiply",
            F32Kernel::Gemm => "gemm",
        }
    }
}

/// The block of `out` at `corner` (`a.rows × b.cols`) set to `a · b`, by this machine's kernel
/// ([`F32Kernel::detect`]): every f32 product of the executor goes through here. A kernel's sums
/// may depend on the product's shape and strides, not only on the entries: the executor gives it
/// the same shapes and strides whichever way the weights came (in memory or read from a file,
/// [`RowsF32::from_matrix`]) and whatever the thread count, so its results are the same bits
/// either way.
fn sgemm_into(out: &mut nalgebra::DMatrix<f32>, corner: (usize, usize), a: Strided<'_>, b: Strided<'_>) {
    sgemm_with(F32Kernel::detect(), out, corner, a, b)
}

/// [`sgemm_into`] by `kernel`.
fn sgemm_with(
    kernel: F32Kernel,
    out: &mut nalgebra::DMatrix<f32>,
    corner: (usize, usize),
    a: Strided<'_>,
    b: Strided<'_>,
) {
    let (r0, c0) = corner;
    assert!(a.cols == b.rows && r0 + a.rows <= out.nrows() && c0 + b.cols <= out.ncols(), "mismatched shapes");
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    if a.cols == 0 {
        out.view_mut(corner, (a.rows, b.cols)).fill(0.0);
        return;
    }
    let ld = out.nrows();
    let c = out.as_mut_slice()[r0 + c0 * ld..].as_mut_ptr();
    let (pa, pb) = (a.data[a.offset..].as_ptr(), b.data[b.offset..].as_ptr());
    let s = |x: usize| x as isize;
    // SAFETY: `a` and `b` lie in their slices (checked by `Strided::new`) and the block of `out`
    // lies in `out` (checked above, column-major with leading dimension `ld`); the kernels read
    // `a` and `b` and write only that block, which does not overlap them, without reading it
    // (beta 0: matrixmultiply then never reads `c`; gemm's `read_dst` false).
    match kernel {
        // m, k, n; alpha; each operand and its row and column strides; beta; the output and its
        // row and column strides. Single-threaded: the executor's threads are the parallelism.
        F32Kernel::MatrixMultiply => unsafe {
            matrixmultiply::sgemm(
                a.rows,
                a.cols,
                b.cols,
                1.0,
                pa,
                s(a.rs),
                s(a.cs),
                pb,
                s(b.rs),
                s(b.cs),
                0.0,
                c,
                1,
                s(ld),
            )
        },
        // m, n, k; the output, its column and row strides, whether to read it; each operand and
        // its column and row strides; the output's old value times 0 plus 1 times the product; no
        // conjugation; on this thread.
        F32Kernel::Gemm => unsafe {
            gemm::gemm(
                a.rows,
                b.cols,
                a.cols,
                c,
                s(ld),
                1,
                false,
                pa,
                s(a.cs),
                s(a.rs),
                pb,
                s(b.cs),
                s(b.rs),
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        },
    }
}

/// `m` in f64 times its operands' powers of two `sa` and `sb`, over the storage's slice
/// (vectorised; nalgebra's `map` is not).
fn widened(m: &nalgebra::DMatrix<f32>, sa: f64, sb: f64) -> Matrix {
    Matrix::from_vec(m.nrows(), m.ncols(), m.as_slice().iter().map(|&x| f64::from(x) * sa * sb).collect())
}

/// The block of `acc` at `corner` (`shape`) plus `scale` times that block of `buffer`, column by
/// column over slices (vectorised; a `zip_apply` over nalgebra views is not): a vocabulary
/// chunk's product added to its group's f64 sum.
fn add_scaled(
    acc: &mut Matrix,
    buffer: &nalgebra::DMatrix<f32>,
    corner: (usize, usize),
    shape: (usize, usize),
    scale: f64,
) {
    let ((i, j), (rows, cols)) = (corner, shape);
    assert!(i + rows <= acc.nrows().min(buffer.nrows()) && j + cols <= acc.ncols().min(buffer.ncols()));
    let (la, lb) = (acc.nrows(), buffer.nrows());
    let (a, b) = (acc.as_mut_slice(), buffer.as_slice());
    for c in j..j + cols {
        for (x, &y) in a[c * la + i..c * la + i + rows].iter_mut().zip(&b[c * lb + i..c * lb + i + rows]) {
            *x += f64::from(y) * scale;
        }
    }
}

/// `a · b` in f32 by [`sgemm_into`], a new matrix.
fn f32_product(a: Strided<'_>, b: Strided<'_>) -> nalgebra::DMatrix<f32> {
    let mut out = nalgebra::DMatrix::zeros(a.rows, b.cols);
    sgemm_into(&mut out, (0, 0), a, b);
    out
}

/// Entries whose largest magnitude lies within `2^±RANGE` are multiplied as they are: a
/// chunk's products of [`VOCAB_CHUNK`] terms then stay far inside f32's range (and its normal
/// numbers) without a scaling pass.
const UNSCALED_RANGE: i32 = 20;

impl RowsF32 {
    /// `data` (`n × d`, row-major), divided by a power of two only if its largest entry is
    /// outside `2^±UNSCALED_RANGE` (exact: [`power_of_two_scale`]).
    fn new(mut data: Vec<f32>, n: usize, d: usize) -> RowsF32 {
        let largest = largest_magnitude(&data);
        let range = 2f32.powi(UNSCALED_RANGE);
        let scale = if largest == 0.0 || (largest <= range && largest >= 1.0 / range) {
            1.0
        } else {
            power_of_two_above(f64::from(largest))
        };
        if scale != 1.0 {
            let inverse = (1.0 / scale) as f32;
            data.iter_mut().for_each(|x| *x *= inverse);
        }
        RowsF32 { data, n, d, scale }
    }

    /// `m`, rounded after dividing by its power of two, laid out as a chunk read from an f32
    /// file is: `n × d` row-major (an embedding chunk `m`, or `W_U`'s columns `m` (`d × n`) seen
    /// transposed when `transposed`: `m`'s column-major storage), so that both give the kernel
    /// the same strides, and so the same bits.
    fn from_matrix(m: &Matrix, transposed: bool) -> RowsF32 {
        let scale = power_of_two_scale(m);
        let inverse = 1.0 / scale;
        let round = |x: &f64| (x * inverse) as f32;
        let (data, n, d) = if transposed {
            (m.as_slice().iter().map(round).collect(), m.ncols(), m.nrows())
        } else {
            let mut data: Vec<f32> = Vec::with_capacity(m.len());
            for row in m.row_iter() {
                data.extend(row.iter().map(round));
            }
            (data, m.nrows(), m.ncols())
        };
        RowsF32 { data, n, d, scale }
    }

    /// The chunk as `Y_c`, `n × d`.
    fn rows(&self) -> Strided<'_> {
        Strided::new(&self.data, 0, (self.n, self.d), (self.d, 1))
    }

    /// The chunk as `X_cᵀ`, `d × n`.
    fn transposed(&self) -> Strided<'_> {
        Strided::new(&self.data, 0, (self.d, self.n), (1, self.d))
    }
}

/// What a plan runs on.
pub struct Inputs<'a> {
    /// The heads' weights, a layer at a time.
    pub heads: &'a dyn HeadSource,
    pub vocab: &'a dyn VocabRows,
    /// Told of every vocabulary chunk, head and left head done.
    pub progress: &'a dyn Progress,
    pub precision: Precision,
}

/// Where the heads' weights come from, a layer at a time: held in memory (`[layer][head]`, a
/// `Vec<Vec<HeadWeights>>`), or read from a file when asked and dropped after, so that a large
/// model's attention weights are never all in memory at once. [`run`] asks for each layer twice
/// (its heads as left heads, then as right heads), at most one layer per thread at a time.
pub trait HeadSource: Sync {
    /// Per layer: its number of heads and their d_head.
    fn layer_shapes(&self) -> Vec<(usize, usize)>;
    /// Calls `f` once with layer `layer`'s heads' weights.
    fn with_layer(&self, layer: usize, f: &mut dyn FnMut(&[HeadWeights<'_>])) -> Result<(), WeightError>;
}

impl HeadSource for Vec<Vec<HeadWeights<'_>>> {
    fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.iter().map(|heads| (heads.len(), heads.first().map_or(0, |w| w.w_q.ncols()))).collect()
    }

    fn with_layer(&self, layer: usize, f: &mut dyn FnMut(&[HeadWeights<'_>])) -> Result<(), WeightError> {
        f(&self[layer]);
        Ok(())
    }
}

/// Every statistic's value: per head `[layer][head]`, per pair `[layer][head][layer'][head']`
/// (zero unless `layer < layer'`).
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub per_head: std::collections::BTreeMap<Stat, Vec<Vec<f64>>>,
    pub per_pair: std::collections::BTreeMap<Stat, Vec<Vec<Vec<Vec<f64>>>>>,
}

#[derive(Debug, Clone)]
enum Value<'a> {
    Matrix(Cow<'a, Matrix>),
    Scalar(f64),
}

impl Value<'_> {
    fn into_owned(self) -> Value<'static> {
        match self {
            Value::Matrix(m) => Value::Matrix(Cow::Owned(m.into_owned())),
            Value::Scalar(x) => Value::Scalar(x),
        }
    }

    fn matrix(&self) -> &Matrix {
        match self {
            Value::Matrix(m) => m,
            Value::Scalar(_) => unreachable!("the shape analysis gives every step its kind"),
        }
    }

    fn scalar(&self) -> f64 {
        match self {
            Value::Scalar(x) => *x,
            Value::Matrix(_) => unreachable!("the shape analysis gives every step its kind"),
        }
    }
}

type Frame<'a> = Vec<Option<Value<'a>>>;

/// The weight `name` (`W_Q[h]`, ...) of one head.
fn weight_of<'a>(w: &HeadWeights<'a>, name: &str) -> &'a Matrix {
    let (matrix, _) = name.split_once('[').unwrap_or((name, ""));
    match matrix {
        "W_Q" => w.w_q,
        "W_K" => w.w_k,
        "W_V" => w.w_v,
        _ => w.w_o,
    }
}

/// Where a step's operands are: the frame of each stage (`None`: the stage running now, whose
/// values are in `local`), and the heads bound to `h` and `r`.
struct Env<'e, 'a> {
    plan: &'e EvalPlan,
    inputs: &'e Inputs<'a>,
    shared: &'e Frame<'a>,
    head_frame: Option<&'e Frame<'a>>,
    right_frame: Option<&'e Frame<'a>>,
    head: (usize, usize),
    right: (usize, usize),
    /// The weights of the layer whose heads a per-head stage runs (`head.1` indexes them).
    layer: Option<&'e [HeadWeights<'a>]>,
    /// The head-independent matrices as operands of the precision, made once for the stages
    /// after the first.
    shared_operands: Option<&'e [Option<Operand<'static>>]>,
    /// A head's weights (and their transposes) as operands of the precision, each made the
    /// first time a product reads it: several products read one weight.
    weight_operands: Option<&'e [std::cell::OnceCell<Operand<'static>>]>,
    /// The products a per-head stage holds in f32 ([`Held::F32`]), as they are made.
    held_f32: Option<&'e [std::cell::OnceCell<Operand<'static>>]>,
}

impl<'e, 'a> Env<'e, 'a> {
    /// No head bound and no per-head frames: the head-independent stage.
    fn new(plan: &'e EvalPlan, inputs: &'e Inputs<'a>, shared: &'e Frame<'a>) -> Env<'e, 'a> {
        Env {
            plan,
            inputs,
            shared,
            head_frame: None,
            right_frame: None,
            head: (0, 0),
            right: (0, 0),
            layer: None,
            shared_operands: None,
            weight_operands: None,
            held_f32: None,
        }
    }

    fn get<'f>(&'f self, local: &'f Frame<'a>, id: Id) -> &'f Value<'a> {
        match self.evaluated(local, id) {
            Some(value) => value,
            None => unreachable!("step %{id} is evaluated before the steps that read it"),
        }
    }

    /// A step's value, `None` if it was not evaluated ([`Stages::held`]).
    fn evaluated<'f>(&'f self, local: &'f Frame<'a>, id: Id) -> Option<&'f Value<'a>> {
        let frame = match self.plan.shape(id).deps {
            Deps::NONE => self.shared,
            Deps::HEAD => self.head_frame.unwrap_or(local),
            Deps::RIGHT => self.right_frame.unwrap_or(local),
            _ => local,
        };
        frame[usize::from(id)].as_ref()
    }

    /// A step's value as a product's operand: a head-independent one made once ([`Env::shared_operands`]).
    fn operand<'f>(&'f self, local: &'f Frame<'a>, id: Id) -> Operand<'f> {
        if let Some(shared) = self.shared_operands.and_then(|ops| ops[usize::from(id)].as_ref()) {
            return shared.borrowed();
        }
        if let Some(held) = self.held_f32.and_then(|held| held[usize::from(id)].get()) {
            return held.borrowed();
        }
        let Some(cache) = self.weight_operands.filter(|_| self.plan.is_weight_view(id)) else {
            return self.inputs.precision.operand(self.get(local, id).matrix());
        };
        // A weight's transpose in f32: a view of the weight's own operand (the step is not
        // evaluated when only such products read it, [`Stages::held`]).
        if let (Plan::Transpose(weight), Precision::F32) = (self.plan.node(id), self.inputs.precision) {
            if let Operand::F32(m, scale) = self.operand(local, *weight) {
                return Operand::F32T(m, scale);
            }
        }
        cache[usize::from(id)]
            .get_or_init(|| self.inputs.precision.operand(self.get(local, id).matrix()).into_owned())
            .borrowed()
    }

    /// A weight of the head a per-head stage runs.
    fn weight(&self, name: &str) -> Value<'a> {
        let layer = self.layer.expect("a per-head weight is read in its layer's stage");
        Value::Matrix(Cow::Borrowed(weight_of(&layer[self.head.1], name)))
    }

    /// A product step ([`Held::F32`]) in f32, kept as the kernel made it: the f32 operand its
    /// readers take, with the power of two of its operands' product.
    fn eval_f32(&self, local: &Frame<'a>, step: Id) -> Operand<'static> {
        let Plan::Mul([a, b]) = self.plan.node(step) else { unreachable!("only products are held in f32") };
        let (product, scale) = self.operand(local, *a).f32_product(&self.operand(local, *b));
        Operand::F32(Cow::Owned(product), scale)
    }

    /// Evaluates one step (not a streamed product), its operands in `local` or the stage frames.
    fn eval(&self, local: &Frame<'a>, step: Id) -> Result<Value<'a>, ExecError> {
        let plan = self.plan;
        let get = |id: Id| self.get(local, id);
        Ok(match plan.node(step) {
            Plan::Weight(name) => match plan.shape(step).deps {
                Deps::HEAD | Deps::RIGHT => self.weight(name.as_str()),
                _ => {
                    // Only a plan that multiplies a vocabulary-sized weight by something other
                    // than the other one (the naive plan) holds it whole.
                    let vocab = self.inputs.vocab;
                    Value::Matrix(Cow::Owned(match name.as_str() {
                        "W_E" => vocab.embed_rows(0, vocab.d_vocab())?,
                        _ => vocab.unembed_columns(0, vocab.d_vocab_out())?,
                    }))
                }
            },
            Plan::Mul([a, b]) if plan.is_gram(step) => {
                let mut gram = self.operand(local, *a).gram_upper(&self.operand(local, *b));
                mirror_upper(&mut gram);
                Value::Matrix(Cow::Owned(gram))
            }
            Plan::Mul([a, b]) => {
                // An operand held without a value ([`Stages::held`]: a view or an f32 product)
                // is read in f32 whatever the product's size (the plan's sizes are the largest
                // d_head's).
                let small = |x: &Matrix, y: &Matrix| x.nrows() * x.ncols() * y.ncols() <= SMALL_PRODUCT;
                match (self.evaluated(local, *a), self.evaluated(local, *b)) {
                    (Some(x), Some(y)) if small(x.matrix(), y.matrix()) => {
                        Value::Matrix(Cow::Owned(x.matrix() * y.matrix()))
                    }
                    _ => Value::Matrix(Cow::Owned(self.operand(local, *a).product(&self.operand(local, *b)))),
                }
            }
            Plan::Transpose(a) => Value::Matrix(Cow::Owned(transposed(get(*a).matrix()))),
            Plan::Trace(a) => Value::Scalar(get(*a).matrix().trace()),
            Plan::Dot([a, b]) => Value::Scalar(get(*a).matrix().dot(get(*b).matrix())),
            // The square root of a sum of squares computed as a trace: clamped at 0, so that
            // rounding cannot make it NaN.
            Plan::Sqrt(a) => Value::Scalar(get(*a).scalar().max(0.0).sqrt()),
            Plan::Frobenius(a) => Value::Scalar(get(*a).matrix().norm()),
            Plan::GramRoot(a) => {
                let g = get(*a).matrix();
                let head = if plan.shape(step).deps == Deps::RIGHT { self.right } else { self.head };
                let (l, h) = head;
                finite(g, |i, j| {
                    format!("the Gram matrix of a composition score's factor of head L{l}H{h} (entry {i}, {j})")
                })?;
                Value::Matrix(Cow::Owned(
                    gram_root(g).ok_or(NoConvergence::of("a Gram matrix of a composition score's factor", head))?,
                ))
            }
            Plan::Copying(a) => {
                let m = get(*a).matrix().clone();
                let circuit = match plan.roots.iter().find(|&&(_, root)| root == step) {
                    Some((Stat::QkCopying, _)) => "the QK circuit",
                    _ => "the OV circuit",
                };
                let (l, h) = self.head;
                finite(&m, |i, j| {
                    format!("the d_head × d_head matrix of {circuit} of head L{l}H{h} (entry {i}, {j})")
                })?;
                Value::Scalar(copying_score(m).ok_or(NoConvergence::of(circuit, self.head))?)
            }
        })
    }
}

/// The vocabulary cut into [`VOCAB_GROUPS`] contiguous groups, `(start, end)`: fixed by the size
/// alone, so that the sums, group by group, do not depend on the thread count.
fn vocab_groups(d_vocab: usize) -> Vec<(usize, usize)> {
    let group = d_vocab.div_ceil(VOCAB_GROUPS).max(1);
    (0..d_vocab).step_by(group).map(|s| (s, d_vocab.min(s + group))).collect()
}

/// How many rows of the vocabulary `m` has.
fn vocab_length(vocab: &dyn VocabRows, m: VocabMatrix) -> usize {
    match m {
        VocabMatrix::Embed => vocab.d_vocab(),
        VocabMatrix::UnembedT => vocab.d_vocab_out(),
    }
}

/// The passes over the vocabulary that `products` take: the distinct lengths of their operands,
/// in the order the products first need them (one pass when `d_vocab_out = d_vocab`).
fn pass_lengths(vocab: &dyn VocabRows, products: &[(VocabMatrix, VocabMatrix)]) -> Vec<usize> {
    let mut lengths: Vec<usize> = Vec::new();
    for &(x, y) in products {
        let n = vocab_length(vocab, x);
        assert_eq!(n, vocab_length(vocab, y), "a product over the vocabulary of two matrices of different lengths");
        if !lengths.contains(&n) {
            lengths.push(n);
        }
    }
    lengths
}

/// Every product `Σ_c X_cᵀ Y_c` of `products` over chunks `c` of the vocabulary (see the module
/// documentation), one pass per length ([`pass_lengths`]): each chunk of `W_E` and of `W_U` is
/// read once for all the products of its pass. `W_U`'s columns are `X_cᵀ` as read; `W_E`'s rows
/// are `Y_c` as read.
fn streamed_products(
    vocab: &dyn VocabRows,
    products: &[(VocabMatrix, VocabMatrix)],
    progress: &dyn Progress,
    precision: Precision,
) -> Result<Vec<Matrix>, ExecError> {
    let mut results: Vec<Option<Matrix>> = vec![None; products.len()];
    for length in pass_lengths(vocab, products) {
        let of_pass: Vec<usize> =
            (0..products.len()).filter(|&i| vocab_length(vocab, products[i].0) == length).collect();
        let pass: Vec<(VocabMatrix, VocabMatrix)> = of_pass.iter().map(|&i| products[i]).collect();
        for (i, product) in of_pass.into_iter().zip(match precision {
            Precision::F32 => streamed_pass_f32(vocab, length, &pass, progress)?,
            Precision::F64 => streamed_pass_f64(vocab, length, &pass, progress)?,
        }) {
            results[i] = Some(product);
        }
    }
    // A Gram matrix's chunks made its upper triangle only.
    let mut results: Vec<Matrix> =
        results.into_iter().map(|r| r.expect("every product is in the pass of its length")).collect();
    for (result, &(x, y)) in results.iter_mut().zip(products) {
        if x == y {
            mirror_upper(result);
        }
    }
    Ok(results)
}

/// [`streamed_pass_f64`] in f32: each chunk read as f32 ([`VocabRows::embed_rows_f32`], else
/// rounded from f64), both operands of every product views of it, each product into one f32
/// buffer per product and group, added in f64 to the group's sum (the upper triangle's blocks of
/// a Gram, [`GRAM_BLOCK`] rows at a time).
fn streamed_pass_f32(
    vocab: &dyn VocabRows,
    length: usize,
    products: &[(VocabMatrix, VocabMatrix)],
    progress: &dyn Progress,
) -> Result<Vec<Matrix>, ExecError> {
    let uses = |m: VocabMatrix| products.iter().any(|&(x, y)| x == m || y == m);
    let parts = parallel_map(&vocab_groups(length), |&(start, end)| -> Result<Vec<Option<Matrix>>, ExecError> {
        let mut sums: Vec<Option<Matrix>> = vec![None; products.len()];
        let mut buffers: Vec<nalgebra::DMatrix<f32>> = Vec::new();
        for s in (start..end).step_by(VOCAB_CHUNK) {
            let n = VOCAB_CHUNK.min(end - s);
            let e = if uses(VocabMatrix::Embed) {
                Some(match vocab.embed_rows_f32(s, n)? {
                    Some(data) => {
                        let d = data.len() / n.max(1);
                        RowsF32::new(data, n, d)
                    }
                    None => RowsF32::from_matrix(&vocab.embed_rows(s, n)?, false),
                })
            } else {
                None
            };
            let u = if uses(VocabMatrix::UnembedT) {
                Some(match vocab.unembed_columns_f32(s, n)? {
                    // `[d_model, n]` row-major, copied to `[n, d_model]` row-major (`W_Uᵀ`'s rows), as
                    // `W_E`'s chunks are: the kernels pack a product's left operand by columns and
                    // its right one by rows, with vector loads where those are contiguous, and
                    // `W_U`'s chunk is the left operand of `W_U W_E` and both of `W_U W_Uᵀ`
                    // (packed one entry at a time as read, that was 10 % of the pass).
                    Some(data) => {
                        let d = data.len() / n.max(1);
                        let rows = crate::linalg::transposed(&nalgebra::DMatrix::from_vec(n, d, data));
                        RowsF32::new(Vec::from(rows.data), n, d)
                    }
                    None => RowsF32::from_matrix(&vocab.unembed_columns(s, n)?, true),
                })
            } else {
                None
            };
            for (k, (sum, &(x, y))) in sums.iter_mut().zip(products).enumerate() {
                let chunk = |m: VocabMatrix| match m {
                    VocabMatrix::Embed => e.as_ref(),
                    VocabMatrix::UnembedT => u.as_ref(),
                };
                let (Some(left), Some(right)) = (chunk(x), chunk(y)) else { unreachable!("read above: it is used") };
                let (xt, y_rows) = (left.transposed(), right.rows());
                let d = xt.rows;
                if buffers.len() <= k {
                    buffers.push(nalgebra::DMatrix::zeros(d, y_rows.cols));
                }
                let buffer = &mut buffers[k];
                let scale = left.scale * right.scale;
                let acc = sum.get_or_insert_with(|| Matrix::zeros(d, y_rows.cols));
                if x == y {
                    // `W_Eᵀ W_E` and `W_U W_Uᵀ` are symmetric: their upper triangle only.
                    for i in (0..d).step_by(GRAM_BLOCK) {
                        let rows = GRAM_BLOCK.min(d - i);
                        sgemm_into(buffer, (i, i), xt.rows(i, rows), y_rows.columns(i, d - i));
                        add_scaled(acc, buffer, (i, i), (rows, d - i), scale);
                    }
                } else {
                    sgemm_into(buffer, (0, 0), xt, y_rows);
                    add_scaled(acc, buffer, (0, 0), (d, y_rows.cols), scale);
                }
            }
            progress.advance(1);
            progress.check()?;
        }
        Ok(sums)
    });
    add_groups(parts, products.len())
}

/// The vocabulary groups' sums of each product added in group order (so the bits do not depend
/// on the thread count); the first error, if a group failed.
fn add_groups(parts: Vec<Result<Vec<Option<Matrix>>, ExecError>>, n: usize) -> Result<Vec<Matrix>, ExecError> {
    let mut totals: Vec<Option<Matrix>> = vec![None; n];
    for part in parts {
        for (total, sum) in totals.iter_mut().zip(part?) {
            match (total.as_mut(), sum) {
                (Some(t), Some(sum)) => *t += sum,
                (None, sum) => *total = sum,
                (Some(_), None) => {}
            }
        }
    }
    Ok(totals.into_iter().map(|t| t.unwrap_or_else(|| Matrix::zeros(0, 0))).collect())
}

/// One pass of [`streamed_products`] in f64: `products`, all of whose operands have `length`
/// rows.
fn streamed_pass_f64(
    vocab: &dyn VocabRows,
    length: usize,
    products: &[(VocabMatrix, VocabMatrix)],
    progress: &dyn Progress,
) -> Result<Vec<Matrix>, ExecError> {
    // f64 operands are the chunks themselves, borrowed.
    let precision = Precision::F64;
    let uses = |m: VocabMatrix| products.iter().any(|&(x, y)| x == m || y == m);
    let parts = parallel_map(&vocab_groups(length), |&(start, end)| -> Result<Vec<Option<Matrix>>, ExecError> {
        let mut sums: Vec<Option<Matrix>> = vec![None; products.len()];
        for s in (start..end).step_by(VOCAB_CHUNK) {
            let n = VOCAB_CHUNK.min(end - s);
            let e = if uses(VocabMatrix::Embed) { Some(vocab.embed_rows(s, n)?) } else { None };
            let u = if uses(VocabMatrix::UnembedT) { Some(vocab.unembed_columns(s, n)?) } else { None };
            // Explicit transposed copies, made once per chunk: nalgebra's `tr_mul` is a loop of
            // dot products, ~15× slower than a GEMM.
            let e_t =
                e.as_ref().filter(|_| products.iter().any(|&(x, _)| x == VocabMatrix::Embed)).map(|e| e.transpose());
            let u_t =
                u.as_ref().filter(|_| products.iter().any(|&(_, y)| y == VocabMatrix::UnembedT)).map(|u| u.transpose());
            // Each in the products' precision, once.
            let [e, u, e_t, u_t] = [&e, &u, &e_t, &u_t].map(|m| m.as_ref().map(|m| precision.operand(m)));
            for (sum, &(x, y)) in sums.iter_mut().zip(products) {
                let left = match x {
                    VocabMatrix::Embed => e_t.as_ref(),
                    VocabMatrix::UnembedT => u.as_ref(),
                };
                let right = match y {
                    VocabMatrix::Embed => e.as_ref(),
                    VocabMatrix::UnembedT => u_t.as_ref(),
                };
                let (Some(left), Some(right)) = (left, right) else { unreachable!("read above: it is used") };
                // `W_Eᵀ W_E` and `W_U W_Uᵀ` are symmetric: their upper triangle only.
                let part = if x == y { left.gram_upper(right) } else { left.product(right) };
                match sum {
                    Some(acc) => *acc += part,
                    None => *sum = Some(part),
                }
            }
            progress.advance(1);
            progress.check()?;
        }
        Ok(sums)
    });
    add_groups(parts, products.len())
}

/// Runs `plan` on `inputs`: every statistic of every head and pair.
pub fn run(plan: &EvalPlan, inputs: &Inputs<'_>) -> Result<Results, ExecError> {
    let needed = plan.needed();
    let n = plan.shapes.len();
    let shapes = inputs.heads.layer_shapes();
    let n_layers = shapes.len();
    let layer_pairs = shapes
        .iter()
        .enumerate()
        .filter(|(_, &(h, _))| h > 0)
        .map(|(r, _)| shapes[..r].iter().filter(|&&(h, _)| h > 0).count());
    let n_heads: usize = shapes.iter().map(|&(h, _)| h).sum();

    let streamed: Vec<(Id, (VocabMatrix, VocabMatrix))> =
        stage_steps(plan, &needed, Deps::NONE).into_iter().filter_map(|s| Some((s, plan.streamed(s)?))).collect();
    let products: Vec<(VocabMatrix, VocabMatrix)> = streamed.iter().map(|&(_, p)| p).collect();
    let chunks: usize = pass_lengths(inputs.vocab, &products)
        .into_iter()
        .flat_map(vocab_groups)
        .map(|(s, e)| (e - s).div_ceil(VOCAB_CHUNK))
        .sum();
    inputs.progress.start("statistics", (chunks + 2 * n_heads + layer_pairs.sum::<usize>()) as u64);

    // 1. Once: the products over the vocabulary in one pass (a pass per length), then the rest.
    let mut shared: Frame<'_> = vec![None; n];
    for ((step, _), product) in
        streamed.iter().zip(streamed_products(inputs.vocab, &products, inputs.progress, inputs.precision)?)
    {
        shared[usize::from(*step)] = Some(Value::Matrix(Cow::Owned(product)));
    }
    for step in stage_steps(plan, &needed, Deps::NONE).into_iter().filter(|&s| plan.streamed(s).is_none()) {
        let value = Env::new(plan, inputs, &shared).eval(&shared, step)?;
        shared[usize::from(step)] = Some(value);
    }

    // The head-independent matrices rounded to f32 once, not once a head.
    let shared_operands: Option<Vec<Option<Operand<'static>>>> = (inputs.precision == Precision::F32).then(|| {
        shared
            .iter()
            .map(|value| match value {
                Some(Value::Matrix(m)) => Some(Precision::F32.operand(m).into_owned()),
                _ => None,
            })
            .collect()
    });
    let stages = Stages::new(plan, inputs, &shared, shared_operands.as_deref(), &needed);

    // 2. Per layer, layers on the threads: the per-head steps of its heads, and the stacks of
    // the per-head operands of the batched pair steps.
    let layers: Vec<usize> = (0..n_layers).collect();
    let left: Vec<LayerStage> =
        parallel_map(&layers, |&l| stages.layer(l, Deps::HEAD)).into_iter().collect::<Result<_, _>>()?;

    // 3, 4. Per layer as the right layer, last layers (most pairs) first, on the threads: its
    // per-right-head steps and stacks, then its pairs with every earlier layer; its weights and
    // values dropped after.
    let right_layers: Vec<usize> = (0..n_layers).rev().collect();
    let per_right =
        parallel_map(&right_layers, |&r| -> Result<(Vec<Frame<'static>>, Vec<Vec<PairValue>>), ExecError> {
            let right = stages.layer(r, Deps::RIGHT)?;
            let mut values: Vec<Vec<PairValue>> = vec![Vec::new(); stages.pair_roots.len()];
            if !right.frames.is_empty() {
                for (l, left) in left.iter().enumerate().take(r).filter(|(_, left)| !left.frames.is_empty()) {
                    for (all, part) in values.iter_mut().zip(stages.pairs(left, l, &right, r)?) {
                        all.extend(part);
                    }
                    inputs.progress.advance(1);
                    inputs.progress.check()?;
                }
            }
            Ok((right.frames, values))
        });
    inputs.progress.finish();

    let mut results = Results::default();
    let mut right_frames: Vec<Vec<Frame<'static>>> = vec![Vec::new(); n_layers];
    let empty_pairs: Vec<Vec<Vec<Vec<f64>>>> =
        shapes.iter().map(|&(h, _)| vec![shapes.iter().map(|&(g, _)| vec![0.0; g]).collect(); h]).collect();
    for &(stat, _) in &stages.pair_roots {
        results.per_pair.insert(stat, empty_pairs.clone());
    }
    for (&r, computed) in right_layers.iter().zip(per_right) {
        let (frames, values) = computed?;
        right_frames[r] = frames;
        for ((stat, _), per_pair) in stages.pair_roots.iter().zip(values) {
            let out = results.per_pair.get_mut(stat).expect("inserted above");
            for (l, h, rl, rh, v) in per_pair {
                out[l][h][rl][rh] = v;
            }
        }
    }
    for &(stat, root) in &plan.roots {
        let frames = |l: usize| match plan.shape(root).deps {
            Deps::HEAD => Some(&left[l].frames),
            Deps::RIGHT => Some(&right_frames[l]),
            _ => None,
        };
        if frames(0).is_none() && n_layers > 0 {
            continue;
        }
        let values = (0..n_layers)
            .map(|l| {
                let frames = frames(l).expect("a per-head root");
                frames.iter().map(|frame| frame[usize::from(root)].as_ref().map_or(0.0, Value::scalar)).collect()
            })
            .collect();
        results.per_head.insert(stat, values);
    }
    Ok(results)
}

/// The steps of one stage: those the plan needs whose indices are `deps`.
fn stage_steps(plan: &EvalPlan, needed: &[bool], deps: Deps) -> Vec<Id> {
    plan.step_ids().filter(|&s| needed[usize::from(s)] && plan.shape(s).deps == deps).collect()
}

/// How a per-head (or per-right-head) step's value is held ([`Stages::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// As a value (f64 matrix or scalar) in the head's frame.
    Value,
    /// Not at all: a weight's transpose, read as a view of the weight's f32 operand
    /// ([`Operand::F32T`]).
    View,
    /// As the f32 operand its product made ([`Env::eval_f32`]), not widened to f64 and rounded
    /// again for the products that read it.
    F32,
}

/// [`Stages::held`]: in f32, a per-head step whose every reader (that the plan needs) is a
/// product of the same stage that [`Env::eval`] runs in f32 (a Gram, or one above
/// [`SMALL_PRODUCT`]), reading it through [`Env::operand`], is a [`Held::View`] if it is a
/// weight's transpose and [`Held::F32`] if it is itself such a product (not a Gram, not a
/// statistic); every other step a [`Held::Value`].
fn held(plan: &EvalPlan, needed: &[bool], precision: Precision) -> Vec<Held> {
    let f32_product = |step: Id| match plan.node(step) {
        Plan::Mul([a, b]) => {
            let (x, y) = (plan.shape(*a), plan.shape(*b));
            plan.streamed(step).is_none() && (plan.is_gram(step) || x.rows * x.cols * y.cols > SMALL_PRODUCT)
        }
        _ => false,
    };
    let read_as_f32 = |id: Id| {
        let deps = plan.shape(id).deps;
        precision == Precision::F32
            && matches!(deps, Deps::HEAD | Deps::RIGHT)
            && !plan.roots.iter().any(|&(_, root)| root == id)
            && plan
                .step_ids()
                .filter(|&s| needed[usize::from(s)] && egg::Language::children(plan.node(s)).contains(&id))
                .all(|reader| plan.shape(reader).deps == deps && f32_product(reader))
    };
    plan.step_ids()
        .map(|id| match plan.node(id) {
            Plan::Transpose(inner) if plan.is_weight(*inner) && read_as_f32(id) => Held::View,
            Plan::Mul(_) if f32_product(id) && !plan.is_gram(id) && read_as_f32(id) => Held::F32,
            _ => Held::Value,
        })
        .collect()
}

/// What a layer's per-head (or per-right-head) stage leaves: each head's frame, holding only
/// what pair steps and statistics read, owned; and the layer's stacks of the operands of the
/// batched pair steps on that side.
struct LayerStage {
    frames: Vec<Frame<'static>>,
    stacks: std::collections::BTreeMap<StackKey, Stack>,
}

/// What the per-head and per-pair stages share: the plan, what it reads, and which values are
/// stacked.
struct Stages<'e, 'a> {
    plan: &'e EvalPlan,
    inputs: &'e Inputs<'a>,
    shared: &'e Frame<'a>,
    shared_operands: Option<&'e [Option<Operand<'static>>]>,
    head_steps: Vec<Id>,
    right_steps: Vec<Id>,
    pair_steps: Vec<Id>,
    pair_roots: Vec<(Stat, Id)>,
    batched: Vec<Batched>,
    /// `(batched step, ⟨it, it⟩ step)` where that inner product is the only step that reads the
    /// batched step's value: computed from the stacks' product directly ([`Batched::squared_norms`]),
    /// without each pair's block.
    fused: Vec<(Id, Id)>,
    /// Per step: read by a pair step, read by a pair step that is not batched, a root.
    read_by_pairs: Vec<bool>,
    read_unbatched: Vec<bool>,
    is_root: Vec<bool>,
    /// Per step, how a per-head stage holds its value ([`held`]): a weight's transpose that only
    /// f32 products of its stage read is not evaluated (its transposed copy in f64, rounded again,
    /// was 5 % of `pathc stats` on GPT-2 small), a product that only such products read is kept
    /// in f32.
    held: Vec<Held>,
}

impl<'e, 'a> Stages<'e, 'a> {
    fn new(
        plan: &'e EvalPlan,
        inputs: &'e Inputs<'a>,
        shared: &'e Frame<'a>,
        shared_operands: Option<&'e [Option<Operand<'static>>]>,
        needed: &[bool],
    ) -> Stages<'e, 'a> {
        let pair_steps = stage_steps(plan, needed, Deps::PAIR);
        let mut is_root = vec![false; plan.shapes.len()];
        for &(_, root) in &plan.roots {
            is_root[usize::from(root)] = true;
        }
        let batched: Vec<Batched> = pair_steps.iter().filter_map(|&step| Batched::of(plan, step)).collect();
        let readers =
            |id: Id| pair_steps.iter().filter(|&&s| egg::Language::children(plan.node(s)).contains(&id)).count();
        let fused = batched
            .iter()
            .filter(|b| !is_root[usize::from(b.step)] && readers(b.step) == 1)
            .filter_map(|b| {
                let dot = pair_steps.iter().find(|&&s| plan.node(s) == &Plan::Dot([b.step, b.step]))?;
                Some((b.step, *dot))
            })
            .collect();
        Stages {
            plan,
            inputs,
            shared,
            shared_operands,
            head_steps: stage_steps(plan, needed, Deps::HEAD),
            right_steps: stage_steps(plan, needed, Deps::RIGHT),
            batched,
            fused,
            pair_steps,
            pair_roots: plan.roots.iter().copied().filter(|&(_, root)| plan.shape(root).deps == Deps::PAIR).collect(),
            read_by_pairs: plan.read_by_pairs(),
            read_unbatched: plan.read_by_unbatched_pairs(),
            held: held(plan, needed, inputs.precision),
            is_root,
        }
    }

    /// The stacks the batched steps read of the per-head side (`Deps::HEAD`) or the
    /// per-right-head side, `(operand, by rows)`.
    fn stack_keys(&self, deps: Deps) -> Vec<StackKey> {
        let mut keys = Vec::new();
        for b in &self.batched {
            let [head, right] = b.keys();
            let key = if deps == Deps::HEAD { head } else { right };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// Runs the `deps` stage (`Deps::HEAD` or `Deps::RIGHT`) on every head of `layer`, its
    /// weights asked of [`Inputs::heads`] and dropped when done.
    fn layer(&self, layer: usize, deps: Deps) -> Result<LayerStage, ExecError> {
        let mut out = None;
        self.inputs.heads.with_layer(layer, &mut |weights| out = Some(self.run_layer(layer, deps, weights)))?;
        out.expect("with_layer calls its function")
    }

    fn run_layer(&self, layer: usize, deps: Deps, weights: &[HeadWeights<'_>]) -> Result<LayerStage, ExecError> {
        let (plan, precision) = (self.plan, self.inputs.precision);
        let n = plan.shapes.len();
        let steps = if deps == Deps::HEAD { &self.head_steps } else { &self.right_steps };
        let keys = self.stack_keys(deps);
        // A weight or a weight's transpose is stacked from the weights themselves.
        let stacked = |id: Id| keys.iter().any(|&(k, _)| k == id) && !plan.is_weight_view(id);
        let mut frames = Vec::with_capacity(weights.len());
        let mut rounded: Vec<Rounded> = Vec::with_capacity(weights.len());
        for head in 0..weights.len() {
            let mut local: Frame<'_> = vec![None; n];
            let weight_operands: Vec<std::cell::OnceCell<Operand<'static>>> = vec![std::cell::OnceCell::new(); n];
            let held_f32: Vec<std::cell::OnceCell<Operand<'static>>> = vec![std::cell::OnceCell::new(); n];
            let env = Env {
                head: (layer, head),
                right: (layer, head),
                layer: Some(weights),
                shared_operands: self.shared_operands,
                weight_operands: Some(&weight_operands),
                held_f32: Some(&held_f32),
                ..Env::new(plan, self.inputs, self.shared)
            };
            for &step in steps {
                match self.held[usize::from(step)] {
                    Held::Value => local[usize::from(step)] = Some(env.eval(&local, step)?),
                    Held::View => {}
                    Held::F32 => {
                        let product = env.eval_f32(&local, step);
                        assert!(held_f32[usize::from(step)].set(product).is_ok(), "each step is run once");
                    }
                }
            }
            self.inputs.progress.advance(1);
            self.inputs.progress.check()?;
            // Rounded for its stack (and kept as well if a pair step that is not batched reads
            // it); kept, owned, if a pair step or a statistic reads it; else dropped.
            let mut kept: Frame<'static> = vec![None; n];
            let mut head_rounded = Vec::new();
            for (i, slot) in local.into_iter().enumerate() {
                let (id, Some(value)) = (Id::from(i), slot) else { continue };
                if stacked(id) {
                    head_rounded.push((id, precision.operand(value.matrix()).into_owned()));
                    if !self.read_unbatched[i] && !self.is_root[i] {
                        continue;
                    }
                }
                if self.read_by_pairs[i] || self.is_root[i] {
                    kept[i] = Some(value.into_owned());
                }
            }
            frames.push(kept);
            rounded.push(head_rounded);
        }
        let stacks = keys
            .into_iter()
            .filter(|_| !weights.is_empty())
            .map(|(id, by_rows)| {
                let blocks: Vec<Operand<'_>> = (0..weights.len())
                    .map(|head| match plan.node(id) {
                        Plan::Weight(name) => precision.operand(weight_of(&weights[head], name.as_str())),
                        Plan::Transpose(inner) if plan.is_weight(*inner) => {
                            let Plan::Weight(name) = plan.node(*inner) else { unreachable!("checked above") };
                            precision.operand(&transposed(weight_of(&weights[head], name.as_str()))).into_owned()
                        }
                        _ => match rounded[head].iter().find(|(k, _)| *k == id) {
                            Some((_, operand)) => operand.borrowed(),
                            None => unreachable!("rounded by its head's stage"),
                        },
                    })
                    .collect();
                ((id, by_rows), Stack::of(&blocks, by_rows))
            })
            .collect();
        Ok(LayerStage { frames, stacks })
    }

    /// Every pair statistic of the pairs of a head of `left` (layer `l`) and one of `right`
    /// (layer `r`), per pair root: a batched step is one product of the two layers' stacks, the
    /// rest pair by pair.
    fn pairs(
        &self,
        left: &LayerStage,
        l: usize,
        right: &LayerStage,
        r: usize,
    ) -> Result<Vec<Vec<PairValue>>, ExecError> {
        let n = self.plan.shapes.len();
        let pairs: Vec<(usize, usize)> =
            (0..left.frames.len()).flat_map(|h| (0..right.frames.len()).map(move |g| (h, g))).collect();
        let mut locals: Vec<Frame<'_>> = vec![vec![None; n]; pairs.len()];
        for &step in &self.pair_steps {
            if self.fused.iter().any(|&(_, dot)| dot == step) {
                continue; // made with the product it reads, below
            }
            if let Some(b) = self.batched.iter().find(|b| b.step == step) {
                if let Some(&(_, dot)) = self.fused.iter().find(|&&(of, _)| of == step) {
                    for (local, norm) in locals.iter_mut().zip(b.squared_norms(&left.stacks, &right.stacks)) {
                        local[usize::from(dot)] = Some(Value::Scalar(norm));
                    }
                    continue;
                }
                for (local, part) in locals.iter_mut().zip(b.product(&left.stacks, &right.stacks)) {
                    local[usize::from(step)] = Some(Value::Matrix(Cow::Owned(part)));
                }
                continue;
            }
            for (local, &(h, g)) in locals.iter_mut().zip(&pairs) {
                let env = Env {
                    head_frame: Some(&left.frames[h]),
                    right_frame: Some(&right.frames[g]),
                    head: (l, h),
                    right: (r, g),
                    ..Env::new(self.plan, self.inputs, self.shared)
                };
                let value = env.eval(local, step)?;
                local[usize::from(step)] = Some(value);
            }
        }
        Ok(self
            .pair_roots
            .iter()
            .map(|&(_, root)| {
                pairs
                    .iter()
                    .zip(&locals)
                    .map(|(&(h, g), local)| (l, h, r, g, local[usize::from(root)].as_ref().map_or(0.0, Value::scalar)))
                    .collect()
            })
            .collect())
    }
}

/// A batched pair step ([`EvalPlan::batched`]): a product of a per-head and a per-right-head
/// matrix, computed for all pairs of a left layer's heads and a right layer's at once.
struct Batched {
    step: Id,
    /// The per-head operand and the per-right-head one.
    head: Id,
    right: Id,
    /// Whether the per-head operand is on the left of the product: then the left layer's
    /// operands are stacked by rows and the right layer's by columns, else the other way.
    head_first: bool,
}

impl Batched {
    fn of(plan: &EvalPlan, step: Id) -> Option<Batched> {
        let (head, right) = plan.batched(step)?;
        let head_first = matches!(plan.node(step), Plan::Mul([a, _]) if *a == head);
        Some(Batched { step, head, right, head_first })
    }

    /// The stacks it reads, `(operand, by rows)`: the per-head side's, then the right side's.
    fn keys(&self) -> [StackKey; 2] {
        [(self.head, self.head_first), (self.right, !self.head_first)]
    }

    /// This step for every pair of a head of the left layer (its stacks `left`) and one of the
    /// right layer (`right`): one product of their stacks, cut into one f64 block per pair
    /// (scaled back), left heads major.
    fn product(
        &self,
        left: &std::collections::BTreeMap<StackKey, Stack>,
        right: &std::collections::BTreeMap<StackKey, Stack>,
    ) -> Vec<Matrix> {
        self.blocks(left, right, |block| match block {
            Block::F64(p, scale) => p.map(|x| x * scale),
            Block::F32(p, scale) => p.map(|x| f64::from(x) * scale),
        })
    }

    /// `⟨B, B⟩` of each pair's block `B` of [`Batched::product`], summed in f64 from the stacks'
    /// product without making the blocks: the same entries as `B`'s, each squared and added in
    /// column-major order.
    fn squared_norms(
        &self,
        left: &std::collections::BTreeMap<StackKey, Stack>,
        right: &std::collections::BTreeMap<StackKey, Stack>,
    ) -> Vec<f64> {
        // Eight running sums over each column's slice (vectorised), added in order at the end.
        fn sum_of_squares<T: Copy + nalgebra::Scalar>(
            p: &nalgebra::DMatrixView<'_, T>,
            widen: impl Fn(T) -> f64,
        ) -> f64 {
            let (mut lanes, mut rest) = ([0.0f64; 8], 0.0);
            for j in 0..p.ncols() {
                let column = p.column(j);
                let column: &[T] = column.as_slice();
                let mut chunks = column.chunks_exact(8);
                for chunk in &mut chunks {
                    for (lane, &x) in lanes.iter_mut().zip(chunk) {
                        let x = widen(x);
                        *lane += x * x;
                    }
                }
                for &x in chunks.remainder() {
                    let x = widen(x);
                    rest += x * x;
                }
            }
            lanes.iter().sum::<f64>() + rest
        }
        self.blocks(left, right, |block| match block {
            Block::F64(p, scale) => sum_of_squares(&p, |x| x * scale),
            Block::F32(p, scale) => sum_of_squares(&p, |x| f64::from(x) * scale),
        })
    }

    /// `f` of each pair's block of the product of the two layers' stacks (a view of the product
    /// and the power of two to scale it back by), left heads major.
    fn blocks<T>(
        &self,
        left: &std::collections::BTreeMap<StackKey, Stack>,
        right: &std::collections::BTreeMap<StackKey, Stack>,
        f: impl Fn(Block<'_>) -> T,
    ) -> Vec<T> {
        let [head_key, right_key] = self.keys();
        let (left, right) = (&left[&head_key], &right[&right_key]);
        let (first, second) = if self.head_first { (left, right) } else { (right, left) };
        let offsets = |sizes: &[usize]| -> Vec<usize> {
            sizes.iter().scan(0, |at, &n| Some(std::mem::replace(at, *at + n))).collect()
        };
        let (rows, cols) = (offsets(&first.sizes), offsets(&second.sizes));
        enum Product {
            F64(Matrix),
            F32(nalgebra::DMatrix<f32>),
        }
        let product = match (&first.matrix, &second.matrix) {
            (StackMatrix::F64(x), StackMatrix::F64(y)) => Product::F64(x * y),
            (StackMatrix::F32(x), StackMatrix::F32Rows(yt)) => {
                Product::F32(f32_product(Strided::of(x), Strided::transpose_of(yt)))
            }
            _ => unreachable!("every stack is made in the one precision, the second by columns"),
        };
        // Block (i, j) of the product: first's head i times second's head j.
        let block = |i: usize, j: usize| -> T {
            let (corner, size) = ((rows[i], cols[j]), (first.sizes[i], second.sizes[j]));
            let scale = first.scales[i] * second.scales[j];
            f(match &product {
                Product::F64(p) => Block::F64(p.view(corner, size), scale),
                Product::F32(p) => Block::F32(p.view(corner, size), scale),
            })
        };
        let (n_first, n_second) = (first.sizes.len(), second.sizes.len());
        let mut out = Vec::with_capacity(n_first * n_second);
        if self.head_first {
            for i in 0..n_first {
                out.extend((0..n_second).map(|j| block(i, j)));
            }
        } else {
            // The rows are the right heads: left heads first.
            for j in 0..n_second {
                out.extend((0..n_first).map(|i| block(i, j)));
            }
        }
        out
    }
}

/// A pair's block of a batched product, and the power of two it is scaled back by.
enum Block<'p> {
    F64(nalgebra::DMatrixView<'p, f64>, f64),
    F32(nalgebra::DMatrixView<'p, f32>, f64),
}

/// One operand of the batched pair steps for every head of one layer, side by side (`by_rows`:
/// one above the other), in the precision's type, each head's block with the power of two it was
/// divided by (1 in f64): built once per layer, read by every product of that layer with another.
struct Stack {
    matrix: StackMatrix,
    /// Each head's rows (stacked by rows) or columns (by columns).
    sizes: Vec<usize>,
    scales: Vec<f64>,
}

enum StackMatrix {
    F64(Matrix),
    F32(nalgebra::DMatrix<f32>),
    /// An f32 stack by columns, stored row-major (as its transpose, column-major): the right
    /// operand of the batched products, whose kernels pack the right operand's rows into
    /// panels, with vector loads along a row where it is contiguous and one entry at a time
    /// where it is not (the column-major stack's packing was 10 % of the pair stage's time).
    F32Rows(nalgebra::DMatrix<f32>),
}

impl Stack {
    fn of(blocks: &[Operand<'_>], by_rows: bool) -> Stack {
        fn stack<T: nalgebra::Scalar + num_traits::Zero + Copy>(
            blocks: &[&nalgebra::DMatrix<T>],
            by_rows: bool,
        ) -> nalgebra::DMatrix<T> {
            let (rows, cols) = match blocks.first() {
                None => (0, 0),
                Some(b) if by_rows => (blocks.iter().map(|b| b.nrows()).sum(), b.ncols()),
                Some(b) => (b.nrows(), blocks.iter().map(|b| b.ncols()).sum()),
            };
            let mut out = nalgebra::DMatrix::<T>::zeros(rows, cols);
            let mut at = 0;
            for b in blocks {
                let corner = if by_rows { (at, 0) } else { (0, at) };
                out.view_mut(corner, b.shape()).copy_from(*b);
                at += if by_rows { b.nrows() } else { b.ncols() };
            }
            out
        }
        let size = |(rows, cols): (usize, usize)| if by_rows { rows } else { cols };
        let mut sizes = Vec::with_capacity(blocks.len());
        let mut scales = Vec::with_capacity(blocks.len());
        let (mut f64s, mut f32s) = (Vec::new(), Vec::new());
        for b in blocks {
            match b {
                Operand::F64(m) => {
                    sizes.push(size(m.shape()));
                    scales.push(1.0);
                    f64s.push(&**m);
                }
                Operand::F32(m, scale) => {
                    sizes.push(size(m.shape()));
                    scales.push(*scale);
                    f32s.push(&**m);
                }
                Operand::F32T(..) => unreachable!("stacks are made of rounded values and weights, not views"),
            }
        }
        let matrix = if f32s.is_empty() {
            StackMatrix::F64(stack(&f64s, by_rows))
        } else if by_rows {
            assert!(f64s.is_empty(), "every operand is made in the one precision");
            StackMatrix::F32(stack(&f32s, by_rows))
        } else {
            assert!(f64s.is_empty(), "every operand is made in the one precision");
            let transposes: Vec<nalgebra::DMatrix<f32>> = f32s.iter().map(|b| crate::linalg::transposed(*b)).collect();
            StackMatrix::F32Rows(stack(&transposes.iter().collect::<Vec<_>>(), true))
        };
        Stack { matrix, sizes, scales }
    }
}

#[cfg(test)]
mod tests {
    use super::{sgemm_with, F32Kernel, Strided};

    /// Both kernels, on every layout the executor hands them (column-major blocks, row-major
    /// chunks seen transposed, offsets into a larger buffer, a block of a larger output), agree
    /// with the product summed in f64 from the same f32 entries, to f32's rounding of sums of
    /// that length; the rest of the output is left as it was.
    #[test]
    fn both_f32_kernels_compute_the_product_on_any_strides() {
        let mut state = 7u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (m, k, n) in [(1, 1, 1), (3, 5, 2), (17, 33, 9), (64, 768, 64), (130, 70, 129)] {
            let data: Vec<f32> = (0..(m * k + k * n + 40)).map(|_| next()).collect();
            // `a` row-major at offset 3, `b` column-major right after it.
            let a = Strided::new(&data, 3, (m, k), (k, 1));
            let b = Strided::new(&data, 3 + m * k, (k, n), (1, k));
            let at = |s: &Strided<'_>, i: usize, j: usize| f64::from(s.data[s.offset + i * s.rs + j * s.cs]);
            for kernel in [F32Kernel::MatrixMultiply, F32Kernel::Gemm] {
                let mut out = nalgebra::DMatrix::<f32>::from_element(m + 2, n + 3, 9.0);
                sgemm_with(kernel, &mut out, (1, 2), a, b);
                for i in 0..m + 2 {
                    for j in 0..n + 3 {
                        let got = f64::from(out[(i, j)]);
                        if !(1..=m).contains(&i) || !(2..n + 2).contains(&j) {
                            assert_eq!(got, 9.0, "{kernel:?} wrote outside its block at ({i}, {j})");
                            continue;
                        }
                        let want: f64 = (0..k).map(|l| at(&a, i - 1, l) * at(&b, l, j - 2)).sum();
                        let bound: f64 = (0..k).map(|l| (at(&a, i - 1, l) * at(&b, l, j - 2)).abs()).sum::<f64>();
                        assert!(
                            (got - want).abs() <= 2.0 * k as f64 * f64::from(f32::EPSILON) * bound + 1e-30,
                            "{kernel:?} {m}×{k}×{n} at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
