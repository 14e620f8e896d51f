//! Per-head circuit statistics (Elhage et al. 2021; TransformerLens), all in factored form.
//!
//! Layout: TransformerLens's row vectors (`x @ W`), as in [`Params`]. For head `(l, h)`
//!
//! - the full OV circuit is `W_E W_V W_O W_U` (d_vocab × d_vocab_out; TransformerLens
//!   `model.W_E @ model.OV @ model.W_U`),
//! - the full QK circuit is `W_E W_Q W_Kᵀ W_Eᵀ` (d_vocab × d_vocab; TransformerLens
//!   `model.W_E @ model.QK @ model.W_E.T`). Like TransformerLens's `model.QK`, it does **not**
//!   include the `1 / attn_scale` factor of the attention scores: `qk_frobenius` is the norm of
//!   the unscaled bilinear form (divide it by `attn_scale` for the scores' scale; the copying
//!   ratio is scale-free).
//!
//! **Other architectures.** With an output vocabulary of its own (`unembed(d_vocab_out = N)`,
//! `N ≠ d_vocab`) the full OV circuit is not square: it has no eigenvalues, so `ov_copying` is
//! not computed and [`Stats::not_defined`] says why; its Frobenius norm and every QK and
//! composition statistic are. In a rotary layer a score is `x_i W_Q Rot(i − j) W_Kᵀ x_jᵀ`
//! ([`crate::eval::rotary`]), so the QK circuit depends on the offset `Δ = i − j` (query position
//! minus key position): the QK statistics are those of `W_QK(Δ) = W_Q Rot(Δ) W_Kᵀ` at the offset
//! [`StatsOptions::rotary_offset`] gives (0 by default, where `Rot = Id`: TransformerLens's
//! position-free numbers), computed by giving the plan `W_Q Rot(Δ)` (d_model × d_head, once per
//! head) in place of `W_Q` — exact. That changes `qk_copying`, `qk_frobenius` and the Q- and
//! K-composition scores (whose right-hand matrix is `W_QK(Δ)` or its transpose); OV and
//! V-composition do not involve `W_Q`. With grouped-query attention every query head reads its
//! group's `W_K`, `W_V` (by reference, as TransformerLens's `repeat_interleave` expands them);
//! a shortformer `W_pos` enters no circuit (as in TransformerLens).
//!
//! On full models these are statistics of the weight matrices as they are: norms, MLPs and
//! biases take no part, as in TransformerLens, which computes them from `model.OV` and `model.QK`
//! of the loaded weights — so they depend on how the weights were processed when loaded.
//! [`StatsOptions::processing`] applies TransformerLens's steps first ([`Params::process`],
//! [`StatsParams::process`]; `from_pretrained` applies all four, [`Processing::TRANSFORMER_LENS`]):
//!
//! - `fold_ln`: each norm's weight scales the rows of `W_Q`, `W_K`, `W_V` (`ln1`) and `W_U`
//!   (`ln_final`), whose columns are then centred over d_model after a LayerNorm (not after an
//!   RMSNorm); a `layernorm(pre)` has no weight but still centres them; an `rmsnorm(pre)` changes
//!   nothing. Every statistic may change.
//! - `center_writing_weights`: `W_E`'s and every `W_O`'s rows lose their mean over d_model
//!   (`W_pos` too, which no statistic reads). After `fold_ln` every reader is centred, so
//!   `W_E C W_Q = W_E W_Q` and `W_O C W_U = W_O W_U` (`C` the centring projection): the full OV
//!   and QK circuits do not change, but `‖W_V W_O‖`, a composition score's left norm, does, and so
//!   do `comp_q`, `comp_k` and `comp_v`. Without `fold_ln` it changes every circuit it enters.
//! - `center_unembed`: `W_U ← W_U − m 1ᵀ`, `m` its mean over the outputs: the full OV circuit
//!   (`ov_copying`, `ov_frobenius`); nothing else reads `W_U`.
//! - `fold_value_biases`: moves `b_V W_O` into `b_O`; no statistic reads a bias.
//!
//! Refused where [`Params::process`] refuses (`center_writing_weights` with a norm that does not
//! centre, or shortformer positions): [`StatsError::Processing`].
//!
//! **No vocab × vocab matrix, and no d_model × d_model matrix per head or pair of heads, is ever
//! built.** Two low-rank facts do all the work:
//!
//! - the nonzero eigenvalues of `AB` are those of `BA`. With `A = W_E W_V`, `B = W_O W_U`, the
//!   OV spectrum is that of the d_head × d_head matrix `W_O (W_U W_E) W_V`; with `A = W_E W_Q`,
//!   `B = W_Kᵀ W_Eᵀ`, the QK spectrum is that of `W_Kᵀ (W_Eᵀ W_E) W_Q`. The eigenvalues the small
//!   matrix lacks are zeros, which change neither `Σ Re λ` nor `Σ |λ|`.
//! - `‖AB‖_F² = tr(AᵀA · BBᵀ)`: a Frobenius norm of a product is a trace of a product of two
//!   Gram matrices, here d_head × d_head. A cyclic rotation is used only inside that trace and
//!   inside the eigenvalue computation, never inside a norm.
//!
//! **Shared products.** `G_E = W_Eᵀ W_E`, `G_U = W_U W_Uᵀ` and `P = W_U W_E` are d_model ×
//! d_model and do not depend on the head, so they are computed once, in one pass over the
//! vocabulary (in fixed groups spread over threads, so the bits do not depend on the thread
//! count; `G_E` over `W_E`'s d_vocab rows and `G_U` over `W_U`'s d_vocab_out columns, and `P`,
//! which needs the two equal, only for the OV spectrum): they are the only products whose cost
//! grows with d_vocab
//! (`3 · d_vocab · d_model²` multiply-adds), and every head's OV and QK statistics then cost
//! `O(d_model² · d_head)` whatever the vocabulary. Per head, `W_Vᵀ G_E W_V`, `W_O G_U W_Oᵀ`,
//! `W_Qᵀ G_E W_Q`, `W_Kᵀ G_E W_K` (Gram matrices of `W_E W_V`, `W_O W_U`, `W_E W_Q`, `W_E W_K`)
//! give both Frobenius norms, and `W_O P W_V`, `W_Kᵀ G_E W_Q` the two spectra.
//!
//! **Composition scores** (TransformerLens `all_composition_scores(mode)`, index order
//! `[layer_left, head_left, layer_right, head_right]`): `‖left · right‖_F / (‖left‖_F ‖right‖_F)`
//! with `left = W_V W_O` of the left head and `right = W_Q W_Kᵀ` (Q), `W_K W_Qᵀ` (K) or
//! `W_V W_O` (V) of the right head; zero unless `layer_left < layer_right`; no baseline
//! subtracted. The Gram identity is applied with each Gram matrix carried as a square root
//! (the plan's `root`, [`crate::linalg::gram_root`]: `G = RᵀR`, the Cholesky factor of the
//! d_head × d_head Gram): `‖Y Xᵀ‖_F = ‖Y R_Xᵀ‖_F`, `‖X Y‖_F = ‖R_X Y‖_F` with `R_X = root(XᵀX)`.
//! So with `a = W_Oᵀ R(W_V)ᵀ` (d_model × d_head) per left head and `b = R(W_K) W_Qᵀ`,
//! `R(W_Q) W_Kᵀ` or `R(W_Oᵀ) W_Vᵀ` (d_head × d_model) per right head, `‖left · right‖ = ‖b a‖`, a d_head ×
//! d_head product. This is `tr(AᵀA · BBᵀ)` with both Grams factored: one d_head × d_model ×
//! d_head product per pair and nothing else of d_head³ (the e-graph finds it: rule
//! `gram-root`, [`crate::plan`]). All pairs of one left layer with one later layer are one
//! matrix product (the `b` of the right layer's heads stacked, times the `a` of the left
//! layer's side by side), each layer's operands stacked once. A score whose denominator is
//! zero (a head with `W_V W_O = 0`, say) is defined as 0 (TransformerLens would give NaN).
//!
//! **Baseline** ([`Baseline`], [`composition_baseline`]): the paper subtracts the score expected
//! of random matrices of the same shapes. See [`composition_baseline`] for exactly how it is drawn.
//!
//! **Eigenvalues** come from a Hessenberg reduction and a Francis double-shift QR iteration of at
//! most `SCHUR_MAX_ITER` steps (see [`eigenvalues`]): nalgebra's unbounded `Schur::new` /
//! `eigenvalues()` / `complex_eigenvalues()` on a matrix can loop forever (nalgebra issues #611,
//! #764, #1291, #1528). Non-convergence is a [`StatsError`], never a hang.

