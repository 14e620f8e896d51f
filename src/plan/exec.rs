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
//!    then reads both).
//! 2. **per head**, every head on the threads: the steps of `h`.
//! 3. **per right head**: the steps of `r` (the right head of a composition score).
//! 4. **per pair**, per left head on the threads: a product of a per-head and a per-right-head
//!    matrix is one GEMM against every later head's matrices side by side; the rest pair by
//!    pair.
//!
//! Per-head values are kept only if a pair step or a statistic reads them. Every result is
//! computed by the same sequence of operations whatever the scheduling, so runs are
//! bit-identical.

use std::borrow::Cow;

use egg::Id;

use super::{Deps, EvalPlan, Plan, Stat, VocabMatrix, VOCAB_CHUNK};
use crate::linalg::{copying_score, finite, Matrix, NoConvergence, NonFinite};
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

/// The precision of a plan's matrix products; everything else (sums over the vocabulary's
/// chunks, traces, norms, eigenvalues) is f64 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Each product's operands divided by a power of two (`power_of_two_scale`), rounded to
    /// f32 and multiplied by the f32 kernel (twice the f64 rate), the result widened to f64 and
    /// scaled back; a product over the vocabulary is summed in f64 chunk by chunk
    /// ([`VOCAB_CHUNK`] rows of f32 sums each); products of at most [`SMALL_PRODUCT`]
    /// multiply-adds stay f64.
    F32,
    /// Every product in f64.
    #[default]
    F64,
}

impl Precision {
    /// `m` as an operand of this precision's products: borrowed in f64, rounded to f32 once.
    fn operand(self, m: &Matrix) -> Operand<'_> {
        match self {
            Precision::F64 => Operand::F64(Cow::Borrowed(m)),
            Precision::F32 => {
                let scale = power_of_two_scale(m);
                let inverse = 1.0 / scale;
                Operand::F32(Cow::Owned(m.map(|x| (x * inverse) as f32)), scale)
            }
        }
    }
}

/// The power of two at or above a matrix's largest magnitude (1 for a zero or non-finite one):
/// dividing by it is exact, and puts the entries in [-1, 1], so that rounding them to f32 and
/// multiplying neither overflows nor underflows where f64 would not (f32's range ends at 3.4e38;
/// an entry below 1e-38 of the largest is flushed, which changes no sum by more than that).
fn power_of_two_scale(m: &Matrix) -> f64 {
    power_of_two_above(m.amax())
}

fn power_of_two_above(largest: f64) -> f64 {
    if largest > 0.0 && largest.is_finite() {
        2f64.powi((largest.log2().ceil() as i32).clamp(-1000, 1000))
    } else {
        1.0
    }
}

