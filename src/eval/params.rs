//! The weights a model needs, read by TransformerLens's names and checked against the model.
//!
//! The model file and the weights must agree: a tensor the model needs and the file lacks is
//! [`WeightError::Missing`](crate::weights::WeightError::Missing); a tensor the file holds and the
//! model does not declare (a LayerNorm, an MLP, a nonzero bias) is [`EvalError::Undeclared`],
//! pointing at the declaration to change, because evaluating without it would silently compute
//! another model.

use std::borrow::Cow;

use super::{EvalError, Matrix, Row};
use crate::diag::Diagnostic;
use crate::graph::Source;
use crate::linalg::from_row_major;
use crate::model::{Activation, Layer, MlpNorm, Model, Norm, NormKind, Real, Rotary, Size};
use crate::weights::{WeightError, Weights};

/// TransformerLens's default `eps` of every norm (`cfg.eps`): `LN` is `x ↦ (x − mean(x)) / σ ·
/// w + b`, `σ = sqrt(mean((x − mean x)²) + eps)`, per position.
pub const LN_EPS: f64 = crate::model::NORM_EPS;

/// A norm (TransformerLens's `LN`, `LNPre`, `RMS`, `RMSPre`) with its elementwise weight and
/// bias, `[width]` each: `w = 1` where the kind has no weight, `b = 0` where it has no bias, so
/// that code can always apply them.
#[derive(Debug, Clone)]
pub struct NormWeights {
    pub kind: NormKind,
    pub w: Row,
    pub b: Row,
    pub eps: f64,
}

/// One attention layer's weights, per head, in TransformerLens's layout. Biases the model does
/// not declare are zero, so that code can always add them.
///
/// With grouped-query attention the keys and values are stored once per key/value head
/// (TransformerLens's `_W_K`, `_W_V`, `_b_K`, `_b_V`) and read through [`AttnWeights::w_k`] and
/// kin by query head; nothing is copied per query head.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[d_model, d_head]` per query head.
    pub w_q: Vec<Matrix>,
    /// `[d_model, d_head]` per key/value head.
    pub w_k_kv: Vec<Matrix>,
    pub w_v_kv: Vec<Matrix>,
    /// `[d_head, d_model]` per query head.
    pub w_o: Vec<Matrix>,
    /// `[d_head]` per query head.
    pub b_q: Vec<Row>,
    /// `[d_head]` per key/value head.
    pub b_k_kv: Vec<Row>,
    pub b_v_kv: Vec<Row>,
    /// `[d_model]`, added once to the sum of the heads.
    pub b_o: Row,
    /// What `q·k` is divided by: `sqrt(d_head)` unless the model gives `scale`
    /// (TransformerLens's `attn_scale`).
    pub attn_scale: f64,
    /// Keys after the query are masked (TransformerLens `attention_dir = "causal"`).
    pub causal: bool,
    pub rotary: Option<Rotary>,
    /// Shortformer: `W_Q`, `W_K` as stored (per query head and per key/value head), which read
    /// `W_pos`: the positions are added after the LayerNorm, so no LayerNorm folding changes
    /// what reads them.
    pub pos_readers: Option<(Vec<Matrix>, Vec<Matrix>)>,
}

impl AttnWeights {
    pub fn n_heads(&self) -> usize {
        self.w_q.len()
    }

    /// The key/value head query head `h` reads: `h / (n_heads / kv_heads)`.
    pub fn group(&self, h: usize) -> usize {
        h / (self.w_q.len() / self.w_k_kv.len())
    }

    pub fn w_k(&self, h: usize) -> &Matrix {
        &self.w_k_kv[self.group(h)]
    }

    pub fn w_v(&self, h: usize) -> &Matrix {
        &self.w_v_kv[self.group(h)]
    }

    pub fn b_k(&self, h: usize) -> &Row {
        &self.b_k_kv[self.group(h)]
    }

    pub fn b_v(&self, h: usize) -> &Row {
        &self.b_v_kv[self.group(h)]
    }

    /// Shortformer: what `W_pos` is read through on the query and key side of head `h`.
    pub fn pos_readers(&self, h: usize) -> Option<(&Matrix, &Matrix)> {
        self.pos_readers.as_ref().map(|(q, k)| (&q[h], &k[self.group(h)]))
    }
}

/// An MLP's weights: `act(x W_in + b_in) W_out + b_out`; gated (TransformerLens's `GatedMLP`),
/// `(act(x W_gate + b_gate) ⊙ (x W_in + b_lin) + b_in) W_out + b_out`, where `b_gate` and `b_lin`
/// are zero as loaded (TransformerLens has neither) and hold a norm's bias once folded; with
/// `solu_ln` the activation is followed by [`MlpWeights::inner_norm`]. Biases not declared are
/// zero.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// `[d_model, d_mlp]`.
    pub w_in: Matrix,
    /// `[d_mlp]`.
    pub b_in: Row,
    /// A gated MLP's `W_gate` `[d_model, d_mlp]`, with its input constant `b_gate` and the linear
    /// input's `b_lin` (`[d_mlp]` each).
    pub gate: Option<Gate>,
    /// `solu_ln`'s LayerNorm over the neurons (`[d_mlp]` weights: `mlp.ln.w`, `mlp.ln.b`).
    pub inner_norm: Option<NormWeights>,
    /// `[d_mlp, d_model]`.
    pub w_out: Matrix,
    /// `[d_model]`.
    pub b_out: Row,
    pub act: Activation,
}

/// A gated MLP's gate: `W_gate` and the constants of its two inputs (see [`MlpWeights`]).
#[derive(Debug, Clone)]
pub struct Gate {
    pub w_gate: Matrix,
    pub b_gate: Row,
    pub b_lin: Row,
}

/// TransformerLens's weight processing, step by step ([`Params::process`]): `from_pretrained`
/// applies all four by default ([`Processing::TRANSFORMER_LENS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

impl Processing {
    /// No step: the weights as given.
    pub const NONE: Processing =
        Processing { fold_ln: false, center_writing_weights: false, center_unembed: false, fold_value_biases: false };

    /// `fold_ln` alone.
    pub const FOLD_LN: Processing = Processing { fold_ln: true, ..Processing::NONE };

    /// `HookedTransformer.from_pretrained`'s defaults.
    pub const TRANSFORMER_LENS: Processing =
        Processing { fold_ln: true, center_writing_weights: true, center_unembed: true, fold_value_biases: true };