use std::collections::BTreeMap;

use nalgebra::Complex;

use crate::eval::{EvalError, LayerParams, Params, Processing, StatsParams};
pub use crate::linalg::{eigenvalues, SCHUR_MAX_ITER};
use crate::linalg::{Matrix, NoConvergence, NonFinite};
pub use crate::plan::exec::HeadSource;
pub use crate::plan::exec::Precision;
use crate::plan::exec::{ExecError, HeadWeights, VocabRows};
use crate::plan::{self, Mode, Stat};
use crate::progress::{Progress, Silent};
use crate::weights::WeightError;

/// How many pairs of random matrices the composition baseline averages over.
pub const BASELINE_SAMPLES: usize = 64;
/// The seed of the baseline's generator (SplitMix64). The same for every mode and model.
pub const BASELINE_SEED: u64 = 0x7061_7468_635f_6261; // "pathc_ba"

/// How the JSON names the processing the statistics are of ([`Stats::weight_processing`]):
/// `"as_given"` for none, else TransformerLens's names of the steps in its order, joined by `+`
/// (`"fold_ln"`, `"fold_ln+center_writing_weights+center_unembed+fold_value_biases"`).
pub fn processing_label(processing: Processing) -> String {
    let names = processing.names();
    if names.is_empty() {
        "as_given".to_string()
    } else {
        names.join("+")
    }
}

/// What `processing` did to the matrices the statistics read, in words (the first line of `pathc
/// stats`' text, a line of the plots' titles).
pub fn processing_description(processing: Processing) -> String {
    if processing == Processing::NONE {
        return "weights as given, no LayerNorm folded, as TransformerLens without fold_ln".to_string();
    }
    if processing == Processing::FOLD_LN {
        return "LayerNorm folded: W_Q, W_K, W_V and W_U times the LayerNorm weight, then centred, as TransformerLens's fold_ln".to_string();
    }
    let steps: Vec<&str> = [
        (
            processing.fold_ln,
            "fold_ln: the norms' weights folded into W_Q, W_K, W_V and W_U (centred after a LayerNorm)",
        ),
        (processing.center_writing_weights, "center_writing_weights: W_E's and W_O's rows centred over d_model"),
        (processing.center_unembed, "center_unembed: W_U less its mean over the outputs"),
        (processing.fold_value_biases, "fold_value_biases: b_V moved into b_O, which no statistic reads"),
    ]
    .into_iter()
    .filter_map(|(on, step)| on.then_some(step))
    .collect();
    let all = if processing == Processing::TRANSFORMER_LENS { " (all four, as from_pretrained)" } else { "" };
    format!("weights processed as TransformerLens does{all}: {}", steps.join("; "))
}

/// Every statistic of every head, `[layer][head]` or `[layer_left][head_left][layer_right][head_right]`.
///
/// As JSON (`pathc stats --format json`): these fields in this order, `rotary_offset` only for a
/// model with a rotary layer, `not_defined` only when a statistic is not defined, and then
/// without that statistic's field.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// The weights the statistics are of: the processing steps applied to them
    /// ([`StatsOptions::processing`]); in the JSON its [`processing_label`].
    pub weight_processing: Processing,
    /// For a model with a rotary layer: the offset `Δ` (query position − key position) its QK
    /// statistics are taken at ([`StatsOptions::rotary_offset`]; 0 unless asked). `None` for a
    /// model without rotary layers, whose QK circuits do not depend on positions.
    pub rotary_offset: Option<i64>,
    /// The precision the plan's products ran in ([`StatsOptions::precision`]).
    pub precision: Precision,
    /// The statistics this model does not define, by field name, and why: `"ov_copying"` when
    /// `d_vocab_out ≠ d_vocab`. Such a field is empty (no layers) and absent from the JSON.
    pub not_defined: BTreeMap<String, String>,
    /// `Σ Re λ / Σ |λ|` over the eigenvalues of the full OV circuit `W_E W_V W_O W_U`; 0 when every
    /// eigenvalue is 0. Empty when the circuit is not square (see `not_defined`).
    pub ov_copying: Vec<Vec<f64>>,
    /// The same for the full QK circuit `W_E W_Q W_Kᵀ W_Eᵀ` (`W_E W_QK(Δ) W_Eᵀ` in a rotary layer).
    pub qk_copying: Vec<Vec<f64>>,
    /// `‖W_E W_V W_O W_U‖_F`.
    pub ov_frobenius: Vec<Vec<f64>>,
    /// `‖W_E W_Q W_Kᵀ W_Eᵀ‖_F`, without `1 / attn_scale` (as TransformerLens's `model.QK`);
    /// `‖W_E W_QK(Δ) W_Eᵀ‖_F` in a rotary layer.
    pub qk_frobenius: Vec<Vec<f64>>,
    /// Q-composition, TransformerLens `all_composition_scores("Q")` (a rotary right head's
    /// `W_Q W_Kᵀ` taken at the offset: `W_QK(Δ)`).
    pub comp_q: Vec<Vec<Vec<Vec<f64>>>>,
    /// K-composition, TransformerLens `all_composition_scores("K")` (`W_QK(Δ)ᵀ` likewise).
    pub comp_k: Vec<Vec<Vec<Vec<f64>>>>,
    /// V-composition, TransformerLens `all_composition_scores("V")`.
    pub comp_v: Vec<Vec<Vec<Vec<f64>>>>,
    /// The random-matrix baseline of the composition scores (see [`composition_baseline`]).
    pub comp_baseline: Baseline,
    /// `comp_q − baseline.q` where `layer_left < layer_right`, 0 elsewhere (as in `comp_q`): the
    /// paper's variant. Negative where a pair composes less than random matrices would.
    pub comp_q_minus_baseline: Vec<Vec<Vec<Vec<f64>>>>,
    /// `comp_k − baseline.k` where `layer_left < layer_right`, 0 elsewhere.
    pub comp_k_minus_baseline: Vec<Vec<Vec<Vec<f64>>>>,
    /// `comp_v − baseline.v` where `layer_left < layer_right`, 0 elsewhere.
    pub comp_v_minus_baseline: Vec<Vec<Vec<Vec<f64>>>>,
}

