//! A standalone Python module (NumPy only) computing an expansion's paths and the heads'
//! statistics from a TransformerLens state_dict.
//!
//! The module is the model-independent runtime (`runtime.py`: a safetensors reader, weight
//! loading and checking, `fold_layer_norm`, the forward pass recording patterns and LayerNorm
//! scales, the steps a path is made of, every statistic, `main`) between a generated head (the
//! module docstring, `MODEL`: the declarations, `MAX_ORDER`) and a generated tail: one function
//! per path family (template), read off the template's factors, whose docstring is the template
//! in the paper's notation, and `FAMILIES`, the families in path order.
//!
//! Run as `python FILE WEIGHTS --tokens 3,7,1 [--pos last|N|all] [--attention-mask 1,1,0]` (and
//! TransformerLens's weight processing: `--fold-ln`, `--center-writing-weights`,
//! `--center-unembed`, `--fold-value-biases`, `--process-weights`, as pathc's, refused where
//! pathc refuses them), the module prints the JSON of `pathc paths --format json` (same keys, same
//! path order); with `--stats [--fold-ln]`, that of `pathc stats --format json`.
//!
//! Every architecture option of the model language is in `MODEL` and computed by the runtime as
//! pathc's `eval` computes it: `d_vocab_out` (the shape of `W_U`, `b_U`; no OV copying score,
//! said under `not_defined`), grouped-query attention (`_W_K`, `_W_V`, `_b_K`, `_b_V` kept per
//! key/value head, read by the query head's group), bidirectional layers, key masks, other
//! scales, rotary queries and keys, and shortformer positions (added to the query and key inputs
//! through `W_Q`, `W_K` as stored, never to the stream); and every block option: norms of every
//! kind with their eps (which tensors each reads and refuses, how each folds: an RMSNorm's readers
//! are not centred), gated MLPs (`W_gate`, and `b_gate`, `b_lin` holding a folded norm's bias),
//! `solu_ln` with its inner norm, the other GELUs, and parallel layers with two norms or one shared
//! (GPT-J: `ln1` folds into `W_in`, `W_gate` too). The logit paths need nothing more: the options
//! change only the frozen patterns and scales, which `W_V` a head reads, and the MLP outputs,
//! which are sources.

use std::fmt::Write as _;

pub use super::Options;
use super::{select, CodegenError, Family};
use crate::emit::notation::{Heads, Notation};
use crate::graph::NormSite;
use crate::model::{MlpNorm, Model, Norm, NormKind, Rotary, Size, NORM_EPS};
use crate::paths::{Factor, FactorKind, IndexVar, Side, Template};
use crate::Expansion;

/// The model-independent part of every generated module.
const RUNTIME: &str = include_str!("runtime.py");