    /// The steps, by TransformerLens's names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.fold_ln, "fold_ln"),
            (self.center_writing_weights, "center_writing_weights"),
            (self.center_unembed, "center_unembed"),
            (self.fold_value_biases, "fold_value_biases"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// One residual block: `ln1` (if declared) before attention, `ln2` (if declared) before the MLP;
/// in a `parallel` layer the MLP reads the attention's input, and with `shared_norm` (GPT-J) it
/// goes through `ln1` (then `ln2` is `None`).
#[derive(Debug, Clone)]
pub struct LayerParams {
    pub ln1: Option<NormWeights>,
    pub attn: AttnWeights,
    pub ln2: Option<NormWeights>,
    pub mlp: Option<MlpWeights>,
    pub parallel: bool,
    pub shared_norm: bool,
}

impl LayerParams {
    /// The norm the MLP's input goes through: `ln2`, or `ln1` when shared.
    pub fn mlp_norm(&self) -> Option<&NormWeights> {
        if self.shared_norm {
            self.ln1.as_ref()
        } else {
            self.ln2.as_ref()
        }
    }
}

/// The weights a model needs, checked against its declarations and dimensions.
#[derive(Debug, Clone)]
pub struct Params {
    /// `[d_vocab, d_model]`.
    pub w_e: Matrix,
    /// `[n_ctx, d_model]`, when the model has a positional embedding.
    pub w_pos: Option<Matrix>,
    pub layers: Vec<LayerParams>,
    /// Before the unembedding, when the model declares a final `layernorm`.
    pub ln_final: Option<NormWeights>,
    /// `[d_model, d_vocab_out]`.
    pub w_u: Matrix,
    /// `[d_vocab_out]`; zero unless the model declares `unembed(bias)`.
    pub b_u: Row,
    /// `W_pos` is shortformer's: added to every layer's query and key inputs, not to the stream.
    pub shortformer: bool,
}

fn known(name: &str, size: &Size) -> Result<usize, EvalError> {
    match size {
        Size::Known(n) => usize::try_from(*n).map_err(|_| EvalError::Symbolic(name.to_string())),
        Size::Symbolic(_) => Err(EvalError::Symbolic(name.to_string())),
    }
}

/// Where each TransformerLens name is found in a weight file: under that name by default;
/// `TL=FILE` pairs rename, with `{l}` standing for the layer number on both sides
/// (`blocks.{l}.attn.W_Q=layers.{l}.wq`). Tensors keep TransformerLens's layout and shapes.
///
/// A mapping must be used: once a model's tensors are read ([`Params::from_weights`]), one that
/// matched no name the model reads is an error, as is a name mapped twice.
#[derive(Debug, Default)]
pub struct NameMap {
    renames: Vec<(String, String)>,
    /// Whether `renames[i]` matched a name [`NameMap::resolve`] was asked for.
    /// Atomic, so that the layers may be read on the threads.
    used: Vec<std::sync::atomic::AtomicBool>,
}

impl Clone for NameMap {
    fn clone(&self) -> NameMap {
        let used = self
            .used
            .iter()
            .map(|u| std::sync::atomic::AtomicBool::new(u.load(std::sync::atomic::Ordering::Relaxed)))
            .collect();
        NameMap { renames: self.renames.clone(), used }
    }
}

impl NameMap {
    pub fn parse(pairs: &[String]) -> Result<NameMap, EvalError> {
        let mut renames = Vec::new();
        for pair in pairs {
            let bad = |why: &str| EvalError::NameMap(format!("`{pair}`: {why}"));
            let (from, to) = pair.split_once('=').ok_or_else(|| bad("expected TL_NAME=FILE_NAME"))?;
            if from.is_empty() || to.is_empty() {
                return Err(bad("both names are needed"));
            }
            if from.matches("{l}").count() > 1 || from.contains("{l}") != to.contains("{l}") {
                return Err(bad("`{l}` must appear once on both sides or on neither"));
            }
            if let Some((_, first)) = renames.iter().find(|(f, _): &&(String, String)| f == from) {
                return Err(bad(&format!("`{from}` is mapped twice (first to `{first}`)")));
            }
            renames.push((from.to_string(), to.to_string()));
        }
        let used = renames.iter().map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        Ok(NameMap { renames, used })
    }

    /// The first mapping no name was resolved through, if any.
    fn unused(&self) -> Option<&(String, String)> {
        self.renames
            .iter()
            .zip(&self.used)
            .find(|(_, used)| !used.load(std::sync::atomic::Ordering::Relaxed))
            .map(|(pair, _)| pair)
    }

    /// The file's name for the TransformerLens tensor `tl`.
    pub fn resolve(&self, tl: &str) -> String {
        for ((from, to), used) in self.renames.iter().zip(&self.used) {
            match from.split_once("{l}") {
                None if from == tl => {
                    used.store(true, std::sync::atomic::Ordering::Relaxed);
                    return to.clone();
                }
                None => {}
                Some((prefix, suffix)) => {
                    let layer = tl.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix));
                    if let Some(layer) = layer.filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())) {
                        used.store(true, std::sync::atomic::Ordering::Relaxed);
                        return to.replace("{l}", layer);
                    }
                }
            }
        }
        tl.to_string()
    }
}

/// Reads TransformerLens tensors (by their names, renamed by a [`NameMap`]) from a weight file.
struct Reader<'a> {
    weights: &'a Weights,
    names: &'a NameMap,
    /// Whether `matrix` and `per_head` read their tensor; when not, they only check the tensor's
    /// name, dtype and shape ([`StatsParams`] leaves the vocabulary-sized, MLP and attention
    /// matrices in the file, and reads the attention a layer at a time when asked).
    read_matrices: bool,
    /// The model's positions are shortformer ([`AttnWeights::pos_readers`] are kept).
    shortformer: bool,
}

/// TransformerLens's name of layer `l`'s attention tensor `w` (`W_Q`, `b_K`, ...): with
/// grouped-query attention it keeps one key and value per group, under `_W_K`, `_W_V`, `_b_K`,
/// `_b_V`.
fn attention_tensor(l: usize, w: &str, grouped: bool) -> String {
    let kv = matches!(w, "W_K" | "W_V" | "b_K" | "b_V");
    if grouped && kv {
        format!("blocks.{l}.attn._{w}")
    } else {
        format!("blocks.{l}.attn.{w}")
    }
}

/// Row-major `[n_heads, rows, cols]` data as one matrix per head.
fn per_head_matrices<T: Copy + Into<f64>>(data: &[T], rows: usize, cols: usize) -> Vec<Matrix> {
    data.chunks_exact(rows * cols).map(|chunk| from_row_major(rows, cols, chunk)).collect()
}