/// The JSON form of [`Stats`]: its fields in order, `rotary_offset` and `not_defined` only when
/// they say something, and a statistic that is not defined absent.
impl serde::Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let defined = |field: &str| !self.not_defined.contains_key(field);
        let mut out = serializer.serialize_struct("Stats", 15)?;
        out.serialize_field("weight_processing", &processing_label(self.weight_processing))?;
        out.serialize_field("precision", &self.precision)?;
        match self.rotary_offset {
            Some(offset) => out.serialize_field("rotary_offset", &offset)?,
            None => out.skip_field("rotary_offset")?,
        }
        if self.not_defined.is_empty() {
            out.skip_field("not_defined")?;
        } else {
            out.serialize_field("not_defined", &self.not_defined)?;
        }
        let per_head = [
            ("ov_copying", &self.ov_copying),
            ("qk_copying", &self.qk_copying),
            ("ov_frobenius", &self.ov_frobenius),
            ("qk_frobenius", &self.qk_frobenius),
        ];
        for (field, values) in per_head {
            if defined(field) {
                out.serialize_field(field, values)?;
            } else {
                out.skip_field(field)?;
            }
        }
        out.serialize_field("comp_q", &self.comp_q)?;
        out.serialize_field("comp_k", &self.comp_k)?;
        out.serialize_field("comp_v", &self.comp_v)?;
        out.serialize_field("comp_baseline", &self.comp_baseline)?;
        out.serialize_field("comp_q_minus_baseline", &self.comp_q_minus_baseline)?;
        out.serialize_field("comp_k_minus_baseline", &self.comp_k_minus_baseline)?;
        out.serialize_field("comp_v_minus_baseline", &self.comp_v_minus_baseline)?;
        out.end()
    }
}

impl Stats {
    /// For a model with a rotary layer, what its QK statistics are: the offset and the circuit.
    pub fn rotary_description(&self) -> Option<String> {
        self.rotary_offset.map(|offset| {
            format!(
                "rotary layers' QK circuits at offset Δ = {offset} (query position − key position): W_QK(Δ) = W_Q·Rot(Δ)·W_Kᵀ in qk_copying, qk_frobenius, comp_q and comp_k{}",
                if offset == 0 { " (Rot(0) = Id: TransformerLens's position-free circuits)" } else { "" }
            )
        })
    }
}

/// How [`stats_processed`] and [`stats_streamed`] compute the statistics. A [`Processing`]
/// alone converts into the default options with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsOptions {
    /// The weights the statistics are of: TransformerLens's processing steps applied first
    /// ([`Params::process`], [`StatsParams::process`]); [`Processing::NONE`] (the default) for the
    /// weights as given, [`Processing::TRANSFORMER_LENS`] for what `from_pretrained` loads.
    pub processing: Processing,
    /// The offset `Δ` (query position − key position) at which rotary layers' QK circuits are
    /// taken: `W_QK(Δ) = W_Q Rot(Δ) W_Kᵀ`, with `Rot` as [`crate::eval::rotary::rotation`] gives
    /// it (a negative `Δ` is a key after the query, which only a bidirectional layer attends to).
    /// `None` is 0 for a model with a rotary layer; `Some` on a model without one is
    /// [`StatsError::NotRotary`]. Layers without rotary are unaffected.
    pub rotary_offset: Option<i64>,
    /// The precision of the plan's matrix products ([`Precision`]): f64 unless asked (the
    /// command line and the Python package ask for f32 unless told `--precision f64`).
    pub precision: Precision,
}

impl From<Processing> for StatsOptions {
    fn from(processing: Processing) -> StatsOptions {
        StatsOptions { processing, ..StatsOptions::default() }
    }
}

/// The mean composition score of random matrices, per mode (see [`composition_baseline`]).
///
/// When every layer has the same d_head (every TransformerLens model), these are the numbers
/// subtracted from every entry. A model whose layers differ in d_head gets, in the
/// `*_minus_baseline` arrays, the baseline of each pair's own shapes; this struct then reports
/// the one for layer 0's d_head on both sides.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Baseline {
    pub q: f64,
    pub k: f64,
    pub v: f64,
    /// How many random pairs each number averages ([`BASELINE_SAMPLES`]).
    pub samples: usize,
}

/// Why the statistics could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Running their plan failed ([`plan::exec::ExecError`]: a stalled eigenvalue computation, a
    /// non-finite value, a failed read of a streamed weight), which a direct spectrum
    /// ([`ov_eigenvalues`]) shares.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A rotary offset ([`StatsOptions::rotary_offset`]) for a model without rotary layers.
    #[error(
        "a rotary offset (Δ = {offset}) applies only to rotary layers (attn(..., rotary = D)), and this model has none: its QK circuits do not depend on positions"
    )]
    NotRotary { offset: i64 },
    /// A statistic the model does not define ([`Stats::not_defined`]), asked for directly.
    #[error("{statistic}: not defined: {reason}")]
    NotDefined { statistic: &'static str, reason: String },
    /// The weight processing asked for failed: a step refused where it would compute another
    /// model ([`EvalError::Processing`], as [`Params::process`] refuses it), or `center_unembed`'s
    /// read of `W_U` failed.
    #[error(transparent)]
    Processing(EvalError),
}

impl From<NoConvergence> for StatsError {
    fn from(e: NoConvergence) -> StatsError {
        StatsError::Exec(e.into())
    }
}

impl From<NonFinite> for StatsError {
    fn from(e: NonFinite) -> StatsError {
        StatsError::Exec(e.into())
    }
}

impl From<WeightError> for StatsError {
    fn from(e: WeightError) -> StatsError {
        StatsError::Exec(e.into())
    }
}

/// [`stats`] of the weights after `options.processing` ([`Params::process`]) and, in rotary
/// layers, at the offset `options.rotary_offset` (see [`StatsOptions`]); the result records both.
/// A [`Processing`] may stand for the options: `stats_processed(&params, Processing::FOLD_LN)`.
pub fn stats_processed(params: &Params, options: impl Into<StatsOptions>) -> Result<Stats, StatsError> {
    stats_processed_with_progress(params, options, &Silent)
}

/// [`stats_processed`], telling `progress` of every chunk of the vocabulary and head done, and
/// asking it between them whether to stop.
pub fn stats_processed_with_progress(
    params: &Params,
    options: impl Into<StatsOptions>,
    progress: &dyn Progress,
) -> Result<Stats, StatsError> {
    let options = options.into();
    let offset = rotary_offset(params.layers.iter().any(|l| l.attn.rotary.is_some()), options.rotary_offset)?;
    let processed;
    let params = if options.processing == Processing::NONE {
        params
    } else {
        processed = params.process(options.processing).map_err(StatsError::Processing)?;
        &processed
    };
    let plans = plans_for_vocab(&params.layers, params.d_vocab(), params.d_vocab_out(), params.w_e.ncols());
    let rotated = rotated_queries(&params.layers, offset);
    let stats = stats_with_plan(
        &plans.chosen,
        &head_weights_at(&params.layers, &rotated),
        params,
        progress,
        options.precision,
    )?;
    Ok(Stats { weight_processing: options.processing, rotary_offset: offset, ..stats })
}