/// The Python module for the paths `options` select, as a string.
pub fn generate(expansion: &Expansion, options: &Options) -> Result<String, CodegenError> {
    let families = select(expansion, options)?;
    let heads = expansion.heads_per_layer();
    let mut names: Vec<String> = Vec::new();
    let mut functions = Vec::new();
    for family in &families {
        let mut name = function_name(family.template);
        while names.contains(&name) {
            name.push('_');
        }
        functions.push(family_function(&name, family, &expansion.model, &heads)?);
        names.push(name);
    }
    let paths: u128 = families.iter().map(|f| f.count(&heads)).sum();
    let max_order = options.max_order(expansion);

    let mut out = String::new();
    out.push_str(&module_docstring(expansion, options, families.len(), paths));
    out.push_str("\nimport argparse\nimport json\nimport math\nimport struct\nimport sys\n\nimport numpy as np\n\n");
    out.push_str(
        "# The model's declarations (pathc's model file); sizes left symbolic there are None (`d_vocab_out`:\n\
         # \"d_vocab\" when the outputs are the tokens). `pos_embed`: None, \"standard\" (added to the residual\n\
         # stream) or \"shortformer\" (added to every layer's query and key inputs only). Per layer: `kv_heads`\n\
         # (query head h reads key/value head h // (heads // kv_heads)), `causal` (False: bidirectional),\n\
         # `scale` (what q·k is divided by; None: sqrt(d_head)), `rotary` (None, or the rotated dimensions,\n\
         # base and pairing: \"neox\" pairs (i, i + dim/2), \"gptj\" (2i, 2i + 1)), `parallel` (attention and\n\
         # MLP read the same resid_pre), `shared_norm` (a parallel layer whose MLP reads ln1's output: GPT-J).\n\
         # A norm (`ln1`, `ln2`, `ln_final`, an MLP's `inner_norm`) is None or {\"kind\", \"eps\"}, the kind as the\n\
         # model file writes it: \"layernorm\" (TransformerLens LN: centre, divide by sqrt(var + eps), · w + b),\n\
         # \"layernorm(pre)\" (LNPre: no w, b), \"rmsnorm\" (RMS: divide by sqrt(mean x² + eps), · w; no centring,\n\
         # no b), \"rmsnorm(pre)\" (RMSPre). An MLP: `act`, `gated` ((act(x·W_gate) ⊙ x·W_in + b_in)·W_out),\n\
         # `inner_norm` (solu_ln's norm over the neurons, weights `mlp.ln.w`, `mlp.ln.b`).\n",
    );
    out.push_str(&model_literal(&expansion.model));
    let _ = writeln!(
        out,
        "# The truncation of the generated paths (the JSON's `max_order`).\nMAX_ORDER = {}\n",
        py_option(max_order)
    );
    out.push('\n');
    out.push_str(RUNTIME);
    out.push_str(
        "\n\n# ---------------------------------------------------------------------------------------------\n\
         # Path families: one function per template of the expansion, in path order\n\
         # ---------------------------------------------------------------------------------------------\n",
    );
    for function in &functions {
        out.push_str("\n\n");
        out.push_str(function);
    }
    out.push_str("\n\nFAMILIES = [\n");
    for name in &names {
        let _ = writeln!(out, "    {name},");
    }
    out.push_str("]\n\n\nif __name__ == \"__main__\":\n    main()\n");
    Ok(out)
}