impl Reader<'_> {
    /// The tensor `tl`'s row-major data, its shape checked.
    fn data(&self, tl: &str, shape: &[usize]) -> Result<Cow<'_, [f64]>, EvalError> {
        Ok(self.weights.read(&self.names.resolve(tl), shape)?)
    }

    /// The matrix `tl`, or when matrices are not read ([`Reader::read_matrices`]) an empty one
    /// after checking that `tl` is there with this shape.
    fn matrix(&self, tl: &str, rows: usize, cols: usize) -> Result<Matrix, EvalError> {
        if !self.read_matrices {
            self.weights.check(&self.names.resolve(tl), &[rows, cols])?;
            return Ok(Matrix::zeros(0, 0));
        }
        Ok(from_row_major(rows, cols, &self.data(tl, &[rows, cols])?))
    }

    /// `[n_heads, rows, cols]` as one matrix per head, or when matrices are not read
    /// ([`Reader::read_matrices`]) none, after checking that `tl` is there with this shape.
    fn per_head(&self, tl: &str, n_heads: usize, rows: usize, cols: usize) -> Result<Vec<Matrix>, EvalError> {
        if !self.read_matrices {
            self.weights.check(&self.names.resolve(tl), &[n_heads, rows, cols])?;
            return Ok(Vec::new());
        }
        Ok(per_head_matrices(&self.data(tl, &[n_heads, rows, cols])?, rows, cols))
    }

    fn row(&self, tl: &str, len: usize) -> Result<Row, EvalError> {
        Ok(Row::from_row_slice(&self.data(tl, &[len])?))
    }

    /// The file's name for `tl`, if the file holds such a tensor.
    fn present(&self, tl: &str) -> Option<String> {
        let name = self.names.resolve(tl);
        self.weights.contains(&name).then_some(name)
    }

    /// The file holds no layer the model does not declare: no `blocks.{l}.*` (under
    /// TransformerLens's names, or the file's own through `--name`) for `l` past the model's last
    /// layer. Such a layer would be silently left out of every number.
    fn no_layers_beyond(&self, model: &Model) -> Result<(), EvalError> {
        let n = model.layers.len();
        let layer_of = |name: &str| -> Option<usize> { name.strip_prefix("blocks.")?.split('.').next()?.parse().ok() };
        let beyond = |name: &str| layer_of(name).filter(|&l| l >= n);
        let extra: Vec<(usize, String)> =
            self.weights.names().filter_map(|name| Some((beyond(name)?, name.to_string()))).collect();
        // The first extra layer, named by a weight (also through `--name`, for a renamed layout
        // such as `blocks.{l}.attn.W_Q=layers.{l}.wq`) rather than by a buffer, where it has one.
        const LAYER_TENSORS: [&str; 8] =
            ["attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "ln1.w", "ln2.w", "mlp.W_in", "mlp.W_out"];
        let first = extra.iter().map(|&(l, _)| l).min().unwrap_or(n);
        let weight = LAYER_TENSORS.iter().find_map(|t| self.present(&format!("blocks.{first}.{t}")));
        let Some(name) = weight.or_else(|| extra.iter().min().map(|(_, name)| name.clone())) else { return Ok(()) };
        let held = extra.iter().map(|(l, _)| l + 1).max().unwrap_or(first + 1);
        let message = format!(
            "the weights have `{name}` (layer {first}) but the model declares {n} layer{}",
            if n == 1 { "" } else { "s" }
        );
        let (span, label) = match model.layers.last() {
            Some(last) => (last.span, format!("the model's last layer, layer {}", n - 1)),
            None => (model.embed, "no layer after this".to_string()),
        };
        Err(EvalError::Undeclared(Diagnostic::new(span, message, label).with_help(format!(
            "the weights hold {held} layers: declare all of them (`repeat {held} {{ layer {{ ... }} }}`)"
        ))))
    }

    /// The norm `{prefix}` as the model declares it: `{prefix}.w` when its kind has a weight,
    /// `{prefix}.b` when it has a bias. A tensor the kind has not (an `ln1.b` for an `rmsnorm`, an
    /// `ln1.w` for a `layernorm(pre)`) is refused at the declaration, since ignoring it would
    /// compute another model. When the model declares no norm the file must not hold
    /// `{prefix}.w`: `undeclared` gets the file's name for it and says where the declaration is
    /// missing.
    fn norm(
        &self,
        prefix: &str,
        declared: Option<&Norm>,
        width: usize,
        undeclared: impl FnOnce(&str) -> Diagnostic,
    ) -> Result<Option<NormWeights>, EvalError> {
        let Some(norm) = declared else {
            return match self.present(&format!("{prefix}.w")) {
                Some(name) => Err(EvalError::Undeclared(undeclared(&name))),
                None => Ok(None),
            };
        };
        let kind = norm.kind;
        for (part, has) in [("w", kind.has_weight()), ("b", kind.has_bias())] {
            if let (false, Some(name)) = (has, self.present(&format!("{prefix}.{part}"))) {
                let what = if part == "w" { "weight" } else { "bias" };
                let better = match (kind, part) {
                    (NormKind::Rms, _) => "`layernorm` (TransformerLens LN)",
                    (NormKind::LayerNormPre, _) => "`layernorm`",
                    (NormKind::RmsPre, "w") => "`rmsnorm`",
                    _ => "`layernorm`",
                };
                let message =
                    format!("the weights have `{name}` but this norm is `{}`, which has no {what}", kind.syntax());
                return Err(EvalError::Undeclared(
                    Diagnostic::new(norm.span, message, format!("`{}` here", kind.syntax()))
                        .with_help(format!("declare the norm the weights are for, e.g. {better}")),
                ));
            }
        }
        let w =
            if kind.has_weight() { self.row(&format!("{prefix}.w"), width)? } else { Row::from_element(width, 1.0) };
        let b = if kind.has_bias() { self.row(&format!("{prefix}.b"), width)? } else { Row::zeros(width) };
        Ok(Some(NormWeights { kind, w, b, eps: norm.eps.0 }))
    }

    /// A bias's row-major data: read when the model declares it, zeros when it does not. An
    /// undeclared bias may still be in the file, but only as zeros (TransformerLens's
    /// attention-only state_dicts store all-zero `b_Q` ... `b_U`); a nonzero one would be
    /// silently dropped, so it is refused through `undeclared`.
    fn bias(
        &self,
        tl: &str,
        shape: &[usize],
        declared: bool,
        undeclared: impl FnOnce(&str) -> Diagnostic,
    ) -> Result<Vec<f64>, EvalError> {
        if declared {
            return Ok(self.data(tl, shape)?.to_vec());
        }
        if let Some(name) = self.present(tl) {
            if self.weights.read(&name, shape)?.iter().any(|&x| x != 0.0) {
                return Err(EvalError::Undeclared(undeclared(&name)));
            }
        }
        Ok(vec![0.0; shape.iter().product()])
    }

    /// One layer's weights, `l` its index in the model.
    fn layer(&self, l: usize, layer: &Layer, d_model: usize) -> Result<LayerParams, EvalError> {
        let attn = &layer.attn;
        let ln1 = self.norm(&format!("blocks.{l}.ln1"), attn.ln.as_ref(), d_model, |name| {
            let message = format!("the weights have `{name}` but layer {l} declares no norm before attention");
            Diagnostic::new(attn.span, message, "no `layernorm` before this attention")
                .with_help("add `layernorm` before `attn(...)`")
        })?;
        let (h, d_head) = (attn.n_heads, known("d_head", &attn.d_head)?);
        let (kv, grouped) = (attn.kv_heads, attn.kv_heads != attn.n_heads);
        let name = |w: &str| attention_tensor(l, w, grouped);
        let no_attn_bias = |name: &str| {
            let message = format!("the weights have a nonzero `{name}` but layer {l}'s attention declares no bias");
            Diagnostic::new(attn.span, message, "no `bias` here")
                .with_help(format!("add `bias` to `attn(...)`: `attn(heads = {h}, bias)`"))
        };
        let per_head_bias = |w: &str, heads: usize| -> Result<Vec<Row>, EvalError> {
            let data = self.bias(&name(w), &[heads, d_head], attn.bias, no_attn_bias)?;
            Ok(data.chunks_exact(d_head).map(Row::from_row_slice).collect())
        };
        let (w_q, w_k_kv) =
            (self.per_head(&name("W_Q"), h, d_model, d_head)?, self.per_head(&name("W_K"), kv, d_model, d_head)?);
        let pos_readers = self.shortformer.then(|| (w_q.clone(), w_k_kv.clone()));
        let attn_weights = AttnWeights {
            w_q,
            w_k_kv,
            w_v_kv: self.per_head(&name("W_V"), kv, d_model, d_head)?,
            w_o: self.per_head(&name("W_O"), h, d_head, d_model)?,
            b_q: per_head_bias("b_Q", h)?,
            b_k_kv: per_head_bias("b_K", kv)?,
            b_v_kv: per_head_bias("b_V", kv)?,
            b_o: Row::from_vec(self.bias(&name("b_O"), &[d_model], attn.bias, no_attn_bias)?),
            attn_scale: attn.scale.map_or((d_head as f64).sqrt(), |s| s.0),
            causal: attn.causal,
            rotary: attn.rotary,
            pos_readers,
        };
        let Some(mlp) = &layer.mlp else {
            // Without an MLP neither its weights nor the norm before it may be in the file.
            let ln2 = format!("blocks.{l}.ln2.w");
            if let Some(name) = [format!("blocks.{l}.mlp.W_in"), ln2.clone()].iter().find_map(|tl| self.present(tl)) {
                let add =
                    if self.present(&ln2).is_some() { "`layernorm` then `mlp(act = ...)`" } else { "`mlp(act = ...)`" };
                let message = format!("the weights have `{name}` but layer {l} declares no MLP");
                return Err(EvalError::Undeclared(
                    Diagnostic::new(layer.span, message, "this layer has no `mlp`")
                        .with_help(format!("add {add} after `attn(...)`; act is one of {}", Activation::known())),
                ));
            }
            return Ok(LayerParams {
                ln1,
                attn: attn_weights,
                ln2: None,
                mlp: None,
                parallel: false,
                shared_norm: false,
            });
        };
        let shared_norm = matches!(layer.mlp_norm(), MlpNorm::Shared(_));
        let ln2 = self.norm(&format!("blocks.{l}.ln2"), mlp.ln.as_ref(), d_model, |name| {
            let message = format!("the weights have `{name}` but layer {l} declares no norm before the MLP");
            let help = if shared_norm {
                "a parallel layer's MLP without a norm shares the attention's (GPT-J); for a norm of its own add `layernorm` before `mlp(...)`"
            } else {
                "add `layernorm` before `mlp(...)`"
            };
            Diagnostic::new(mlp.span, message, "no norm before this MLP").with_help(help)
        })?;
        let d_mlp = known("d_mlp", &mlp.d_mlp)?;
        let name = |w: &str| format!("blocks.{l}.mlp.{w}");
        let no_mlp_bias = |name: &str| {
            let message = format!("the weights have a nonzero `{name}` but layer {l}'s MLP declares no bias");
            Diagnostic::new(mlp.span, message, "no `bias` here")
                .with_help(format!("add `bias` to `mlp(...)`: `mlp(act = {}, bias)`", mlp.act.name()))
        };
        let gate = match (mlp.gated, self.present(&name("W_gate"))) {
            (true, _) => Some(Gate {
                w_gate: self.matrix(&name("W_gate"), d_model, d_mlp)?,
                b_gate: Row::zeros(d_mlp),
                b_lin: Row::zeros(d_mlp),
            }),
            (false, Some(found)) => {
                let message = format!("the weights have `{found}` but layer {l}'s MLP is not gated");
                return Err(EvalError::Undeclared(
                    Diagnostic::new(mlp.span, message, "not `gated`")
                        .with_help(format!("write `mlp(act = {}, gated)`", mlp.act.name())),
                ));
            }
            (false, None) => None,
        };
        // TransformerLens has one eps for every norm: the inner norm takes the MLP's own norm's.
        let eps = mlp.ln.map_or(Real(crate::model::NORM_EPS), |n| n.eps);
        let inner = mlp.inner_norm.map(|kind| Norm { kind, eps, span: mlp.span });
        let inner_norm = self.norm(&name("ln"), inner.as_ref(), d_mlp, |found| {
            let message = format!("the weights have `{found}` but layer {l}'s MLP has no norm inside");
            Diagnostic::new(mlp.span, message, "no inner norm")
                .with_help("only `act = solu_ln` has a norm inside its MLP (TransformerLens SoLU)")
        })?;
        let mlp_weights = MlpWeights {
            w_in: self.matrix(&name("W_in"), d_model, d_mlp)?,
            b_in: Row::from_vec(self.bias(&name("b_in"), &[d_mlp], mlp.bias, no_mlp_bias)?),
            gate,
            inner_norm,
            w_out: self.matrix(&name("W_out"), d_mlp, d_model)?,
            b_out: Row::from_vec(self.bias(&name("b_out"), &[d_model], mlp.bias, no_mlp_bias)?),
            act: mlp.act,
        };
        Ok(LayerParams { ln1, attn: attn_weights, ln2, mlp: Some(mlp_weights), parallel: layer.parallel, shared_norm })
    }
}