/// Computes every statistic of every head of `params`, as given, with the plan the e-graph
/// chooses ([`crate::plan`]); rotary layers at offset 0.
pub fn stats(params: &Params) -> Result<Stats, StatsError> {
    stats_processed(params, Processing::NONE)
}

/// [`stats_processed`] with `W_E` and `W_U` read from the weights file a chunk of the vocabulary
/// at a time ([`StatsParams`], processed by [`StatsParams::process`]): the same numbers, bit for
/// bit, with the heads' weights read a layer at a time as the plan's executor asks for them
/// ([`StatsParams::attention`], [`HeadSource`]): in less memory than the weights themselves
/// (measured by `benches/speed.sh` at GPT-2-XL shape in f32: 0.41× the weights' bytes).
/// `progress` is told of every chunk and head done (not of `center_unembed`'s first pass over
/// `W_U`).
pub fn stats_streamed(
    params: StatsParams<'_>,
    options: impl Into<StatsOptions>,
    progress: &dyn Progress,
) -> Result<Stats, StatsError> {
    let options = options.into();
    let any_rotary = (0..params.layer_shapes().len()).any(|l| params.rotary(l).is_some());
    let offset = rotary_offset(any_rotary, options.rotary_offset)?;
    let params = params.process(options.processing).map_err(StatsError::Processing)?;
    let shapes = params.layer_shapes();
    let plans = plans_for_shapes(&shapes, params.d_vocab(), params.d_vocab_out(), params.d_model());
    let heads = StreamedHeads { params: &params, offset };
    let stats = stats_with_plan(&plans.chosen, &heads, &params, progress, options.precision)?;
    Ok(Stats { weight_processing: options.processing, rotary_offset: offset, ..stats })
}

/// The heads of [`StatsParams`], a layer read from the file at a time ([`StatsParams::attention`]),
/// `W_Q` rotated as [`rotated_queries`] does.
struct StreamedHeads<'p, 'w> {
    params: &'p StatsParams<'w>,
    offset: Option<i64>,
}

impl HeadSource for StreamedHeads<'_, '_> {
    fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.params.layer_shapes()
    }

    fn with_layer(&self, layer: usize, f: &mut dyn FnMut(&[HeadWeights<'_>])) -> Result<(), WeightError> {
        let a = self.params.attention(layer)?;
        let rotated: Option<Vec<Matrix>> =
            self.params.rotary(layer).zip(self.offset.filter(|&o| o != 0)).map(|(rotary, offset)| {
                a.w_q.iter().map(|w_q| w_q * crate::eval::rotary::rotation(rotary, w_q.ncols(), offset)).collect()
            });
        let w_q = rotated.as_ref().unwrap_or(&a.w_q);
        let heads: Vec<HeadWeights<'_>> = (0..a.w_q.len())
            .map(|h| HeadWeights { w_q: &w_q[h], w_k: a.w_k(h), w_v: a.w_v(h), w_o: &a.w_o[h] })
            .collect();
        f(&heads);
        Ok(())
    }
}

/// The offset the statistics are taken at: `Some` (the one asked for, else 0) when a layer is
/// rotary, `None` when none is (and an error if one was asked for).
fn rotary_offset(rotary: bool, asked: Option<i64>) -> Result<Option<i64>, StatsError> {
    match (rotary, asked) {
        (true, asked) => Ok(Some(asked.unwrap_or(0))),
        (false, None) => Ok(None),
        (false, Some(offset)) => Err(StatsError::NotRotary { offset }),
    }
}

/// `W_Q Rot(Δ)` (d_model × d_head) of every head of every rotary layer, `None` for the other
/// layers and for `Δ = 0` (where `Rot(0) = Id`, and the statistics are of `W_Q` itself).
pub fn rotated_queries(layers: &[LayerParams], offset: Option<i64>) -> Vec<Option<Vec<Matrix>>> {
    layers
        .iter()
        .map(|layer| {
            let a = &layer.attn;
            let (rotary, offset) = (a.rotary.as_ref()?, offset.filter(|&o| o != 0)?);
            Some(a.w_q.iter().map(|w_q| w_q * crate::eval::rotary::rotation(rotary, w_q.ncols(), offset)).collect())
        })
        .collect()
}

/// The plans ([`plan::plan`]) for these layers' heads and sizes, `W_U` with `d_vocab` columns
/// (see [`plans_for_vocab`] for another output vocabulary).
pub fn plans_for(layers: &[LayerParams], d_vocab: usize, d_model: usize) -> plan::Plans {
    plans_for_vocab(layers, d_vocab, d_vocab, d_model)
}

/// The plans ([`plan::plan`]) for these layers' heads and sizes: `W_E` `d_vocab × d_model`, `W_U`
/// `d_model × d_vocab_out`. A plan is made for one d_head, the largest of any layer; the
/// executor takes every head's own shapes.
pub fn plans_for_vocab(layers: &[LayerParams], d_vocab: usize, d_vocab_out: usize, d_model: usize) -> plan::Plans {
    let shapes: Vec<(usize, usize)> =
        layers.iter().map(|l| (l.attn.w_q.len(), l.attn.w_q.iter().map(|w| w.ncols()).max().unwrap_or(0))).collect();
    plans_for_shapes(&shapes, d_vocab, d_vocab_out, d_model)
}

/// [`plans_for_vocab`] from each layer's number of heads and d_head.
fn plans_for_shapes(shapes: &[(usize, usize)], d_vocab: usize, d_vocab_out: usize, d_model: usize) -> plan::Plans {
    let d_head = shapes.iter().map(|&(_, d_head)| d_head).max().unwrap_or(0);
    let heads_per_layer: Vec<usize> = shapes.iter().map(|&(h, _)| h).collect();
    let dims = plan::Dims { d_vocab, d_vocab_out, d_model, d_head };
    plan::plan(dims, plan::Counts::from_heads_per_layer(&heads_per_layer))
}

/// Every head's weights as the plan executor reads them: by reference (a grouped-query head's
/// `W_K`, `W_V` are its key/value group's, not copies).
pub fn head_weights(layers: &[LayerParams]) -> Vec<Vec<HeadWeights<'_>>> {
    head_weights_at(layers, &[])
}

/// [`head_weights`] with `W_Q` replaced by `rotated[layer][head]` where [`rotated_queries`] gave
/// one.
pub fn head_weights_at<'a>(layers: &'a [LayerParams], rotated: &'a [Option<Vec<Matrix>>]) -> Vec<Vec<HeadWeights<'a>>> {
    layers
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            let a = &layer.attn;
            let w_q = rotated.get(l).and_then(Option::as_ref).unwrap_or(&a.w_q);
            (0..a.w_q.len())
                .map(|h| HeadWeights { w_q: &w_q[h], w_k: a.w_k(h), w_v: a.w_v(h), w_o: &a.w_o[h] })
                .collect()
        })
        .collect()
}