/// A product's operand in the precision it is multiplied in (made once where several products
/// read it: a vocabulary chunk, a head-independent matrix); in f32 with the power of two it was
/// divided by ([`power_of_two_scale`]).
#[derive(Debug, Clone)]
enum Operand<'m> {
    F64(Cow<'m, Matrix>),
    F32(Cow<'m, nalgebra::DMatrix<f32>>, f64),
}

impl Operand<'_> {
    fn into_owned(self) -> Operand<'static> {
        match self {
            Operand::F64(m) => Operand::F64(Cow::Owned(m.into_owned())),
            Operand::F32(m, scale) => Operand::F32(Cow::Owned(m.into_owned()), scale),
        }
    }

    /// `self · b`, in f64.
    fn product(&self, b: &Operand<'_>) -> Matrix {
        match (self, b) {
            (Operand::F64(a), Operand::F64(b)) => &**a * &**b,
            (Operand::F32(a, sa), Operand::F32(b, sb)) => (&**a * &**b).map(|x| f64::from(x) * sa * sb),
            _ => unreachable!("both operands of a product are made by one precision"),
        }
    }

    /// `self · b` where `self = bᵀ` (a Gram matrix, symmetric), only its blocks on and above
    /// the diagonal, [`GRAM_BLOCK`] rows at a time: 58 % of the product's work at d_model 768.
    /// The rest is zero until [`mirror_upper`] fills it in.
    fn gram_upper(&self, b: &Operand<'_>) -> Matrix {
        fn blocks<
            T: nalgebra::Scalar
                + num_traits::Zero
                + num_traits::One
                + nalgebra::ClosedAddAssign
                + nalgebra::ClosedMulAssign
                + Copy,
        >(
            a: &nalgebra::DMatrix<T>,
            b: &nalgebra::DMatrix<T>,
            widen: impl Fn(T) -> f64 + Copy,
        ) -> Matrix {
            let n = a.nrows();
            let mut out = Matrix::zeros(n, n);
            for i in (0..n).step_by(GRAM_BLOCK) {
                let rows = GRAM_BLOCK.min(n - i);
                let block = a.rows(i, rows) * b.columns(i, n - i);
                out.view_mut((i, i), (rows, n - i)).zip_apply(&block, |o, x| *o = widen(x));
            }
            out
        }
        match (self, b) {
            (Operand::F64(a), Operand::F64(b)) => blocks(a, b, |x| x),
            (Operand::F32(a, sa), Operand::F32(b, sb)) => blocks(a, b, |x| f64::from(x) * sa * sb),
            _ => unreachable!("both operands of a product are made by one precision"),
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

/// A head's index in the list of all heads, and its (layer, head).
type IndexedHead = (usize, (usize, usize));

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
}

/// What a plan runs on.
pub struct Inputs<'a> {
    /// `[layer][head]`.
    pub heads: Vec<Vec<HeadWeights<'a>>>,
    pub vocab: &'a dyn VocabRows,
    /// Told of every vocabulary chunk, head and left head done.
    pub progress: &'a dyn Progress,
    pub precision: Precision,
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
    /// The head-independent matrices as operands of the precision, made once for the stages
    /// after the first.
    shared_operands: Option<&'e [Option<Operand<'static>>]>,
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
            shared_operands: None,
        }
    }

    fn get<'f>(&'f self, local: &'f Frame<'a>, id: Id) -> &'f Value<'a> {
        let frame = match self.plan.shape(id).deps {
            Deps::NONE => self.shared,
            Deps::HEAD => self.head_frame.unwrap_or(local),
            Deps::RIGHT => self.right_frame.unwrap_or(local),
            _ => local,
        };
        match frame[usize::from(id)].as_ref() {
            Some(value) => value,
            None => unreachable!("step %{id} is evaluated before the steps that read it"),
        }
    }

    /// A step's value as a product's operand: a head-independent one made once ([`Env::shared_operands`]).
    fn operand<'f>(&'f self, local: &'f Frame<'a>, id: Id) -> Operand<'f> {
        match self.shared_operands.and_then(|ops| ops[usize::from(id)].as_ref()) {
            Some(Operand::F32(m, scale)) => Operand::F32(Cow::Borrowed(&**m), *scale),
            Some(Operand::F64(m)) => Operand::F64(Cow::Borrowed(&**m)),
            None => self.inputs.precision.operand(self.get(local, id).matrix()),
        }
    }

    fn weight(&self, name: &str, bound: (usize, usize)) -> Value<'a> {
        Value::Matrix(Cow::Borrowed(self.weight_matrix(name, bound)))
    }

    fn weight_matrix(&self, name: &str, (layer, head): (usize, usize)) -> &'a Matrix {
        let (matrix, _) = name.split_once('[').unwrap_or((name, ""));
        let w = self.inputs.heads[layer][head];
        match matrix {
            "W_Q" => w.w_q,
            "W_K" => w.w_k,
            "W_V" => w.w_v,
            _ => w.w_o,
        }
    }

    /// Evaluates one step (not a streamed product), its operands in `local` or the stage frames.
    fn eval(&self, local: &Frame<'a>, step: Id) -> Result<Value<'a>, ExecError> {
        let plan = self.plan;
        let get = |id: Id| self.get(local, id);
        Ok(match plan.node(step) {
            Plan::Weight(name) => match plan.shape(step).deps {
                Deps::HEAD => self.weight(name.as_str(), self.head),
                Deps::RIGHT => self.weight(name.as_str(), self.right),
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
                let (x, y) = (get(*a).matrix(), get(*b).matrix());
                if x.nrows() * x.ncols() * y.ncols() <= SMALL_PRODUCT {
                    Value::Matrix(Cow::Owned(x * y))
                } else {
                    Value::Matrix(Cow::Owned(self.operand(local, *a).product(&self.operand(local, *b))))
                }
            }
            Plan::Transpose(a) => Value::Matrix(Cow::Owned(get(*a).matrix().transpose())),
            Plan::Trace(a) => Value::Scalar(get(*a).matrix().trace()),
            Plan::Dot([a, b]) => Value::Scalar(get(*a).matrix().dot(get(*b).matrix())),
            // The square root of a sum of squares computed as a trace: clamped at 0, so that
            // rounding cannot make it NaN.
            Plan::Sqrt(a) => Value::Scalar(get(*a).scalar().max(0.0).sqrt()),
            Plan::Frobenius(a) => Value::Scalar(get(*a).matrix().norm()),
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
        for (i, product) in of_pass.into_iter().zip(streamed_pass(vocab, length, &pass, progress, precision)?) {
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

/// One pass of [`streamed_products`]: `products`, all of whose operands have `length` rows.
fn streamed_pass(
    vocab: &dyn VocabRows,
    length: usize,
    products: &[(VocabMatrix, VocabMatrix)],
    progress: &dyn Progress,
    precision: Precision,
) -> Result<Vec<Matrix>, ExecError> {
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
    let mut totals: Vec<Option<Matrix>> = vec![None; products.len()];
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

/// Runs `plan` on `inputs`: every statistic of every head and pair.
pub fn run(plan: &EvalPlan, inputs: &Inputs<'_>) -> Result<Results, ExecError> {
    let needed = plan.needed();
    let read_by_pairs = plan.read_by_pairs();
    let is_root = |id: Id| plan.roots.iter().any(|&(_, root)| root == id);
    let stage = |deps: Deps| -> Vec<Id> {
        plan.step_ids().filter(|&s| needed[usize::from(s)] && plan.shape(s).deps == deps).collect()
    };
    let n = plan.shapes.len();
    let heads: Vec<(usize, usize)> =
        inputs.heads.iter().enumerate().flat_map(|(l, layer)| (0..layer.len()).map(move |h| (l, h))).collect();

    let streamed: Vec<(Id, (VocabMatrix, VocabMatrix))> =
        stage(Deps::NONE).into_iter().filter_map(|s| Some((s, plan.streamed(s)?))).collect();
    let products: Vec<(VocabMatrix, VocabMatrix)> = streamed.iter().map(|&(_, p)| p).collect();
    let chunks: usize = pass_lengths(inputs.vocab, &products)
        .into_iter()
        .flat_map(vocab_groups)
        .map(|(s, e)| (e - s).div_ceil(VOCAB_CHUNK))
        .sum();
    let n_layers = inputs.heads.len();
    inputs.progress.start("statistics", (chunks + 2 * heads.len() + n_layers * n_layers.saturating_sub(1) / 2) as u64);

    // 1. Once: the products over the vocabulary in one pass (a pass per length), then the rest.
    let mut shared: Frame<'_> = vec![None; n];
    for ((step, _), product) in
        streamed.iter().zip(streamed_products(inputs.vocab, &products, inputs.progress, inputs.precision)?)
    {
        shared[usize::from(*step)] = Some(Value::Matrix(Cow::Owned(product)));
    }
    for step in stage(Deps::NONE).into_iter().filter(|&s| plan.streamed(s).is_none()) {
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
    let shared_operands = shared_operands.as_deref();

    // 2, 3. Per head, then per right head: keep what pairs and statistics read.
    let per_head_stage = |deps: Deps| -> Result<Vec<Frame<'_>>, ExecError> {
        let steps = stage(deps);
        parallel_map(&heads, |&bound| {
            let mut local: Frame<'_> = vec![None; n];
            let env = Env { head: bound, right: bound, shared_operands, ..Env::new(plan, inputs, &shared) };
            for &step in &steps {
                let value = env.eval(&local, step)?;
                local[usize::from(step)] = Some(value);
            }
            inputs.progress.advance(1);
            inputs.progress.check()?;
            for (i, slot) in local.iter_mut().enumerate() {
                // Weights are borrowed, not copied: keeping them costs nothing.
                if !(read_by_pairs[i] || is_root(Id::from(i)) || plan.is_weight(Id::from(i))) {
                    *slot = None;
                }
            }
            Ok(local)
        })
        .into_iter()
        .collect()
    };
    let head_frames = per_head_stage(Deps::HEAD)?;
    let right_frames = per_head_stage(Deps::RIGHT)?;

    let mut results = Results::default();
    let zeros: Vec<Vec<f64>> = inputs.heads.iter().map(|layer| vec![0.0; layer.len()]).collect();
    for &(stat, root) in &plan.roots {
        let frames = match plan.shape(root).deps {
            Deps::HEAD => &head_frames,
            Deps::RIGHT => &right_frames,
            _ => continue,
        };
        let mut values = zeros.clone();
        for (&(l, h), frame) in heads.iter().zip(frames) {
            values[l][h] = frame[usize::from(root)].as_ref().map_or(0.0, Value::scalar);
        }
        results.per_head.insert(stat, values);
    }

    // 4. Per pair, by (left layer, right layer): a batched step is one product of the left
    // layer's operands stacked by the right layer's (a GEMM of layer-sized sides), the rest pair
    // by pair.
    let pair_steps = stage(Deps::PAIR);
    let pair_roots: Vec<(Stat, Id)> =
        plan.roots.iter().copied().filter(|&(_, root)| plan.shape(root).deps == Deps::PAIR).collect();
    let of_layer = |layer: usize| -> Vec<IndexedHead> {
        heads.iter().copied().enumerate().filter(|&(_, (l, _))| l == layer).collect()
    };
    let layer_pairs: Vec<(usize, usize)> = (0..inputs.heads.len())
        .flat_map(|l| (l + 1..inputs.heads.len()).map(move |r| (l, r)))
        .filter(|&(l, r)| !inputs.heads[l].is_empty() && !inputs.heads[r].is_empty())
        .collect();
    let per_layer_pair = parallel_map(&layer_pairs, |&(left_layer, right_layer)| {
        let (lefts, rights) = (of_layer(left_layer), of_layer(right_layer));
        let pairs: Vec<(IndexedHead, IndexedHead)> =
            lefts.iter().flat_map(|&left| rights.iter().map(move |&right| (left, right))).collect();
        let mut locals: Vec<Frame<'_>> = vec![vec![None; n]; pairs.len()];
        for &step in &pair_steps {
            let env = Env::new(plan, inputs, &shared);
            if let Some(parts) = batched_pair_product(&env, step, &head_frames, &right_frames, &lefts, &rights) {
                for (local, part) in locals.iter_mut().zip(parts) {
                    local[usize::from(step)] = Some(Value::Matrix(Cow::Owned(part)));
                }
                continue;
            }
            for (local, &((i, head), (j, right))) in locals.iter_mut().zip(&pairs) {
                let env = Env {
                    head_frame: Some(&head_frames[i]),
                    right_frame: Some(&right_frames[j]),
                    head,
                    right,
                    ..Env::new(plan, inputs, &shared)
                };
                let value = env.eval(local, step)?;
                local[usize::from(step)] = Some(value);
            }
        }
        let values: Vec<Vec<PairValue>> = pair_roots
            .iter()
            .map(|&(_, root)| {
                pairs
                    .iter()
                    .zip(&locals)
                    .map(|(&((_, (l, h)), (_, (rl, rh))), local)| {
                        (l, h, rl, rh, local[usize::from(root)].as_ref().map_or(0.0, Value::scalar))
                    })
                    .collect()
            })
            .collect();
        inputs.progress.advance(1);
        inputs.progress.check()?;
        Ok::<_, ExecError>(values)
    });
    inputs.progress.finish();
    let empty_pairs: Vec<Vec<Vec<Vec<f64>>>> = zeros.iter().map(|row| vec![zeros.clone(); row.len()]).collect();
    for &(stat, _) in &pair_roots {
        results.per_pair.insert(stat, empty_pairs.clone());
    }
    for values in per_layer_pair {
        for ((stat, _), per_pair) in pair_roots.iter().zip(values?) {
            let out = results.per_pair.get_mut(stat).expect("inserted above");
            for (l, h, rl, rh, v) in per_pair {
                out[l][h][rl][rh] = v;
            }
        }
    }
    Ok(results)
}

/// A batched pair step ([`EvalPlan::batched`]) for every pair of a left layer's heads
/// (`lefts`) and a right layer's (`rights`): one product of the left heads' operands stacked (by
/// rows, or by columns when the left operand is on the right) and the right heads' stacked the
/// other way, cut into one block per pair, in `lefts`-major order. An operand that is a weight or
/// a weight's transpose is read from the weights (transposed as it is stacked), not from a kept
/// value. `None` for any other step.
fn batched_pair_product<'f, 'a: 'f>(
    env: &Env<'_, 'a>,
    step: Id,
    head_frames: &'f [Frame<'a>],
    right_frames: &'f [Frame<'a>],
    lefts: &[IndexedHead],
    rights: &[IndexedHead],
) -> Option<Vec<Matrix>> {
    fn kept<'f>(frame: &'f Frame<'_>, id: Id) -> &'f Matrix {
        frame[usize::from(id)].as_ref().map(Value::matrix).expect("kept: a pair step reads it")
    }
    let plan = env.plan;
    let (head_operand, right_operand) = plan.batched(step)?;
    if rights.is_empty() || lefts.is_empty() {
        return None;
    }
    // Weights and kept values are borrowed; only a weight's transpose is made here.
    let operand = |id: Id, frame: &'f Frame<'a>, bound: (usize, usize)| -> Cow<'f, Matrix> {
        match plan.node(id) {
            Plan::Weight(name) => Cow::Borrowed(env.weight_matrix(name.as_str(), bound)),
            Plan::Transpose(inner) => match plan.node(*inner) {
                Plan::Weight(name) => Cow::Owned(env.weight_matrix(name.as_str(), bound).transpose()),
                _ => Cow::Borrowed(kept(frame, id)),
            },
            _ => Cow::Borrowed(kept(frame, id)),
        }
    };
    let left_blocks: Vec<Cow<'_, Matrix>> =
        lefts.iter().map(|&(i, bound)| operand(head_operand, &head_frames[i], bound)).collect();
    let right_blocks: Vec<Cow<'_, Matrix>> =
        rights.iter().map(|&(j, bound)| operand(right_operand, &right_frames[j], bound)).collect();
    let head_first = matches!(plan.node(step), Plan::Mul([a, _]) if *a == head_operand);
    let precision = env.inputs.precision;
    let mut parts = Vec::with_capacity(lefts.len() * rights.len());
    if head_first {
        // [left heads' rows] · [right heads' columns].
        let product = stacked(precision, &left_blocks, true).product(&stacked(precision, &right_blocks, false));
        let mut row = 0;
        for l in &left_blocks {
            let mut col = 0;
            for r in &right_blocks {
                parts.push(product.view((row, col), (l.nrows(), r.ncols())).into_owned());
                col += r.ncols();
            }
            row += l.nrows();
        }
    } else {
        // [right heads' rows] · [left heads' columns].
        let product = stacked(precision, &right_blocks, true).product(&stacked(precision, &left_blocks, false));
        let mut col = 0;
        let mut blocks = vec![Vec::new(); left_blocks.len()];
        for (a, l) in left_blocks.iter().enumerate() {
            let mut row = 0;
            for r in &right_blocks {
                blocks[a].push(product.view((row, col), (r.nrows(), l.ncols())).into_owned());
                row += r.nrows();
            }
            col += l.ncols();
        }
        parts.extend(blocks.into_iter().flatten());
    }
    Some(parts)
}

/// `blocks` side by side (`by_rows`: one above the other) as an operand of `precision`, each
/// entry rounded as it is copied.
fn stacked(precision: Precision, blocks: &[Cow<'_, Matrix>], by_rows: bool) -> Operand<'static> {
    fn stack<T: nalgebra::Scalar + num_traits::Zero + Copy>(
        blocks: &[Cow<'_, Matrix>],
        by_rows: bool,
        round: impl Fn(f64) -> T,
    ) -> nalgebra::DMatrix<T> {
        let (rows, cols) = match blocks.first() {
            None => (0, 0),
            Some(b) if by_rows => (blocks.iter().map(|b| b.nrows()).sum(), b.ncols()),
            Some(b) => (b.nrows(), blocks.iter().map(|b| b.ncols()).sum()),
        };
        let mut out = nalgebra::DMatrix::<T>::zeros(rows, cols);
        let mut at = 0;
        for b in blocks {
            let (corner, size) = if by_rows { ((at, 0), b.shape()) } else { ((0, at), b.shape()) };
            out.view_mut(corner, size).zip_apply(&**b, |o, x| *o = round(x));
            at += if by_rows { b.nrows() } else { b.ncols() };
        }
        out
    }
    match precision {
        Precision::F64 => Operand::F64(Cow::Owned(stack(blocks, by_rows, |x| x))),
        Precision::F32 => {
            let scale = power_of_two_above(blocks.iter().map(|b| b.amax()).fold(0.0, f64::max));
            let inverse = 1.0 / scale;
            Operand::F32(Cow::Owned(stack(blocks, by_rows, |x| (x * inverse) as f32)), scale)
        }
    }
}