impl NormWeights {
    /// TransformerLens `LN` with these weights and the default eps.
    pub fn layer_norm(w: Row, b: Row) -> NormWeights {
        NormWeights { kind: NormKind::LayerNorm, w, b, eps: LN_EPS }
    }

    /// What is left of this norm once its weight and bias are folded into its readers
    /// (TransformerLens's `LNPre`, `RMSPre`): it still centres (LayerNorm) and divides by its
    /// scale.
    pub fn folded(&self) -> NormWeights {
        let width = self.w.len();
        NormWeights { kind: self.kind.folded(), w: Row::from_element(width, 1.0), b: Row::zeros(width), eps: self.eps }
    }
}

/// Folds a layer's `ln1` into every head's `W_Q`, `W_K`, `W_V` (and their biases), and, when the
/// MLP shares it, into `W_in` (and `W_gate`), leaving the folded norm.
fn fold_ln1(layer: &mut LayerParams) {
    if let Some(ln) = &mut layer.ln1 {
        let attn = &mut layer.attn;
        let readers = (attn.w_q.iter_mut().zip(&mut attn.b_q))
            .chain(attn.w_k_kv.iter_mut().zip(&mut attn.b_k_kv))
            .chain(attn.w_v_kv.iter_mut().zip(&mut attn.b_v_kv));
        for (w, b) in readers {
            fold_into_reader(ln, w, b);
        }
        if layer.shared_norm {
            if let Some(mlp) = &mut layer.mlp {
                fold_into_mlp(ln, mlp);
            }
        }
        *ln = ln.folded();
    }
}