/// `W_E` and `W_U` held in memory.
impl VocabRows for Params {
    fn d_vocab(&self) -> usize {
        self.w_e.nrows()
    }

    fn d_vocab_out(&self) -> usize {
        self.w_u.ncols()
    }

    fn embed_rows(&self, start: usize, n: usize) -> Result<Matrix, WeightError> {
        Ok(self.w_e.rows(start, n).into_owned())
    }

    fn unembed_columns(&self, start: usize, n: usize) -> Result<Matrix, WeightError> {
        Ok(self.w_u.columns(start, n).into_owned())
    }
}

/// `W_E` and `W_U` read from the weights file a chunk at a time, processed as they are read
/// ([`StatsParams::embed_rows`], [`StatsParams::unembed_columns`]).
impl VocabRows for StatsParams<'_> {
    fn d_vocab(&self) -> usize {
        StatsParams::d_vocab(self)
    }

    fn d_vocab_out(&self) -> usize {
        StatsParams::d_vocab_out(self)
    }

    fn embed_rows(&self, start: usize, n: usize) -> Result<Matrix, WeightError> {
        self.embed_rows(start, n)
    }

    fn unembed_columns(&self, start: usize, n: usize) -> Result<Matrix, WeightError> {
        self.unembed_columns(start, n)
    }

    fn embed_rows_f32(&self, start: usize, n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        StatsParams::embed_rows_f32(self, start, n)
    }

    fn unembed_columns_f32(&self, start: usize, n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        StatsParams::unembed_columns_f32(self, start, n)
    }
}

/// Runs `plan` (the chosen or the naive one, see [`crate::plan::plan`]) on the heads' weights and
/// the vocabulary side, and assembles every statistic, composition ratios and baseline included;
/// a statistic the plan's sizes do not define is left empty and recorded in `not_defined`. The
/// result records the weights as given and no rotary offset: [`stats_processed`] fills in
/// what it did to the weights.
pub fn stats_with_plan(
    plan: &plan::EvalPlan,
    heads: &dyn HeadSource,
    vocab: &dyn VocabRows,
    progress: &dyn Progress,
    precision: Precision,
) -> Result<Stats, StatsError> {
    let inputs = plan::exec::Inputs { heads, vocab, progress, precision };
    let mut not_defined = BTreeMap::new();
    for stat in Stat::ALL {
        if let Some(reason) = stat.not_defined(plan.dims) {
            let reason = match stat {
                Stat::OvCopying => format!("{reason} (set by unembed(d_vocab_out = {}))", plan.dims.d_vocab_out),
                _ => reason,
            };
            not_defined.insert(field_name(stat).to_string(), reason);
        }
    }
    let mut results = plan::exec::run(plan, &inputs)?;
    for (stat, values) in &results.per_head {
        finite_per_head(values, |l, h| format!("the statistic {} of head L{l}H{h}", stat.name()))?;
    }
    for (stat, values) in &results.per_pair {
        for (l, per_head) in values.iter().enumerate() {
            for (h, per_layer) in per_head.iter().enumerate() {
                finite_per_head(per_layer, |r, g| {
                    format!("the statistic {} of heads L{l}H{h} (h) and L{r}H{g} (r)", stat.name())
                })?;
            }
        }
    }
    let ov_copying = results.per_head.remove(&Stat::OvCopying).unwrap_or_default();
    let mut take = |stat: Stat| results.per_head.remove(&stat).expect("every per-head statistic is a root");
    let qk_copying = take(Stat::QkCopying);
    let (ov_frobenius, qk_frobenius) = (take(Stat::OvFrobenius), take(Stat::QkFrobenius));
    let left = take(Stat::LeftNorm);
    let mut composition = |mode: Mode| {
        let right = results.per_head.remove(&Stat::RightNorm(mode)).expect("a root");
        let mut scores = results.per_pair.remove(&Stat::PairNorm(mode)).expect("a root");
        for (l, per_head) in scores.iter_mut().enumerate() {
            for (h, per_layer) in per_head.iter_mut().enumerate() {
                for (r, per_right) in per_layer.iter_mut().enumerate() {
                    for (g, score) in per_right.iter_mut().enumerate() {
                        // Divided one norm at a time: the product of two finite norms can
                        // overflow, and x / inf would silently say 0.
                        let denominator = left[l][h] * right[r][g];
                        *score = if denominator.is_finite() {
                            ratio(*score, denominator)
                        } else {
                            ratio(ratio(*score, left[l][h]), right[r][g])
                        };
                    }
                }
            }
        }
        scores
    };
    let (comp_q, comp_k, comp_v) = (composition(Mode::Q), composition(Mode::K), composition(Mode::V));

    let d_model = plan.dims.d_model;
    let d_heads: Vec<usize> = heads.layer_shapes().into_iter().map(|(_, d_head)| d_head).collect();
    let baseline_of = |d_left: usize, d_right: usize| baseline(d_model, d_left, d_right);
    let reference = d_heads.first().map_or(0.0, |&d| baseline_of(d, d));
    let minus = |scores: &Vec<Vec<Vec<Vec<f64>>>>| {
        let mut out = scores.clone();
        for (l, per_head) in out.iter_mut().enumerate() {
            for row in per_head.iter_mut() {
                for (r, right) in row.iter_mut().enumerate().skip(l + 1) {
                    let b = baseline_of(d_heads[l], d_heads[r]);
                    right.iter_mut().for_each(|x| *x -= b);
                }
            }
        }
        out
    };
    let comp_q_minus_baseline = minus(&comp_q);
    let comp_k_minus_baseline = minus(&comp_k);
    let comp_v_minus_baseline = minus(&comp_v);
    Ok(Stats {
        weight_processing: Processing::NONE,
        rotary_offset: None,
        precision,
        not_defined,
        ov_copying,
        qk_copying,
        ov_frobenius,
        qk_frobenius,
        comp_q,
        comp_k,
        comp_v,
        comp_baseline: Baseline { q: reference, k: reference, v: reference, samples: BASELINE_SAMPLES },
        comp_q_minus_baseline,
        comp_k_minus_baseline,
        comp_v_minus_baseline,
    })
}

/// The name of `stat`'s field in [`Stats`] (the plan's name for the composition scores' parts).
fn field_name(stat: Stat) -> &'static str {
    match stat {
        Stat::OvCopying => "ov_copying",
        Stat::QkCopying => "qk_copying",
        Stat::OvFrobenius => "ov_frobenius",
        Stat::QkFrobenius => "qk_frobenius",
        other => other.name(),
    }
}