fn py_option(x: Option<impl std::fmt::Display>) -> String {
    x.map_or("None".to_string(), |x| x.to_string())
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn py_size(size: &Size) -> String {
    match size {
        Size::Known(n) => n.to_string(),
        Size::Symbolic(_) => "None".to_string(),
    }
}

/// A Python string literal (JSON's string syntax is Python's).
fn py_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A Python float literal that reads back as the same f64 (`1.0`, `2.5`, `1e300`).
fn py_float(x: f64) -> String {
    format!("{x:?}")
}

/// `d_vocab_out` as the module reads it: a number, `None` for a symbolic size of its own (read
/// from `W_U`), or `"d_vocab"` when the outputs are the tokens and that size is symbolic.
fn py_vocab_out(model: &Model) -> String {
    match model.d_vocab_out() {
        Size::Known(n) => n.to_string(),
        out if *out == model.d_vocab => py_str("d_vocab"),
        Size::Symbolic(_) => "None".to_string(),
    }
}

fn py_rotary(rotary: Option<&Rotary>) -> String {
    match rotary {
        None => "None".to_string(),
        Some(r) => {
            format!("{{\"dim\": {}, \"base\": {}, \"style\": {}}}", r.dim, py_float(r.base.0), py_str(r.style.name()))
        }
    }
}

/// A norm as `MODEL` holds it: `None`, or its kind as the model file writes it and its eps.
fn py_norm(kind: Option<NormKind>, eps: f64) -> String {
    match kind {
        None => "None".to_string(),
        Some(kind) => format!("{{\"kind\": {}, \"eps\": {}}}", py_str(kind.syntax()), py_float(eps)),
    }
}

fn py_declared_norm(norm: Option<&Norm>) -> String {
    py_norm(norm.map(|n| n.kind), norm.map_or(NORM_EPS, |n| n.eps.0))
}

fn model_literal(model: &Model) -> String {
    let mut out = String::from("MODEL = {\n");
    let _ = writeln!(out, "    \"name\": {},", py_str(&model.name));
    let _ = writeln!(out, "    \"d_model\": {},", py_size(&model.d_model));
    let _ = writeln!(out, "    \"d_vocab\": {},", py_size(&model.d_vocab));
    let _ = writeln!(out, "    \"d_vocab_out\": {},", py_vocab_out(model));
    let n_ctx = model.dims.get("n_ctx").map_or("None".to_string(), py_size);
    let _ = writeln!(out, "    \"n_ctx\": {n_ctx},");
    let pos_embed = match model.pos_embed {
        None => "None".to_string(),
        Some(p) => py_str(if p.shortformer { "shortformer" } else { "standard" }),
    };
    let _ = writeln!(out, "    \"pos_embed\": {pos_embed},");
    out.push_str("    \"layers\": [\n");
    for layer in &model.layers {
        let attn = &layer.attn;
        let mlp = match &layer.mlp {
            None => "None".to_string(),
            Some(m) => {
                // The inner norm's eps is the MLP's own norm's, else the default (as pathc reads it).
                let inner_eps = m.ln.map_or(NORM_EPS, |n| n.eps.0);
                format!(
                    "{{\"act\": {}, \"d_mlp\": {}, \"ln2\": {}, \"bias\": {}, \"gated\": {},\n                 \
                     \"inner_norm\": {}}}",
                    py_str(m.act.name()),
                    py_size(&m.d_mlp),
                    py_declared_norm(m.ln.as_ref()),
                    py_bool(m.bias),
                    py_bool(m.gated),
                    py_norm(m.inner_norm, inner_eps),
                )
            }
        };
        let shared_norm = matches!(layer.mlp_norm(), MlpNorm::Shared(_));
        let _ = writeln!(
            out,
            "        {{\"heads\": {}, \"kv_heads\": {}, \"d_head\": {}, \"ln1\": {}, \"attn_bias\": {},\n         \
             \"causal\": {}, \"scale\": {}, \"rotary\": {}, \"parallel\": {}, \"shared_norm\": {},\n         \
             \"mlp\": {mlp}}},",
            attn.n_heads,
            attn.kv_heads,
            py_size(&attn.d_head),
            py_declared_norm(attn.ln.as_ref()),
            py_bool(attn.bias),
            py_bool(attn.causal),
            attn.scale.map_or("None".to_string(), |s| py_float(s.0)),
            py_rotary(attn.rotary.as_ref()),
            py_bool(layer.parallel),
            py_bool(shared_norm),
        );
    }
    out.push_str("    ],\n");
    let _ = writeln!(out, "    \"ln_final\": {},", py_declared_norm(model.ln_final.as_ref()));
    let _ = writeln!(out, "    \"unembed_bias\": {},", py_bool(model.unembed.bias));
    out.push_str("}\n");
    out
}

fn module_docstring(expansion: &Expansion, options: &Options, families: usize, paths: u128) -> String {
    let model = &expansion.model;
    let mut selection = Vec::new();
    if let Some(k) = options.max_order(expansion) {
        selection.push(format!("order ≤ {k}"));
    }
    if !options.through.is_empty() {
        let heads: Vec<String> = options.through.iter().map(ToString::to_string).collect();
        selection.push(format!("only paths through {}", heads.join(" and ")));
    }
    let selection = if selection.is_empty() { "every path".to_string() } else { selection.join(", ") };
    let mut sources = crate::emit::sources(expansion).join(", ");
    if sources.is_empty() {
        sources = "none".to_string();
    }
    format!(
        r#""""Paths of `{name}` ({shape}): every path's logits and the heads' statistics.

Generated by pathc {version} (`pathc codegen MODEL --lang python`): {families} path families,
{paths} paths ({selection}); sources {sources}. Standalone: Python 3 and NumPy.

    python THIS_FILE WEIGHTS --tokens 3,7,1 [--pos last|N|all] [--attention-mask 1,1,0]
        [--fold-ln] [--center-writing-weights] [--center-unembed] [--fold-value-biases]
        [--process-weights]                   # as `pathc paths --format json`
    python THIS_FILE WEIGHTS --stats [--fold-ln]   # as `pathc stats --format json`

Conventions (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"):
- WEIGHTS is a TransformerLens state_dict (safetensors or npz), by TransformerLens's names and in
  its row layout (x @ W). A path term P ⊗ M of the paper (column convention: P on positions, M on
  the residual space) contributes P · X_s · Mᵀ to the logits, X_s the source's rows.
- The attention patterns A^{{l.h}} and the LayerNorm scales N^{{s}} = diag(1/σ_s) are frozen from
  a forward pass on the tokens; with them frozen the logits are linear in the sources, and the
  paths of every order sum exactly to the logits. A pattern is the softmax of q·kᵀ/scale over
  the keys a query may see: in a causal layer the keys up to the query, in a bidirectional one
  every key; with --attention-mask never a 0 key (queries and positions are unchanged). Rotary
  layers rotate q and k by position first; a shortformer's W_pos is added to every layer's query
  and key inputs (read through W_Q, W_K as stored, after the LayerNorm), never to the stream.
- Grouped-query attention: query head h reads the keys and values of its group, W_K, W_V, b_K,
  b_V stored once per key/value head (TransformerLens's `_W_K`, `_W_V`, `_b_K`, `_b_V`).
- Norms of every kind (layernorm, layernorm(pre), rmsnorm, rmsnorm(pre): TransformerLens's LN,
  LNPre, RMS, RMSPre, each with its eps) are folded as TransformerLens's fold_ln: in a path, W_Q,
  W_K, W_V, W_U and their biases are the folded ones (a LayerNorm keeps its centring and its scale
  N = diag(1/σ), an RMSNorm its scale diag(1/rms)). Gated MLPs (act(x·W_gate) ⊙ x·W_in + b_in,
  b_in after the product), solu_ln with its inner norm, and parallel layers (attention and MLP
  reading the same stream; GPT-J's one shared norm) change only the MLP outputs M^{{l}}, which are
  sources: the paths are the same products.
- --fold-ln, --center-writing-weights, --center-unembed, --fold-value-biases (--process-weights:
  all four, TransformerLens's from_pretrained) process the weights before the forward pass, as
  `pathc paths` does, refused where a step would compute another model.
- Sources: E = W_E[tokens], P = W_pos[:n] (standard positions only), M^{{l}} = MLP l's output
  (without b_out), biases b_O, b_out, b_U at every position, and b_V through its own head. Path
  names: the source, then the heads in order of application (`E`, `P/L0H3`, `bV/L0H1/L1H2`,
  `M0/L1H2`, `bO0`, `bU`).
- Sizes the model file leaves symbolic are read from the weights; declared ones are checked.
"""
"#,
        name = model.name,
        shape = crate::emit::shape_summary(expansion),
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// `paths_E_L0_L1`: the source, then the layers the family passes.
fn function_name(template: &Template) -> String {
    let mut name = String::from("paths_");
    match template.source() {
        Some(source) => source.write_name(&mut name),
        None => name.push_str("unknown"),
    }
    for layer in template.layers(Side::Head) {
        let _ = write!(name, "_L{layer}");
    }
    name
}

/// `E/L0H*/L1H*`, with pinned heads written out.
fn name_pattern(family: &Family<'_>) -> String {
    let mut out = family.template.source().map_or("?".to_string(), |s| s.name());
    for (b, pin) in family.template.binders.iter().zip(&family.pinned) {
        match pin {
            Some(h) => {
                let _ = write!(out, "/L{}H{h}", b.layer);
            }
            None => {
                let _ = write!(out, "/L{}H*", b.layer);
            }
        }
    }
    out
}

fn text(position: &[Factor], weights: &[Factor]) -> String {
    Notation::Text.term(&[position.to_vec()], weights, Heads::Symbolic)
}

fn chain(factors: &[Factor]) -> String {
    let mut out = String::new();
    Notation::Text.write_chain(&mut out, factors, Heads::Symbolic);
    out
}

/// How a family's paths start.
enum Start {
    /// Rows computed by a runtime call, e.g. `token_rows(w, f)`.
    Rows { call: String, factor: Factor },
    /// A head's value bias, entering through that head.
    ValueBias { var: IndexVar, o: Factor, bias: Factor },
    /// `b_U`: the constant term of the logits.
    Constant,
}

/// The generated function of one family: the template's factors read right to left (the source,
/// then each head from the earliest layer, then the unembedding), one loop per head index.
fn family_function(name: &str, family: &Family<'_>, model: &Model, heads: &[usize]) -> Result<String, CodegenError> {
    let template = family.template;
    let formula = format!(
        "{}{}",
        Notation::Text.sums(&template.binders, None),
        Notation::Text.term(&template.position, &template.weights, Heads::Symbolic)
    );
    let unsupported = || CodegenError::Unsupported(formula.clone());
    if template.position.len() > 1 || template.binders.iter().any(|b| b.side != Side::Head) {
        return Err(unsupported());
    }
    let position: &[Factor] = template.position.first().map_or(&[], Vec::as_slice);
    let weights = &template.weights;

    // The residual side: W_U, then W_OV of each head (latest first), then the source.
    let (start, ov): (Start, &[Factor]) = match weights.as_slice() {
        [only] if only.kind == FactorKind::BiasU => (Start::Constant, &[]),
        [unembed, rest @ ..] if unembed.kind == FactorKind::Unembed && !rest.is_empty() => {
            let (last, middle) = rest.split_last().expect("non-empty");
            let row = |call: String| Start::Rows { call, factor: *last };
            match last.kind {
                FactorKind::Embed => (row("token_rows(w, f)".into()), middle),
                FactorKind::PosEmbed => (row("position_rows(w, f)".into()), middle),
                FactorKind::Mlp(l) => (row(format!("mlp_output(f, {l})")), middle),
                FactorKind::BiasO(l) => (row(format!("constant_rows(f, w[\"blocks.{l}.attn.b_O\"])")), middle),
                FactorKind::BiasOut(l) => (row(format!("constant_rows(f, w[\"blocks.{l}.mlp.b_out\"])")), middle),
                FactorKind::BiasV => {
                    let (o, middle) = middle.split_last().ok_or_else(unsupported)?;
                    let var = last.index.ok_or_else(unsupported)?;
                    if o.kind != FactorKind::O || o.index != Some(var) {
                        return Err(unsupported());
                    }
                    (Start::ValueBias { var, o: *o, bias: *last }, middle)
                }
                _ => return Err(unsupported()),
            }
        }
        _ => return Err(unsupported()),
    };
    let mut through: Vec<(IndexVar, Factor)> = Vec::new();
    for f in ov.iter().rev() {
        match (f.kind, f.index) {
            (FactorKind::OV, Some(var)) if !f.transposed => through.push((var, *f)),
            _ => return Err(unsupported()),
        }
    }
    if through.windows(2).any(|w| w[0].0.layer >= w[1].0.layer) {
        return Err(unsupported());
    }

    // The position side, left to right: N^{final}, then per head (latest first) A and N^{ln1}.
    let mut at = 0;
    let final_scale: Vec<Factor> = match position.first() {
        Some(f) if f.kind == FactorKind::Scale(NormSite::Final) => {
            at = 1;
            vec![*f]
        }
        _ => Vec::new(),
    };
    let constant = matches!(start, Start::Constant);
    if !constant && final_scale.is_empty() == model.ln_final.is_some() {
        return Err(unsupported());
    }
    let mut head_position: Vec<Vec<Factor>> = Vec::new();
    let bias_var = match &start {
        Start::ValueBias { var, .. } => Some(*var),
        _ => None,
    };
    for (var, _) in through.iter().rev() {
        let mut group = Vec::new();
        match position.get(at) {
            Some(f) if f.kind == FactorKind::Pattern && f.index == Some(*var) => group.push(*f),
            _ => return Err(unsupported()),
        }
        at += 1;
        let declared = model.layers[var.layer].attn.ln.is_some();
        match position.get(at) {
            Some(f) if f.kind == FactorKind::Scale(NormSite::Attn(var.layer)) && declared => {
                group.push(*f);
                at += 1;
            }
            _ if declared => return Err(unsupported()),
            _ => {}
        }
        head_position.push(group);
    }
    head_position.reverse();
    let bias_pattern = match bias_var {
        Some(var) => match position.get(at) {
            Some(f) if f.kind == FactorKind::Pattern && f.index == Some(var) => {
                at += 1;
                Some(*f)
            }
            _ => return Err(unsupported()),
        },
        None => None,
    };
    if at != position.len() {
        return Err(unsupported());
    }

    // The function.
    let order = template.order();
    let count = family.count(heads);
    let mut out = String::new();
    let _ = writeln!(out, "def {name}(w, f):");
    let plural = if count == 1 { "path" } else { "paths" };
    let _ = writeln!(out, "    \"\"\"Paths {} (order {order}, {count} {plural}):\n", name_pattern(family));
    let _ = writeln!(out, "        {formula}\n");
    let pins: Vec<String> =
        template.binders.iter().zip(&family.pinned).filter_map(|(b, pin)| pin.map(|h| format!("{b} = {h}"))).collect();
    if !pins.is_empty() {
        let _ = writeln!(out, "    Only the selected heads: {}.", pins.join(", "));
    }
    out.push_str(if template.binders.is_empty() {
        "    Yields its one path as (name, order, logits [n, d_vocab_out]); `w` holds the folded weights,\n    \
         `f` the forward pass.\n    \"\"\"\n"
    } else {
        "    Yields (name, order, logits [n, d_vocab_out]) for each head assignment, the earliest layer\n    \
         slowest; `w` holds the folded weights, `f` the forward pass.\n    \"\"\"\n"
    });
    let source_name = template.source().map_or("?".to_string(), |s| s.name());
    let mut indent = String::from("    ");
    let loop_over = |out: &mut String, indent: &mut String, var: IndexVar| {
        let slot = template.binders.iter().position(|b| *b == var).expect("bound");
        let range = match family.pinned[slot] {
            Some(h) => format!("({h},)"),
            None => format!("range({})", heads[var.layer]),
        };
        let _ = writeln!(out, "{indent}for {var} in {range}:");
        indent.push_str("    ");
    };
    let mut current = "x".to_string();
    match &start {
        Start::Constant => {
            let term = Notation::Text.term(&template.position, weights, Heads::Symbolic);
            let _ = writeln!(out, "{indent}yield {}, {order}, unembed_bias(w, f)  # {term}", py_str(&source_name));
            return Ok(out);
        }
        Start::Rows { call, factor } => {
            let _ = writeln!(out, "{indent}x = {call}  # {}", chain(&[*factor]));
        }
        Start::ValueBias { var, o, bias } => {
            loop_over(&mut out, &mut indent, *var);
            let pattern = bias_pattern.expect("a value bias has its pattern");
            current = format!("x{}", var.layer);
            let _ = writeln!(
                out,
                "{indent}{current} = value_bias(w, f, {}, {var})  # {}",
                var.layer,
                text(&[pattern], &[*o, *bias])
            );
        }
    }
    for ((var, ov), group) in through.iter().zip(&head_position) {
        loop_over(&mut out, &mut indent, *var);
        let next = format!("x{}", var.layer);
        let _ = writeln!(
            out,
            "{indent}{next} = through_head(w, f, {current}, {}, {var})  # {}",
            var.layer,
            text(group, &[*ov])
        );
        current = next;
    }
    let mut path_name = source_name.clone();
    for b in &template.binders {
        let _ = write!(path_name, "/L{}H{{{b}}}", b.layer);
    }
    let literal = if template.binders.is_empty() { py_str(&path_name) } else { format!("f{}", py_str(&path_name)) };
    let unembed = Factor::plain(FactorKind::Unembed);
    let _ = writeln!(
        out,
        "{indent}yield {literal}, {order}, unembed(w, f, {current})  # {}",
        text(&final_scale, &[unembed])
    );
    Ok(out)
}