/// Folds the norm an MLP reads into `W_in` and its input constant (`b_in`; a gated MLP's
/// `b_lin`, TransformerLens's `b_in` being added after the product), and `W_gate` with `b_gate`.
fn fold_into_mlp(ln: &NormWeights, mlp: &mut MlpWeights) {
    match &mut mlp.gate {
        None => fold_into_reader(ln, &mut mlp.w_in, &mut mlp.b_in),
        Some(gate) => {
            fold_into_reader(ln, &mut mlp.w_in, &mut gate.b_lin);
            fold_into_reader(ln, &mut gate.w_gate, &mut gate.b_gate);
        }
    }
}

/// Folds a norm's `w` and `b` into a matrix that reads its output, `reader` `[width, k]`, and
/// that reader's bias `[k]`: `bias += b · W`, `W ← diag(w) · W`, then, for a norm that centres
/// (LayerNorm), `W` centred (its mean over the rows subtracted from every row).
pub(super) fn fold_into_reader(ln: &NormWeights, reader: &mut Matrix, bias: &mut Row) {
    // Column by column: the matrix is column-major, and a reader can be `W_U`, 768 × 50257, whose
    // rows are strided (row by row, with `b · W` as a matrix product that packs all of `W`, this
    // took 2 s of a 7 s GPT-2-width load).
    for (mut column, bias) in reader.column_iter_mut().zip(bias.iter_mut()) {
        *bias += column.iter().zip(ln.b.iter()).map(|(x, b)| x * b).sum::<f64>();
        for (x, &w) in column.iter_mut().zip(ln.w.iter()) {
            *x *= w;
        }
        if ln.kind.centres() {
            let mean = column.mean();
            column.add_scalar_mut(-mean);
        }
    }
}

/// Whether every norm that reads the residual stream centres it (a LayerNorm, `layernorm` or
/// `layernorm(pre)`): before every attention, every MLP and the unembedding. A layer's `mlp` may
/// be `None` for a layer without one.
fn every_reader_centres(layers: &[LayerParams], ln_final: Option<&NormWeights>) -> bool {
    let centres = |n: Option<&NormWeights>| n.is_some_and(|n| n.kind.centres());
    centres(ln_final) && layers.iter().all(|l| centres(l.ln1.as_ref()) && (l.mlp.is_none() || centres(l.mlp_norm())))
}

/// Why `center_writing_weights` would compute another model, if it would: a norm that does not
/// centre what it reads ([`every_reader_centres`] false), or shortformer positions.
fn refuse_center_writing(every_reader_centres: bool, shortformer: bool) -> Result<(), EvalError> {
    if !every_reader_centres {
        return Err(EvalError::Processing(
            "center_writing_weights: it needs a LayerNorm (layernorm or layernorm(pre)) before every attention, every MLP and the unembedding; only then does the mean of what is written cancel".to_string(),
        ));
    }
    if shortformer {
        return Err(EvalError::Processing(
            "center_writing_weights: it would centre a shortformer's W_pos, which joins the queries and keys after the LayerNorm, and so change the attention scores (TransformerLens does it; ACDC loads redwood_attn_2l with center_writing_weights=False)".to_string(),
        ));
    }
    Ok(())
}

/// Subtracts from every row of `m` its mean (over d_model, for a matrix that writes the stream).
fn centre_rows(m: &mut Matrix) {
    for mut row in m.row_iter_mut() {
        let mean = row.mean();
        row.add_scalar_mut(-mean);
    }
}

fn centre_row(r: &mut Row) {
    let mean = r.mean();
    r.add_scalar_mut(-mean);
}

/// `center_writing_weights` of an attention layer: every head's `W_O` rows and `b_O`.
fn centre_attention_writers(attn: &mut AttnWeights) {
    attn.w_o.iter_mut().for_each(centre_rows);
    centre_row(&mut attn.b_o);
}

/// TransformerLens's `fold_value_biases`: `b_O += Σ_h b_V^h W_O^h`, then `b_V = 0`.
fn fold_value_biases(layers: &mut [LayerParams]) {
    for layer in layers {
        let attn = &mut layer.attn;
        let folded: Row =
            (0..attn.n_heads()).map(|h| attn.b_v(h) * &attn.w_o[h]).fold(Row::zeros(attn.b_o.len()), |a, b| a + b);
        attn.b_o += folded;
        for b in &mut attn.b_v_kv {
            b.fill(0.0);
        }
    }
}

/// The mean of every row of a matrix given a block of its columns at a time (`center_unembed`'s
/// means of `W_U` over the outputs): each row summed from 0 in column order and divided by the
/// number of columns, so the bits do not depend on how the columns are split into blocks.
struct RowMeans {
    sums: Vec<f64>,
    columns: usize,
}

impl RowMeans {
    fn new(rows: usize) -> RowMeans {
        RowMeans { sums: vec![0.0; rows], columns: 0 }
    }

    /// The next columns, in order.
    fn add(&mut self, block: &Matrix) {
        for column in block.column_iter() {
            for (sum, x) in self.sums.iter_mut().zip(column.iter()) {
                *sum += x;
            }
        }
        self.columns += block.ncols();
    }

    fn means(&self) -> Vec<f64> {
        self.sums.iter().map(|s| if self.columns == 0 { 0.0 } else { s / self.columns as f64 }).collect()
    }
}

/// `m[i][j] −= means[i]` (`center_unembed` of a block of `W_U`'s columns).
fn subtract_row_means(m: &mut Matrix, means: &[f64]) {
    for mut column in m.column_iter_mut() {
        for (x, mean) in column.iter_mut().zip(means) {
            *x -= mean;
        }
    }
}

impl Params {
    /// Reads TransformerLens's names (`embed.W_E`, `blocks.{l}.attn.W_Q`, `blocks.{l}.ln1.w`,
    /// `blocks.{l}.mlp.W_in`, `unembed.b_U`, ...), renamed by `names`, and checks every shape
    /// against the model before any computation. Tensors the model does not declare are refused
    /// ([`EvalError::Undeclared`]) unless they are biases holding only zeros; buffers such as
    /// `attn.mask` are ignored.
    pub fn from_weights(model: &Model, weights: &Weights, names: &NameMap) -> Result<Params, EvalError> {
        Params::read(model, &Reader { weights, names, read_matrices: true, shortformer: model.shortformer() })
    }