/// The eigenvalues of head `(layer, head)`'s full OV circuit `W_E W_V W_O W_U`, from the d_head ×
/// d_head matrix `W_O W_U W_E W_V` (the vocab × vocab circuit's other eigenvalues are 0). For one
/// head at a time: it forms `W_U W_E` itself (`d_vocab · d_model²`), which [`stats`] shares.
/// [`StatsError::NotDefined`] when `d_vocab_out ≠ d_vocab` (the circuit is not square).
pub fn ov_eigenvalues(params: &Params, layer: usize, head: usize) -> Result<Vec<Complex<f64>>, StatsError> {
    let (d_vocab, d_vocab_out) = (params.d_vocab(), params.d_vocab_out());
    if d_vocab != d_vocab_out {
        let dims = plan::Dims { d_vocab, d_vocab_out, d_model: params.w_e.ncols(), d_head: 0 };
        let reason = Stat::OvCopying.not_defined(dims).expect("not square");
        return Err(StatsError::NotDefined { statistic: "the OV eigenvalues", reason });
    }
    let a = &params.layers[layer].attn;
    let m = &a.w_o[head] * ((&params.w_u * &params.w_e) * a.w_v(head));
    Ok(eigenvalues(m).ok_or(NoConvergence::of("the OV circuit", (layer, head)))?)
}

/// The eigenvalues of head `(layer, head)`'s full QK circuit `W_E W_Q W_Kᵀ W_Eᵀ` (without
/// `1 / attn_scale`), from the d_head × d_head matrix `W_Kᵀ W_Eᵀ W_E W_Q`; as [`ov_eigenvalues`].
/// A rotary layer's at offset 0, where `Rot = Id` (another offset's statistics: [`stats_processed`]
/// with [`StatsOptions::rotary_offset`]).
pub fn qk_eigenvalues(params: &Params, layer: usize, head: usize) -> Result<Vec<Complex<f64>>, StatsError> {
    let a = &params.layers[layer].attn;
    let g_e = params.w_e.transpose() * &params.w_e;
    let m = a.w_k(head).transpose() * (g_e * &a.w_q[head]);
    Ok(eigenvalues(m).ok_or(NoConvergence::of("the QK circuit", (layer, head)))?)
}

/// `Ok` if every `[layer][head]` value is finite; else the first that is not, located by
/// `at(layer, head)`.
fn finite_per_head(values: &[Vec<f64>], at: impl Fn(usize, usize) -> String) -> Result<(), NonFinite> {
    for (l, row) in values.iter().enumerate() {
        crate::linalg::finite_values(row, |h| at(l, h))?;
    }
    Ok(())
}

/// A square root `R` of `XᵀX` (`XᵀX = RᵀR`, [`crate::linalg::gram_root`], as the plans' `root`),
/// so `‖X Y‖_F = ‖R Y‖_F` and `‖Y Xᵀ‖_F = ‖Y Rᵀ‖_F` for any `Y`; the `R` of a thin QR
/// factorisation if the Gram's eigendecomposition did not converge.
fn r_factor(x: &Matrix) -> Matrix {
    crate::linalg::gram_root(&(x.transpose() * x)).unwrap_or_else(|| x.clone().qr().r())
}

/// `R(x) y` for the left matrix `x y` (`x` d_model × d_head, `y` d_head × d_model).
fn left_factor(x: &Matrix, y: &Matrix) -> Matrix {
    r_factor(x) * y
}

/// `x R(z)ᵀ` for the right matrix `x zᵀ` (`x`, `z` d_model × d_head).
fn right_factor(x: &Matrix, z: &Matrix) -> Matrix {
    x * r_factor(z).transpose()
}

/// `‖a b‖ / (‖a‖ ‖b‖)`, 0 when the denominator is 0.
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

/// [`composition_baseline`] with [`BASELINE_SAMPLES`] samples, memoised per process: it depends
/// on the sizes alone, so `pathc stats` computes it ([`prepare_baselines`]) on a thread of its
/// own while the plan is made and the statistics run, and the statistics find it made (or wait
/// for it: a shape is computed once, whichever thread asks first).
pub fn baseline(d_model: usize, d_left: usize, d_right: usize) -> f64 {
    /// `((d_model, d_left, d_right), baseline)`.
    type Made = Vec<((usize, usize, usize), std::sync::Arc<std::sync::OnceLock<f64>>)>;
    static MADE: std::sync::Mutex<Made> = std::sync::Mutex::new(Vec::new());
    let shape = (d_model, d_left, d_right);
    let cell = {
        let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match made.iter().find(|(s, _)| *s == shape) {
            Some((_, cell)) => cell.clone(),
            None => {
                let cell = std::sync::Arc::default();
                made.push((shape, std::sync::Arc::clone(&cell)));
                cell
            }
        }
    };
    *cell.get_or_init(|| composition_baseline(d_model, d_left, d_right, BASELINE_SAMPLES))
}

/// Every [`baseline`] the statistics of a model with these layers' d_heads read: the first
/// layer's `(d, d)` (the reference) and each `(d_left, d_right)` of a layer and a later one.
pub fn prepare_baselines(d_model: usize, d_heads: &[usize]) {
    let mut shapes: Vec<(usize, usize)> = d_heads.first().map(|&d| (d, d)).into_iter().collect();
    for (r, &d_right) in d_heads.iter().enumerate() {
        for &d_left in &d_heads[..r] {
            if !shapes.contains(&(d_left, d_right)) {
                shapes.push((d_left, d_right));
            }
        }
    }
    for (d_left, d_right) in shapes {
        baseline(d_model, d_left, d_right);
    }
}

/// The random-matrix baseline of the composition score: the mean, over `samples` draws, of
/// `‖L R‖_F / (‖L‖_F ‖R‖_F)` with `L = V O` and `R = A B`, where `V` (d_model × d_left),
/// `O` (d_left × d_model), `A` (d_model × d_right) and `B` (d_right × d_model) are independent
/// matrices of independent standard normal entries — exactly the shapes of the factors of the
/// left head's `W_V W_O` and of the right head's `W_Q W_Kᵀ` (Q), `W_K W_Qᵀ` (K) or `W_V W_O` (V).
/// The score is invariant to scaling each factor, so the variance does not matter. It comes out
/// close to `1/√d_model` whatever the d_heads (for Gaussian factors `E‖V O A B‖² = d_model³ ·
/// d_left · d_right` and `E‖V O‖² · E‖A B‖² = d_model⁴ · d_left · d_right`): 0.178 for the
/// `attn2` fixture's shapes (d_model 32), 0.036 for GPT-2 small's (768).
///
/// The draws: a [`SplitMix64`] generator seeded with [`BASELINE_SEED`]; each sample fills `V`,
/// `O`, `A`, `B` in that order, each row by row, with normals from the Marsaglia polar method
/// (both normals of a pair are used, in order) on uniforms `(x >> 11) · 2⁻⁵² − 1` in `[−1, 1)`;
/// the logarithm it needs is computed here from `+ − × /` and bit operations
/// ([`deterministic_ln`]) rather than the platform's libm, so the draws are bit-identical on
/// every platform (the products after them use nalgebra's kernels, which may differ in the last
/// bits between CPUs). The score of each draw is computed as for the heads (square roots of
/// the Grams).
///
/// The three modes' factors have the same shapes, so the same draws serve all three (common
/// random numbers): the baseline is a function of `(d_model, d_left, d_right, samples)` only, and
/// [`Baseline`]'s `q`, `k` and `v` are equal.
pub fn composition_baseline(d_model: usize, d_left: usize, d_right: usize, samples: usize) -> f64 {
    if samples == 0 {
        return 0.0;
    }
    // Each sample draws an even number of normals (whole polar pairs), so it starts where the
    // last ended with no spare: a pass of the acceptance test alone finds every sample's
    // starting state ([`sample_starts`]), and the samples are drawn and scored on the threads.
    // The sum is taken in order: the same bits as drawing them one after another.
    let starts = sample_starts(BASELINE_SEED, samples, d_model * (d_left + d_right));
    let scores = crate::parallel::parallel_map(&starts, |&start| {
        let mut normals = Normals::new(start);
        let v = normals.matrix(d_model, d_left);
        let o = normals.matrix(d_left, d_model);
        let a = normals.matrix(d_model, d_right);
        let b = normals.matrix(d_right, d_model);
        let left = left_factor(&v, &o);
        let right = right_factor(&a, &b.transpose());
        ratio((&left * &right).norm(), left.norm() * right.norm())
    });
    scores.iter().sum::<f64>() / samples as f64
}

