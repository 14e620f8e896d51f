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
}

impl<'e, 'a> Env<'e, 'a> {
    /// No head bound and no per-head frames: the head-independent stage.
    fn new(plan: &'e EvalPlan, inputs: &'e Inputs<'a>, shared: &'e Frame<'a>) -> Env<'e, 'a> {
        Env { plan, inputs, shared, head_frame: None, right_frame: None, head: (0, 0), right: (0, 0) }
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
            Plan::Mul([a, b]) => Value::Matrix(Cow::Owned(get(*a).matrix() * get(*b).matrix())),
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
) -> Result<Vec<Matrix>, ExecError> {
    let mut results: Vec<Option<Matrix>> = vec![None; products.len()];
    for length in pass_lengths(vocab, products) {
        let of_pass: Vec<usize> =
            (0..products.len()).filter(|&i| vocab_length(vocab, products[i].0) == length).collect();
        let pass: Vec<(VocabMatrix, VocabMatrix)> = of_pass.iter().map(|&i| products[i]).collect();
        for (i, product) in of_pass.into_iter().zip(streamed_pass(vocab, length, &pass, progress)?) {
            results[i] = Some(product);
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every product is in the pass of its length")).collect())
}

/// One pass of [`streamed_products`]: `products`, all of whose operands have `length` rows.
fn streamed_pass(
    vocab: &dyn VocabRows,
    length: usize,
    products: &[(VocabMatrix, VocabMatrix)],
    progress: &dyn Progress,
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
                match sum {
                    Some(acc) => acc.gemm(1.0, left, right, 1.0),
                    None => *sum = Some(left * right),
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
    inputs.progress.start("statistics", (chunks + 3 * heads.len()) as u64);

    // 1. Once: the products over the vocabulary in one pass (a pass per length), then the rest.
    let mut shared: Frame<'_> = vec![None; n];
    for ((step, _), product) in streamed.iter().zip(streamed_products(inputs.vocab, &products, inputs.progress)?) {
        shared[usize::from(*step)] = Some(Value::Matrix(Cow::Owned(product)));
    }
    for step in stage(Deps::NONE).into_iter().filter(|&s| plan.streamed(s).is_none()) {
        let value = Env::new(plan, inputs, &shared).eval(&shared, step)?;
        shared[usize::from(step)] = Some(value);
    }

    // 2, 3. Per head, then per right head: keep what pairs and statistics read.
    let per_head_stage = |deps: Deps| -> Result<Vec<Frame<'_>>, ExecError> {
        let steps = stage(deps);
        parallel_map(&heads, |&bound| {
            let mut local: Frame<'_> = vec![None; n];
            let env = Env { head: bound, right: bound, ..Env::new(plan, inputs, &shared) };
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

    // 4. Per pair, by left head.
    let pair_steps = stage(Deps::PAIR);
    let pair_roots: Vec<(Stat, Id)> =
        plan.roots.iter().copied().filter(|&(_, root)| plan.shape(root).deps == Deps::PAIR).collect();
    let per_left = parallel_map(&heads.iter().copied().enumerate().collect::<Vec<_>>(), |&(i, (l, h))| {
        let rights: Vec<(usize, (usize, usize))> =
            heads.iter().copied().enumerate().filter(|&(_, (rl, _))| rl > l).collect();
        let mut locals: Vec<Frame<'_>> = vec![vec![None; n]; rights.len()];
        for &step in &pair_steps {
            let env = Env { head_frame: Some(&head_frames[i]), head: (l, h), ..Env::new(plan, inputs, &shared) };
            if let Some(parts) = batched_pair_product(&env, step, &head_frames[i], &right_frames, &rights) {
                for (local, part) in locals.iter_mut().zip(parts) {
                    local[usize::from(step)] = Some(Value::Matrix(Cow::Owned(part)));
                }
                continue;
            }
            for (local, &(j, bound)) in locals.iter_mut().zip(&rights) {
                let env = Env {
                    head_frame: Some(&head_frames[i]),
                    right_frame: Some(&right_frames[j]),
                    head: (l, h),
                    right: bound,
                    ..Env::new(plan, inputs, &shared)
                };
                let value = env.eval(local, step)?;
                local[usize::from(step)] = Some(value);
            }
        }
        let values: Vec<Vec<(usize, usize, f64)>> = pair_roots
            .iter()
            .map(|&(_, root)| {
                rights
                    .iter()
                    .zip(&locals)
                    .map(|(&(_, (rl, rh)), local)| {
                        (rl, rh, local[usize::from(root)].as_ref().map_or(0.0, Value::scalar))
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
    for (&(l, h), values) in heads.iter().zip(per_left) {
        for ((stat, _), per_right) in pair_roots.iter().zip(values?) {
            let out = results.per_pair.get_mut(stat).expect("inserted above");
            for (rl, rh, v) in per_right {
                out[l][h][rl][rh] = v;
            }
        }
    }
    Ok(results)
}

/// A batched pair step ([`EvalPlan::batched`]) for one left head and all its right heads: one
/// product per right layer with its heads' operands side by side (or stacked), cut into one
/// block per pair.
/// An operand that is a weight or a weight's transpose is read from the weights (transposed as it
/// is stacked), not from a kept value. `None` for any other step.
fn batched_pair_product<'f, 'a: 'f>(
    env: &Env<'_, 'a>,
    step: Id,
    head_frame: &'f Frame<'a>,
    right_frames: &'f [Frame<'a>],
    rights: &[(usize, (usize, usize))],
) -> Option<Vec<Matrix>> {
    fn kept<'f>(frame: &'f Frame<'_>, id: Id) -> &'f Matrix {
        frame[usize::from(id)].as_ref().map(Value::matrix).expect("kept: a pair step reads it")
    }
    let plan = env.plan;
    let (head_operand, right_operand) = plan.batched(step)?;
    if rights.is_empty() {
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
    let head_value = operand(head_operand, head_frame, env.head);
    let head_first = matches!(plan.node(step), Plan::Mul([a, _]) if *a == head_operand);
    // One product per right layer: GEMMs of a useful size, and stacked operands of one layer's
    // heads at a time (all later heads' at once are 52 MB per thread at GPT-2 size).
    let mut parts = Vec::with_capacity(rights.len());
    for group in rights.chunk_by(|a, b| a.1 .0 == b.1 .0) {
        let blocks: Vec<Cow<'_, Matrix>> =
            group.iter().map(|&(j, bound)| operand(right_operand, &right_frames[j], bound)).collect();
        if head_first {
            let product = &*head_value * stack_columns(&blocks);
            let mut col = 0;
            for block in &blocks {
                parts.push(product.columns(col, block.ncols()).into_owned());
                col += block.ncols();
            }
        } else {
            let product = stack_rows(&blocks) * &*head_value;
            let mut row = 0;
            for block in &blocks {
                parts.push(product.rows(row, block.nrows()).into_owned());
                row += block.nrows();
            }
        }
    }
    Some(parts)
}

fn stack_rows(blocks: &[Cow<'_, Matrix>]) -> Matrix {
    let cols = blocks.first().map_or(0, |b| b.ncols());
    let mut out = Matrix::zeros(blocks.iter().map(|b| b.nrows()).sum(), cols);
    let mut row = 0;
    for b in blocks {
        out.view_mut((row, 0), b.shape()).copy_from(b);
        row += b.nrows();
    }
    out
}

fn stack_columns(blocks: &[Cow<'_, Matrix>]) -> Matrix {
    let rows = blocks.first().map_or(0, |b| b.nrows());
    let mut out = Matrix::zeros(rows, blocks.iter().map(|b| b.ncols()).sum());
    let mut col = 0;
    for b in blocks {
        out.view_mut((0, col), b.shape()).copy_from(b);
        col += b.ncols();
    }
    out
}