    /// [`Params::from_weights`] with `read`'s setting for the large matrices.
    fn read(model: &Model, read: &Reader<'_>) -> Result<Params, EvalError> {
        let d_model = known("d_model", &model.d_model)?;
        let d_vocab = known("d_vocab", &model.d_vocab)?;
        let w_e = read.matrix("embed.W_E", d_vocab, d_model)?;
        let w_pos = match model.pos_embed {
            Some(_) => {
                let n_ctx = model.dims.get("n_ctx").ok_or_else(|| EvalError::Symbolic("n_ctx".to_string()))?;
                let n_ctx = known("n_ctx", n_ctx)?;
                Some(read.matrix("pos_embed.W_pos", n_ctx, d_model)?)
            }
            None => {
                if let Some(name) = read.present("pos_embed.W_pos") {
                    let message = format!("the weights have `{name}` but the model declares no positional embedding");
                    return Err(EvalError::Undeclared(
                        Diagnostic::new(model.embed, message, "no `pos_embed` after this")
                            .with_help("add `pos_embed` after `embed` (with `dim n_ctx = N`)"),
                    ));
                }
                None
            }
        };
        // The layers on the threads (their tensors converted and checked side by side); the
        // first error in layer order is the one reported, as one after another would.
        let numbered: Vec<(usize, &crate::model::Layer)> = model.layers.iter().enumerate().collect();
        let layers = crate::parallel::parallel_map(&numbered, |&(l, layer)| read.layer(l, layer, d_model))
            .into_iter()
            .collect::<Result<_, _>>()?;
        read.no_layers_beyond(model)?;
        let unembed = model.unembed.span;
        let ln_final = read.norm("ln_final", model.ln_final.as_ref(), d_model, |name| {
            let message = format!("the weights have `{name}` but the model declares no final norm");
            Diagnostic::new(unembed, message, "no `layernorm` before the unembedding")
                .with_help("add `layernorm` before `unembed`")
        })?;
        let d_vocab_out = known("d_vocab_out", model.d_vocab_out())?;
        let w_u = read.matrix("unembed.W_U", d_model, d_vocab_out)?;
        let b_u = Row::from_vec(read.bias("unembed.b_U", &[d_vocab_out], model.unembed.bias, |name| {
            let message = format!("the weights have a nonzero `{name}` but the unembedding declares no bias");
            Diagnostic::new(unembed, message, "no `bias` here").with_help("write `unembed(bias)`")
        })?);
        if let Some((from, to)) = read.names.unused() {
            return Err(EvalError::NameMap(format!(
                "`{from}={to}`: this model reads no tensor `{from}` (TransformerLens names such as `embed.W_E`, `blocks.{{l}}.attn.W_Q`, `unembed.W_U`)"
            )));
        }
        Ok(Params { w_e, w_pos, layers, ln_final, w_u, b_u, shortformer: model.shortformer() })
    }

    /// The weights after TransformerLens's processing steps `processing` names, in its order
    /// (`load_and_process_state_dict`: fold_ln, center_writing_weights, center_unembed,
    /// fold_value_biases). Each is exact for the model it makes; `center_unembed` shifts every
    /// position's logits by a constant (their mean over the outputs), which changes no softmax,
    /// and `fold_value_biases` moves each head's `b_V W_O` into `b_O` (every attention row sums to
    /// 1). Refused where a step would compute another model ([`EvalError::Processing`]).
    pub fn process(&self, processing: Processing) -> Result<Params, EvalError> {
        let mut p = if processing.fold_ln { self.fold_layer_norm() } else { self.clone() };
        if processing.center_writing_weights {
            p.center_writing_weights()?;
        }
        if processing.center_unembed {
            let mut means = RowMeans::new(p.w_u.nrows());
            means.add(&p.w_u);
            subtract_row_means(&mut p.w_u, &means.means());
            centre_row(&mut p.b_u);
        }
        if processing.fold_value_biases {
            fold_value_biases(&mut p.layers);
        }
        Ok(p)
    }

    /// TransformerLens's `center_writing_weights`: every matrix and bias that writes the residual
    /// stream (`W_E`, `W_pos`, `W_O`, `b_O`, `W_out`, `b_out`) loses its mean over d_model. Exact
    /// only when everything that reads the stream centres it first, so refused unless every
    /// norm is a LayerNorm (`layernorm` or `layernorm(pre)`) and every layer has them; refused for
    /// shortformer positions, which join the queries and keys after the norm (TransformerLens
    /// centres them anyway, which changes the attention scores).
    fn center_writing_weights(&mut self) -> Result<(), EvalError> {
        refuse_center_writing(every_reader_centres(&self.layers, self.ln_final.as_ref()), self.shortformer)?;
        centre_rows(&mut self.w_e);
        if let Some(w_pos) = &mut self.w_pos {
            centre_rows(w_pos);
        }
        for layer in &mut self.layers {
            centre_attention_writers(&mut layer.attn);
            if let Some(mlp) = &mut layer.mlp {
                centre_rows(&mut mlp.w_out);
                centre_row(&mut mlp.b_out);
            }
        }
        Ok(())
    }

    /// TransformerLens's `fold_layer_norm(state_dict, fold_biases=True, center_weights=True)`.
    /// Every norm `(w, b)` is folded into each matrix that reads its output (`W_Q`, `W_K`, `W_V`
    /// of every head after `ln1`, `W_in` and `W_gate` after `ln2` (or a shared `ln1`), `W_U` after
    /// `ln_final`): the reader's bias gains `b · W`, then `W ← diag(w) · W`, then, after a
    /// LayerNorm, `W` is centred over its d_model rows. The norm stays, folded
    /// ([`NormWeights::folded`]): it still divides by its scale (and a LayerNorm still centres),
    /// like TransformerLens's `LNPre` and `RMSPre`.
    ///
    /// Exact, not an approximation: with `C` the centring projection (symmetric, `C² = C`),
    /// `LN(x) · W + c = (x C / σ) · diag(w) W + (b W + c)`, and σ depends only on the residual
    /// stream `x`, not on `w` or `b`, so `diag(w)` moves into the reader and `b W` into its bias.
    /// Centring the reader changes nothing either: `(x C) · (C W') = x C² W' = (x C) · W'`, so
    /// centring the input and then centring `W'` is the same as centring the input alone. Folding
    /// twice is folding once; a model without LayerNorms is returned unchanged.
    pub fn fold_layer_norm(&self) -> Params {
        let mut folded = self.clone();
        for layer in &mut folded.layers {
            fold_ln1(layer);
            if let (Some(ln), Some(mlp)) = (&mut layer.ln2, &mut layer.mlp) {
                fold_into_mlp(ln, mlp);
                *ln = ln.folded();
            }
        }
        if let Some(ln) = &mut folded.ln_final {
            fold_into_reader(ln, &mut folded.w_u, &mut folded.b_u);
            *ln = ln.folded();
        }
        folded
    }