/// The states from which each of `samples` samples of `pairs` accepted polar pairs draws, when
/// they are drawn one after another from a [`SplitMix64`] seeded with `seed`: sample `i` starts
/// after the attempt that accepts pair number `i · pairs`. SplitMix64's state after `t` draws is
/// `seed + t · γ`, so any attempt can be tested without the ones before it
/// ([`Normals::attempt_accepted`]): the attempts are counted block by block on the threads, and
/// only the blocks where a sample starts are walked one attempt at a time.
fn sample_starts(seed: u64, samples: usize, pairs: usize) -> Vec<u64> {
    const BLOCK: u64 = 1 << 16;
    let state_at = |attempt: u64| seed.wrapping_add(attempt.wrapping_mul(2).wrapping_mul(SplitMix64::GAMMA));
    let mut starts = Vec::with_capacity(samples);
    if samples == 0 {
        return starts;
    }
    starts.push(seed);
    let (mut block, mut found) = (0u64, 0usize);
    // The first round counts the blocks that the samples take at the polar method's acceptance
    // rate (π/4), and 1 % more, in one pass on the threads: rounds of a few blocks each were a
    // barrier each, which the thread sharing a core with the plan's (`pathc stats`) held up
    // (23 ms against 10 ms on one thread). Later rounds, if the draws fall short, are smaller.
    let needed = (samples * pairs) as f64 / std::f64::consts::FRAC_PI_4 * 1.01;
    let mut round = (needed / BLOCK as f64) as u64 + 1;
    while starts.len() < samples {
        let blocks: Vec<u64> = (block..block + round).collect();
        let counts = crate::parallel::parallel_map(&blocks, |&b| {
            let mut batch = PolarBatch::default();
            (0..BLOCK / BATCH as u64)
                .map(|j| {
                    polar_batch(state_at(b * BLOCK + j * BATCH as u64), &mut batch);
                    batch.s.iter().filter(|&&s| accepted(s)).count()
                })
                .sum::<usize>()
        });
        for (&b, &count) in blocks.iter().zip(&counts) {
            // The starts that fall in this block: walked attempt by attempt.
            let mut seen = found;
            let mut t = b * BLOCK;
            while starts.len() < samples && found + count >= starts.len() * pairs {
                let target = starts.len() * pairs;
                while seen < target {
                    seen += usize::from(Normals::attempt_accepted(state_at(t)));
                    t += 1;
                }
                starts.push(state_at(t));
            }
            found += count;
        }
        block += round;
        round = 8 * crate::parallel::threads() as u64;
    }
    starts
}

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit state advanced by the golden-ratio increment
/// and mixed; fully specified by integer arithmetic, so the same on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The increment of the state at each draw.
    pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform in `[−1, 1)` on the grid `k · 2⁻⁵²` (exact: no rounding).
    #[inline]
    pub fn next_signed_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 52) as f64) - 1.0
    }
}

/// Standard normals by the Marsaglia polar method on a [`SplitMix64`].
struct Normals {
    rng: SplitMix64,
    spare: Option<f64>,
}

impl Normals {
    fn new(seed: u64) -> Normals {
        Normals { rng: SplitMix64(seed), spare: None }
    }

    /// The next `count` normals. The polar attempts are made [`BATCH`] at a time
    /// ([`polar_batch`]), the accepted ones kept in order and the generator moved past the last
    /// one needed only; then their factors `√(−2 ln s / s)` are computed in one loop
    /// ([`polar_factors`]). Both on the widest vectors the CPU has: the same operations on the
    /// same numbers as one attempt after another ([`Normals::attempt`]), so the same bits.
    fn draw(&mut self, count: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(count + 1);
        if count > 0 {
            out.extend(self.spare.take());
        }
        let pairs = (count - out.len()).div_ceil(2);
        // Every attempt written at the next free place, which moves on only if it is accepted:
        // in order, and without a branch on the (random) acceptance.
        let (mut u, mut v, mut s) = (vec![0.0; pairs + BATCH], vec![0.0; pairs + BATCH], vec![0.0; pairs + BATCH]);
        let mut n = 0;
        let mut batch = PolarBatch::default();
        while n < pairs {
            polar_batch(self.rng.0, &mut batch);
            let mut made = BATCH;
            for t in 0..BATCH {
                (u[n], v[n], s[n]) = (batch.u[t], batch.v[t], batch.s[t]);
                n += usize::from(accepted(batch.s[t]));
                if n == pairs {
                    made = t + 1;
                    break;
                }
            }
            self.rng.0 = self.rng.0.wrapping_add((2 * made as u64).wrapping_mul(SplitMix64::GAMMA));
        }
        let mut factors = vec![0.0; pairs];
        polar_factors(&s[..pairs], &mut factors);
        let first = out.len();
        out.resize(first + 2 * pairs, 0.0);
        for (i, pair) in out[first..].chunks_exact_mut(2).enumerate() {
            (pair[0], pair[1]) = (u[i] * factors[i], v[i] * factors[i]);
        }
        if out.len() > count {
            self.spare = out.pop();
        }
        out
    }

    /// One polar attempt: two uniforms `u`, `v` from `rng`, and `(u, v, s = u² + v²)` if it is
    /// accepted (`0 < s < 1`).
    fn attempt(rng: &mut SplitMix64) -> Option<(f64, f64, f64)> {
        let u = rng.next_signed_unit();
        let v = rng.next_signed_unit();
        let s = u * u + v * v;
        accepted(s).then_some((u, v, s))
    }

    /// Whether the polar attempt drawn from state `state` (as [`Normals::draw`] would draw it
    /// there) is accepted.
    fn attempt_accepted(state: u64) -> bool {
        Normals::attempt(&mut SplitMix64(state)).is_some()
    }

    /// A `rows × cols` matrix filled row by row.
    fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
        crate::linalg::from_row_major(rows, cols, &self.draw(rows * cols))
    }
}

/// Whether a polar attempt with `s = u² + v²` is accepted.
fn accepted(s: f64) -> bool {
    s > 0.0 && s < 1.0
}

/// How many polar attempts [`polar_batch`] makes at once.
const BATCH: usize = 64;

/// [`BATCH`] polar attempts' `u`, `v` and `s = u² + v²`.
struct PolarBatch {
    u: [f64; BATCH],
    v: [f64; BATCH],
    s: [f64; BATCH],
}

impl Default for PolarBatch {
    fn default() -> PolarBatch {
        PolarBatch { u: [0.0; BATCH], v: [0.0; BATCH], s: [0.0; BATCH] }
    }
}

/// `f` compiled for the widest vectors the CPU has (AVX-512, AVX2, else the target's baseline)
/// and chosen when called. The body is the same for each: IEEE `+ − × / √` and integer
/// operations, which Rust never fuses or reorders, so every width gives the same bits; only
/// the speed depends on the CPU.
macro_rules! on_widest_vectors {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq")]
                unsafe fn avx512($($arg: $ty),*) {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
                    // SAFETY: this CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: this CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

on_widest_vectors! {
    /// The [`BATCH`] polar attempts drawn from generator state `state` on: attempt `t` draws its
    /// uniforms at the states `state + (2t + 1)γ` and `state + (2t + 2)γ` (SplitMix64's state
    /// after `n` draws is `state + nγ`), as [`Normals::attempt`] draws them one after another.
    fn polar_batch(state: u64, batch: &mut PolarBatch) {
        for t in 0..BATCH {
            let first = state.wrapping_add((2 * t as u64).wrapping_mul(SplitMix64::GAMMA));
            let mut rng = SplitMix64(first);
            let u = rng.next_signed_unit();
            let v = rng.next_signed_unit();
            batch.u[t] = u;
            batch.v[t] = v;
            batch.s[t] = u * u + v * v;
        }
    }
}

on_widest_vectors! {
    /// The polar method's factors `√(−2 ln s / s)` of accepted `s` ([`deterministic_ln`]).
    fn polar_factors(s: &[f64], factors: &mut [f64]) {
        for (f, &s) in factors.iter_mut().zip(s) {
            *f = (-2.0 * deterministic_ln(s) / s).sqrt();
        }
    }
}

/// The natural logarithm of a positive normal `x`, from IEEE `+ − × /` and bit operations only
/// (correctly rounded everywhere, and Rust never fuses them), so it gives the same bits on every
/// platform; within a few ulps of the true value. `x = m · 2^e` with `m ∈ [√½, √2)`, then
/// `ln m = 2 atanh z = 2 (z + z³/3 + z⁵/5 + …)` with `z = (m − 1)/(m + 1)`, `|z| < 0.172`
/// (13 terms: the next is below 10⁻¹⁹ of the sum).
#[inline]
pub fn deterministic_ln(x: f64) -> f64 {
    debug_assert!(x.is_normal() && x > 0.0);
    let bits = x.to_bits();
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    // Without a branch (a select), so that loops over many `x` use vectors.
    let high = m >= std::f64::consts::SQRT_2;
    let m = if high { m * 0.5 } else { m };
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023 + i64::from(high);
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut series = 0.0;
    for k in (0..13).rev() {
        series = series * z2 + 1.0 / (2 * k + 1) as f64;
    }
    2.0 * z * series + e as f64 * std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ln_is_close_to_ln() {
        let mut rng = SplitMix64(1);
        for _ in 0..100_000 {
            let u = rng.next_signed_unit().abs();
            if u == 0.0 {
                continue;
            }
            for x in [u, u * u, u * 1e-30, 1.0 + u, 1.0 / u] {
                let (ours, std) = (deterministic_ln(x), x.ln());
                assert!((ours - std).abs() <= 4.0 * f64::EPSILON * std.abs().max(1.0), "{x}: {ours} vs {std}");
            }
        }
        assert_eq!(deterministic_ln(1.0), 0.0);
    }

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs for seed 0 (the reference implementation's published sequence).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    /// The samples' starting states found block by block on the threads are those reached by
    /// drawing the samples' pairs one attempt after another, for sample sizes that put the
    /// starts inside, at the edges of and many to a block of 2¹⁶ attempts.
    #[test]
    fn sample_starts_are_the_states_reached_drawing_in_order() {
        for (samples, pairs) in [(0, 5), (1, 5), (7, 0), (5, 3), (40, 1000), (3, 51_472), (4, 70_000)] {
            let mut rng = SplitMix64(BASELINE_SEED);
            let want: Vec<u64> = (0..samples)
                .map(|_| {
                    let start = rng.0;
                    for _ in 0..pairs {
                        loop {
                            let (u, v) = (rng.next_signed_unit(), rng.next_signed_unit());
                            let s = u * u + v * v;
                            if s > 0.0 && s < 1.0 {
                                break;
                            }
                        }
                    }
                    start
                })
                .collect();
            assert_eq!(sample_starts(BASELINE_SEED, samples, pairs), want, "{samples} samples of {pairs} pairs");
        }
        // And the draws from a start are the draws that follow the previous sample's.
        let mut normals = Normals::new(BASELINE_SEED);
        normals.draw(2 * 1000);
        let starts = sample_starts(BASELINE_SEED, 2, 1000);
        assert_eq!(Normals::new(starts[1]).draw(10), normals.draw(10));
    }

    #[test]
    fn normals_drawn_in_pieces_are_the_normals_drawn_at_once() {
        let whole = Normals::new(BASELINE_SEED).draw(1001);
        let mut normals = Normals::new(BASELINE_SEED);
        let pieces: Vec<f64> = [3, 0, 5, 1, 992].into_iter().flat_map(|n| normals.draw(n)).collect();
        assert_eq!(pieces, whole);
        // The first normal by hand: the first accepted polar pair's u · √(−2 ln s / s).
        let mut rng = SplitMix64(BASELINE_SEED);
        let first = loop {
            let (u, v) = (rng.next_signed_unit(), rng.next_signed_unit());
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                break u * (-2.0 * s.ln() / s).sqrt();
            }
        };
        assert!((whole[0] - first).abs() <= 1e-14 * first.abs().max(1.0), "{} vs {first}", whole[0]);
    }

    /// The batched draws (on this CPU's widest vectors) are bit for bit the polar method done
    /// one attempt after another with scalar operations.
    #[test]
    fn batched_normals_are_the_scalar_polar_method() {
        for count in [0, 1, 2, 63, 64, 65, 127, 1001, 5000] {
            let mut rng = SplitMix64(BASELINE_SEED ^ count as u64);
            let mut want = Vec::new();
            while want.len() < count {
                let (u, v) = (rng.next_signed_unit(), rng.next_signed_unit());
                let s = u * u + v * v;
                if s > 0.0 && s < 1.0 {
                    let f = (-2.0 * deterministic_ln(s) / s).sqrt();
                    want.extend([u * f, v * f]);
                }
            }
            want.truncate(count);
            let mut normals = Normals::new(BASELINE_SEED ^ count as u64);
            let got = normals.draw(count);
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{count}"
            );
            // And the generator is left after the last attempt used, an odd count's spare kept.
            assert_eq!(normals.rng.0, rng.0, "{count}");
            assert_eq!(normals.spare.is_some(), count % 2 == 1, "{count}");
        }
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut normals = Normals::new(BASELINE_SEED);
        let n = 200_000;
        let xs = normals.draw(n);
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }
}