    /// Every head as `(layer, head)`, in layer then head order.
    pub fn heads(&self) -> Vec<(usize, usize)> {
        let per_layer = self.layers.iter().enumerate();
        per_layer.flat_map(|(l, layer)| (0..layer.attn.n_heads()).map(move |h| (l, h))).collect()
    }

    pub fn d_vocab(&self) -> usize {
        self.w_e.nrows()
    }

    /// The number of logits: `d_vocab_out` when the model declares it, else `d_vocab`.
    pub fn d_vocab_out(&self) -> usize {
        self.w_u.ncols()
    }

    /// Whether `W_pos` is added to the residual stream (a positional embedding, not shortformer).
    pub fn pos_in_stream(&self) -> bool {
        self.w_pos.is_some() && !self.shortformer
    }

    /// Checks a token sequence against the vocabulary and the context length.
    pub fn check_tokens(&self, tokens: &[usize]) -> Result<(), EvalError> {
        if tokens.is_empty() {
            return Err(EvalError::NoTokens);
        }
        if let Some(w_pos) = &self.w_pos {
            if tokens.len() > w_pos.nrows() {
                return Err(EvalError::TooManyTokens { n_tokens: tokens.len(), n_ctx: w_pos.nrows() });
            }
        }
        let d_vocab = self.d_vocab();
        match tokens.iter().enumerate().find(|(_, &t)| t >= d_vocab) {
            Some((position, &token)) => Err(EvalError::TokenOutOfRange { token, position, d_vocab }),
            None => Ok(()),
        }
    }

    /// The source's rows: `W_E[tokens]` or `W_pos[..n]`, `[n, d_model]`.
    pub fn source_rows(&self, source: Source, tokens: &[usize]) -> Matrix {
        match source {
            Source::E => Matrix::from_fn(tokens.len(), self.w_e.ncols(), |i, j| self.w_e[(tokens[i], j)]),
            Source::P => {
                let w_pos = self.w_pos.as_ref().expect("a P path exists only with a positional embedding");
                w_pos.rows(0, tokens.len()).into_owned()
            }
            other => unreachable!("{other:?} has no embedding rows"),
        }
    }
}

/// What the statistics read, with the large matrices left in the weights file: the LayerNorms
/// and biases held, every head's weights read a layer at a time when asked
/// ([`StatsParams::attention`]), and the two vocabulary-sized matrices a chunk of the
/// vocabulary at a time ([`StatsParams::embed_rows`], [`StatsParams::unembed_columns`]); every
/// tensor's name, dtype and shape checked when made. So the memory the statistics take is far
/// below that of the weights (GPT-2 small's `W_E` and `W_U` alone are 309 MB each in f64, its
/// attention weights 226 MB).
pub struct StatsParams<'w> {
    /// The layers without their MLPs (checked, not read) and without their attention matrices
    /// (`W_Q`, `W_K`, `W_V`, `W_O` empty: checked, read by [`StatsParams::attention`]), as in the
    /// file: the processing is applied as the matrices are read.
    layers: Vec<LayerParams>,
    /// Per layer: heads, key/value heads, d_head.
    heads: Vec<(usize, usize, usize)>,
    pub ln_final: Option<NormWeights>,
    weights: &'w Weights,
    names: NameMap,
    w_e: String,
    w_u: String,
    d_vocab: usize,
    d_vocab_out: usize,
    d_model: usize,
    /// Whether every norm of the model (the MLPs' included, which `layers` leaves out) centres
    /// what it reads, and whether its positions are shortformer's: what `center_writing_weights`
    /// needs ([`refuse_center_writing`]).
    every_reader_centres: bool,
    shortformer: bool,
    /// Whether `ln1` is folded into each layer's `W_Q`, `W_K`, `W_V` as they are read
    /// ([`StatsParams::fold_layer_norm`]).
    fold_ln1: bool,
    /// How many times each `W_O`'s rows and `W_E`'s rows are centred as they are read
    /// (`center_writing_weights`).
    writer_centrings: usize,
    /// What is done to `W_U`'s columns as they are read, in order: a final norm folded
    /// ([`StatsParams::fold_layer_norm`]), their mean over the outputs subtracted
    /// (`center_unembed`).
    unembed_steps: Vec<UnembedStep>,
}

/// One step [`StatsParams::unembed_columns`] applies to every block of `W_U`'s columns.
#[derive(Debug, Clone)]
enum UnembedStep {
    /// `ln_final` folded in ([`fold_into_reader`]).
    Fold(NormWeights),
    /// Row `i` less `means[i]`, `W_U`'s mean over all its columns as processed so far.
    Centre(Vec<f64>),
}

/// How many of `W_U`'s columns `center_unembed`'s pass over them reads at a time.
const UNEMBED_MEAN_BLOCK: usize = 1024;

impl<'w> StatsParams<'w> {
    /// Checks every tensor the model declares as [`Params::from_weights`] does (names, shapes,
    /// undeclared LayerNorms, MLPs and biases), reading only the LayerNorms and biases.
    pub fn from_weights(model: &Model, weights: &'w Weights, names: &NameMap) -> Result<StatsParams<'w>, EvalError> {
        let params =
            Params::read(model, &Reader { weights, names, read_matrices: false, shortformer: model.shortformer() })?;
        let every_reader_centres = every_reader_centres(&params.layers, params.ln_final.as_ref());
        let layers = params.layers.into_iter().map(|layer| LayerParams { mlp: None, ln2: None, ..layer }).collect();
        let heads = model
            .layers
            .iter()
            .map(|layer| Ok((layer.attn.n_heads, layer.attn.kv_heads, known("d_head", &layer.attn.d_head)?)))
            .collect::<Result<_, EvalError>>()?;
        Ok(StatsParams {
            layers,
            heads,
            ln_final: params.ln_final,
            weights,
            names: names.clone(),
            w_e: names.resolve("embed.W_E"),
            w_u: names.resolve("unembed.W_U"),
            d_vocab: known("d_vocab", &model.d_vocab)?,
            d_vocab_out: known("d_vocab_out", model.d_vocab_out())?,
            d_model: known("d_model", &model.d_model)?,
            every_reader_centres,
            shortformer: params.shortformer,
            fold_ln1: false,
            writer_centrings: 0,
            unembed_steps: Vec::new(),
        })
    }

    /// [`Params::fold_layer_norm`] for what the statistics read: `ln1` into every head's `W_Q`,
    /// `W_K`, `W_V` as a layer is read, `ln_final` into `W_U` column by column as it is read.
    pub fn fold_layer_norm(mut self) -> StatsParams<'w> {
        self.fold_ln1 = true;
        if let Some(ln) = self.ln_final.take() {
            self.ln_final = Some(ln.folded());
            self.unembed_steps.push(UnembedStep::Fold(ln));
        }
        self
    }

    /// [`Params::process`] for what the statistics read, step for step the same numbers, refused
    /// where it refuses, with its messages: `fold_ln` as [`StatsParams::fold_layer_norm`];
    /// `center_writing_weights` centres every head's `W_O` and `W_E`'s rows as they are read;
    /// `center_unembed` reads `W_U`'s columns once now, a block at a time, for their mean over
    /// the outputs (`d_model` numbers), then subtracts it from every block read later;
    /// `fold_value_biases` only moves biases, which no statistic reads (nothing to do). Memory
    /// stays that of a layer's attention weights; only `center_unembed` reads the file now.
    pub fn process(self, processing: Processing) -> Result<StatsParams<'w>, EvalError> {
        let mut p = if processing.fold_ln { self.fold_layer_norm() } else { self };
        if processing.center_writing_weights {
            refuse_center_writing(p.every_reader_centres, p.shortformer)?;
            p.writer_centrings += 1;
        }
        if processing.center_unembed {
            let mut means = RowMeans::new(p.d_model);
            for start in (0..p.d_vocab_out).step_by(UNEMBED_MEAN_BLOCK) {
                means.add(&p.unembed_columns(start, UNEMBED_MEAN_BLOCK.min(p.d_vocab_out - start))?);
            }
            p.unembed_steps.push(UnembedStep::Centre(means.means()));
        }
        Ok(p)
    }

    /// Per layer: its number of (query) heads and their d_head.
    pub fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.heads.iter().map(|&(h, _, d_head)| (h, d_head)).collect()
    }

    /// Layer `l`'s rotary embedding, if it has one.
    pub fn rotary(&self, l: usize) -> Option<&Rotary> {
        self.layers[l].attn.rotary.as_ref()
    }

    /// Layer `l`'s attention weights, `W_Q`, `W_K`, `W_V`, `W_O` read from the file now (their
    /// biases as read when checked), processed as [`StatsParams::process`] asked: the matrices
    /// [`Params::from_weights`] then [`Params::process`] would hold, bit for bit. No
    /// shortformer `pos_readers` (no statistic reads them).
    pub fn attention(&self, l: usize) -> Result<AttnWeights, WeightError> {
        let skeleton = &self.layers[l];
        let ((h, kv, d_head), d) = (self.heads[l], self.d_model);
        // As stored where that is f32 (widened in the transposing copy, not before it).
        let read = |w: &str, n: usize, rows: usize, cols: usize| -> Result<Vec<Matrix>, WeightError> {
            let (name, shape) = (self.names.resolve(&attention_tensor(l, w, kv != h)), [n, rows, cols]);
            Ok(match self.weights.read_f32(&name, &shape)? {
                Some(data) => per_head_matrices(&data, rows, cols),
                None => per_head_matrices(&self.weights.read(&name, &shape)?, rows, cols),
            })
        };
        let attn = AttnWeights {
            w_q: read("W_Q", h, d, d_head)?,
            w_k_kv: read("W_K", kv, d, d_head)?,
            w_v_kv: read("W_V", kv, d, d_head)?,
            w_o: read("W_O", h, d_head, d)?,
            pos_readers: None,
            ..skeleton.attn.clone()
        };
        let mut layer = LayerParams { ln1: skeleton.ln1.clone(), attn, ln2: None, mlp: None, ..*skeleton };
        if self.fold_ln1 {
            fold_ln1(&mut layer);
        }
        for _ in 0..self.writer_centrings {
            centre_attention_writers(&mut layer.attn);
        }
        Ok(layer.attn)
    }

    pub fn d_vocab(&self) -> usize {
        self.d_vocab
    }

    /// `W_U`'s columns: `d_vocab_out` when the model declares it.
    pub fn d_vocab_out(&self) -> usize {
        self.d_vocab_out
    }

    pub fn d_model(&self) -> usize {
        self.d_model
    }
}

impl StatsParams<'_> {
    /// `W_E[start..start + n]`, read from the file (the statistics' vocabulary stream), each row
    /// centred after `center_writing_weights` ([`StatsParams::process`]).
    pub fn embed_rows(&self, start: usize, n: usize) -> Result<Matrix, WeightError> {
        let data = self.weights.rows(&self.w_e, [self.d_vocab, self.d_model], start, n)?;
        let mut rows = from_row_major(n, self.d_model, &data);
        for _ in 0..self.writer_centrings {
            centre_rows(&mut rows);
        }
        Ok(rows)
    }

    /// [`StatsParams::embed_rows`] as stored, row-major `[n, d_model]` `f32`, where that is
    /// exact: `W_E` stored as F32, F16 or BF16 and not centred ([`Weights::rows_f32`]); `None`
    /// otherwise.
    pub fn embed_rows_f32(&self, start: usize, n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        if self.writer_centrings > 0 {
            return Ok(None);
        }
        self.weights.rows_f32(&self.w_e, [self.d_vocab, self.d_model], start, n)
    }

    /// [`StatsParams::unembed_columns`] as stored, row-major `[d_model, n]` `f32`, where that is
    /// exact: `W_U` stored as F32, F16 or BF16 with nothing folded in or subtracted; `None`
    /// otherwise.
    pub fn unembed_columns_f32(&self, start: usize, n: usize) -> Result<Option<Vec<f32>>, WeightError> {
        if !self.unembed_steps.is_empty() {
            return Ok(None);
        }
        self.weights.columns_f32(&self.w_u, [self.d_model, self.d_vocab_out], start, n)
    }

    /// Columns `start..start + n` of `W_U`, read from the file, with `ln_final` folded in after
    /// [`StatsParams::fold_layer_norm`] and the mean over the outputs subtracted after
    /// `center_unembed` ([`StatsParams::process`]).
    pub fn unembed_columns(&self, start: usize, n: usize) -> Result<Matrix, WeightError> {
        let data = self.weights.columns(&self.w_u, [self.d_model, self.d_vocab_out], start, n)?;
        let mut columns = from_row_major(self.d_model, n, &data);
        for step in &self.unembed_steps {
            match step {
                UnembedStep::Fold(ln) => {
                    // The bias `b_U` gains is not a statistic's concern.
                    let mut bias = Row::zeros(n);
                    fold_into_reader(ln, &mut columns, &mut bias);
                }
                UnembedStep::Centre(means) => subtract_row_means(&mut columns, means),
            }
        }
        Ok(columns)
    }
}

#[cfg(test)]
mod tests {
    use super::NameMap;

    #[test]
    fn names_map_with_layer_placeholders() {
        let map = NameMap::parse(&["blocks.{l}.attn.W_Q=layers.{l}.wq".into(), "embed.W_E=tok".into()]).unwrap();
        assert_eq!(map.resolve("blocks.11.attn.W_Q"), "layers.11.wq");
        assert_eq!(map.resolve("blocks.x.attn.W_Q"), "blocks.x.attn.W_Q");
        assert_eq!(map.resolve("embed.W_E"), "tok");
        assert_eq!(map.resolve("unembed.W_U"), "unembed.W_U");
        for bad in ["nothing", "=x", "a{l}=b", "a{l}{l}=b{l}"] {
            assert!(NameMap::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
