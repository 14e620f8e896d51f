//! Property tests: for random small architectures (any mix of LayerNorms, MLPs of every activation
//! and biases, or none; grouped-query attention, bidirectional layers, other attention scales,
//! standard, shortformer or rotary positions of either style, an output vocabulary of its own,
//! and a key mask) and random weights, the sum of all paths is the forward pass, each head's
//! paths sum to that head's output, each MLP's input terms to its pre-activation, and each head's
//! score terms sum to its scores. Over a dataset of random prompts (`pathc::aggregate`): each
//! path's dataset mean is the mean of its contributions computed one prompt at a time, the paths
//! sum to the metric of every prompt, a head's score terms to its score difference, and each
//! term's first-order probability effect is the softmax's derivative (by finite differences).

use pathc::eval::{
    self, AttnWeights, Gate, LayerParams, Matrix, MlpWeights, NormWeights, Params, PathEvaluator, Row, ScoreEvaluator,
};
use pathc::model::{Activation, NormKind, Real, Rotary, RotaryStyle};
use pathc::paths::{self, IndexVar, Side};
use pathc::ExpandOptions;
use proptest::prelude::*;

/// One layer: its heads (`kv` key/value heads × `group` query heads each), a norm of any kind
/// before them, attention biases, causal or not, a scale other than √d_head (`Some(2.5)`) or
/// none, rotary positions `(dimension pairs, gptj style)` when the model's positions are rotary,
/// maybe an MLP, and parallel or in sequence.
#[derive(Debug, Clone)]
struct LayerArch {
    kv: usize,
    group: usize,
    ln: Option<NormKind>,
    bias: bool,
    causal: bool,
    scale: Option<f64>,
    rotary: (usize, bool),
    mlp: Option<MlpArch>,
    parallel: bool,
}

/// An MLP: width, activation (any, `solu_ln` with an inner norm with or without weights),
/// biases, a norm of any kind before it (none in a parallel layer: it shares the attention's),
/// gated or not (not with `solu_ln`).
#[derive(Debug, Clone)]
struct MlpArch {
    d_mlp: usize,
    act: Activation,
    bias: bool,
    ln: Option<NormKind>,
    gated: bool,
    inner_pre: bool,
}

const NORMS: [NormKind; 4] = [NormKind::LayerNorm, NormKind::LayerNormPre, NormKind::Rms, NormKind::RmsPre];

fn norm_kind() -> impl Strategy<Value = Option<NormKind>> {
    prop::option::of(prop::sample::select(NORMS.to_vec()))
}

fn mlp_arch() -> impl Strategy<Value = MlpArch> {
    (
        1usize..=5,
        prop::sample::select(Activation::ALL.to_vec()),
        any::<bool>(),
        norm_kind(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(d_mlp, act, bias, ln, gated, inner_pre)| MlpArch {
            d_mlp,
            act,
            bias,
            ln,
            gated: gated && act != Activation::SoluLn,
            inner_pre,
        })
}

impl LayerArch {
    fn heads(&self) -> usize {
        self.kv * self.group
    }
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Positions {
    None,
    /// Learned, added to the residual stream.
    Standard,
    /// Learned, added to every layer's query and key inputs.
    Shortformer,
    /// Rotary in every layer.
    Rotary,
}

#[derive(Debug, Clone)]
struct Arch {
    layers: Vec<LayerArch>,
    ln_final: Option<NormKind>,
    unembed_bias: bool,
    d_model: usize,
    d_head: usize,
    d_vocab: usize,
    /// `unembed(d_vocab_out = N)` when `Some`.
    d_vocab_out: Option<usize>,
    n_ctx: usize,
    positions: Positions,
    tokens: Vec<usize>,
    /// A key mask (only where every query keeps a key).
    mask: Option<Vec<bool>>,
    seed: u64,
}

impl Arch {
    fn outputs(&self) -> usize {
        self.d_vocab_out.unwrap_or(self.d_vocab)
    }
}

fn layer_arch() -> impl Strategy<Value = LayerArch> {
    (
        (1usize..=2, 1usize..=2),
        (norm_kind(), any::<bool>(), prop::bool::weighted(0.75)),
        prop::option::of(Just(2.5)),
        (1usize..=2, any::<bool>()),
        prop::option::of(mlp_arch()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|((kv, group), (ln, bias, causal), scale, rotary, mlp, (parallel, shared))| {
            // A parallel layer needs an MLP; with `shared`, the MLP has no norm of its own and
            // reads the attention's.
            let parallel = parallel && mlp.is_some();
            let mlp = mlp.map(|m| MlpArch { ln: if parallel && shared { None } else { m.ln }, ..m });
            LayerArch { kv, group, ln, bias, causal, scale, rotary, mlp, parallel }
        })
}

fn arch() -> impl Strategy<Value = Arch> {
    (
        prop::collection::vec(layer_arch(), 0..=3),
        (norm_kind(), any::<bool>()),
        2usize..=6,
        1usize..=4,
        (2usize..=7, prop::option::of(1usize..=4)),
        1usize..=6,
        prop::sample::select(vec![Positions::None, Positions::Standard, Positions::Shortformer, Positions::Rotary]),
        any::<u64>(),
    )
        .prop_flat_map(
            |(layers, (ln_final, unembed_bias), d_model, d_head, (d_vocab, d_vocab_out), n_ctx, positions, seed)| {
                let tokens = prop::collection::vec(0..d_vocab, 1..=n_ctx);
                (tokens, prop::option::of(prop::collection::vec(any::<bool>(), n_ctx))).prop_map(
                    move |(tokens, mask)| {
                        // A mask keeps key 0, which every query may attend to, causal or not.
                        let mask = mask.map(|m| {
                            let mut m = m[..tokens.len()].to_vec();
                            m[0] = true;
                            m
                        });
                        Arch {
                            layers: layers.clone(),
                            ln_final,
                            unembed_bias,
                            d_model,
                            d_head,
                            d_vocab,
                            d_vocab_out,
                            n_ctx,
                            positions,
                            tokens,
                            mask,
                            seed,
                        }
                    },
                )
            },
        )
}

/// SplitMix64 → uniform in [-1, 1): deterministic weights from the case's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| self.next())
    }

    /// A random row when `on`, else zeros (a bias the model does not declare).
    fn row(&mut self, len: usize, on: bool) -> Row {
        if on {
            Row::from_fn(len, |_, _| self.next())
        } else {
            Row::zeros(len)
        }
    }

    /// A norm of `kind` with weights around 1 and a bias where the kind has them.
    fn norm(&mut self, kind: Option<NormKind>, width: usize) -> Option<NormWeights> {
        kind.map(|kind| NormWeights {
            kind,
            w: Row::from_fn(width, |_, _| if kind.has_weight() { 1.0 + 0.5 * self.next() } else { 1.0 }),
            b: Row::from_fn(width, |_, _| if kind.has_bias() { self.next() } else { 0.0 }),
            eps: 1e-5,
        })
    }
}

/// The rotary settings of a layer: `pairs` pairs (at most what `d_head` holds), a base of 100.
fn rotary(a: &Arch, layer: &LayerArch) -> Option<Rotary> {
    let pairs = layer.rotary.0.min(a.d_head / 2);
    (a.positions == Positions::Rotary && pairs > 0).then(|| Rotary {
        dim: 2 * pairs as u64,
        base: Real(100.0),
        style: if layer.rotary.1 { RotaryStyle::Gptj } else { RotaryStyle::Neox },
    })
}

/// The model file of an architecture.
fn model_source(a: &Arch) -> String {
    let mut source = format!(
        "model random\ndim d_model = {}\ndim d_vocab = {}\ndim n_ctx = {}\ndim d_head = {}\nembed\n",
        a.d_model, a.d_vocab, a.n_ctx, a.d_head
    );
    match a.positions {
        Positions::Standard => source.push_str("pos_embed\n"),
        Positions::Shortformer => source.push_str("pos_embed(shortformer)\n"),
        Positions::None | Positions::Rotary => {}
    }
    let flag = |on: bool, text: &'static str| if on { text } else { "" };
    let norm = |kind: Option<NormKind>| kind.map(|k| format!("{}\n", k.syntax())).unwrap_or_default();
    for layer in &a.layers {
        source.push_str(if layer.parallel { "layer(parallel) {\n" } else { "layer {\n" });
        source.push_str(&norm(layer.ln));
        let mut args = format!("heads = {}, kv_heads = {}", layer.heads(), layer.kv);
        args.push_str(flag(layer.bias, ", bias"));
        args.push_str(flag(!layer.causal, ", causal = false"));
        if let Some(scale) = layer.scale {
            args.push_str(&format!(", scale = {scale:?}"));
        }
        if let Some(r) = rotary(a, layer) {
            args.push_str(&format!(", rotary = {}, rotary_base = 100, rotary_style = {}", r.dim, r.style.name()));
        }
        source.push_str(&format!("attn({args})\n"));
        if let Some(m) = &layer.mlp {
            source.push_str(&norm(m.ln));
            let mut args = format!("d_mlp = {}, act = {}", m.d_mlp, m.act.name());
            args.push_str(flag(m.bias, ", bias"));
            args.push_str(flag(m.gated, ", gated"));
            args.push_str(flag(m.act == Activation::SoluLn && m.inner_pre, ", ln = pre"));
            source.push_str(&format!("mlp({args})\n"));
        }
        source.push_str("}\n");
    }
    source.push_str(&norm(a.ln_final));
    let out = a.d_vocab_out.map(|n| format!(", d_vocab_out = {n}")).unwrap_or_default();
    source.push_str(&format!("unembed(bias = {}{out})\n", a.unembed_bias));
    source
}

fn build(a: &Arch) -> (pathc::Expansion, Params) {
    let expansion =
        pathc::expand(&model_source(a), &ExpandOptions { qk: true, ..ExpandOptions::default() }).expect("expands");
    let mut rng = Rng(a.seed);
    let d = a.d_model;
    let layers = a
        .layers
        .iter()
        .map(|layer| {
            let (h, kv) = (layer.heads(), layer.kv);
            let ln1 = rng.norm(layer.ln, d);
            let (ln2, mlp) = match &layer.mlp {
                Some(m) => (
                    rng.norm(m.ln, d),
                    Some(MlpWeights {
                        w_in: rng.matrix(d, m.d_mlp),
                        b_in: rng.row(m.d_mlp, m.bias),
                        gate: m.gated.then(|| Gate {
                            w_gate: rng.matrix(d, m.d_mlp),
                            b_gate: Row::zeros(m.d_mlp),
                            b_lin: Row::zeros(m.d_mlp),
                        }),
                        inner_norm: (m.act == Activation::SoluLn).then(|| {
                            let kind = if m.inner_pre { NormKind::LayerNormPre } else { NormKind::LayerNorm };
                            rng.norm(Some(kind), m.d_mlp).expect("a kind")
                        }),
                        w_out: rng.matrix(m.d_mlp, d),
                        b_out: rng.row(d, m.bias),
                        act: m.act,
                    }),
                ),
                None => (None, None),
            };
            let shared_norm =
                layer.parallel && layer.mlp.as_ref().is_some_and(|m| m.ln.is_none()) && layer.ln.is_some();
            let w_q: Vec<Matrix> = (0..h).map(|_| rng.matrix(d, a.d_head)).collect();
            let w_k_kv: Vec<Matrix> = (0..kv).map(|_| rng.matrix(d, a.d_head)).collect();
            let shortformer = a.positions == Positions::Shortformer;
            let attn = AttnWeights {
                pos_readers: shortformer.then(|| (w_q.clone(), w_k_kv.clone())),
                w_q,
                w_k_kv,
                w_v_kv: (0..kv).map(|_| rng.matrix(d, a.d_head)).collect(),
                w_o: (0..h).map(|_| rng.matrix(a.d_head, d)).collect(),
                b_q: (0..h).map(|_| rng.row(a.d_head, layer.bias)).collect(),
                b_k_kv: (0..kv).map(|_| rng.row(a.d_head, layer.bias)).collect(),
                b_v_kv: (0..kv).map(|_| rng.row(a.d_head, layer.bias)).collect(),
                b_o: rng.row(d, layer.bias),
                attn_scale: layer.scale.unwrap_or((a.d_head as f64).sqrt()),
                causal: layer.causal,
                rotary: rotary(a, layer),
            };
            LayerParams { ln1, attn, ln2, mlp, parallel: layer.parallel, shared_norm }
        })
        .collect();
    let params = Params {
        w_e: rng.matrix(a.d_vocab, d),
        w_pos: matches!(a.positions, Positions::Standard | Positions::Shortformer).then(|| rng.matrix(a.n_ctx, d)),
        layers,
        ln_final: rng.norm(a.ln_final, d),
        w_u: rng.matrix(d, a.outputs()),
        b_u: rng.row(a.outputs(), a.unembed_bias),
        shortformer: a.positions == Positions::Shortformer,
    };
    (expansion, params)
}

/// A residual-stream contribution `[n, d_model]` to the logits, through the final norm with its
/// scale frozen (centre if it is a LayerNorm, divide by the scale, times the weight) when there
/// is one.
fn to_logits(params: &Params, forward: &eval::Forward, resid: &Matrix) -> Matrix {
    match (&params.ln_final, &forward.scale_final) {
        (Some(ln), Some(sigma)) => {
            let normed = Matrix::from_fn(resid.nrows(), resid.ncols(), |i, j| {
                let mean = if ln.kind.centres() { resid.row(i).mean() } else { 0.0 };
                (resid[(i, j)] - mean) / sigma[i] * ln.w[j]
            });
            normed * &params.w_u
        }
        _ => resid * &params.w_u,
    }
}

fn max_diff(a: &Matrix, b: &Matrix) -> f64 {
    (a - b).iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn paths_sum_to_the_forward_pass_and_heads_to_their_outputs(a in arch()) {
        let (expansion, params) = build(&a);
        let forward = eval::forward_masked(&params, &a.tokens, a.mask.as_deref()).expect("valid tokens");
        let heads = expansion.heads_per_layer();
        let (n, d_vocab) = (a.tokens.len(), a.outputs());
        let mut total = Matrix::zeros(n, d_vocab);
        let mut by_head: Vec<Vec<Matrix>> = heads.iter().map(|&h| vec![Matrix::zeros(n, d_vocab); h]).collect();
        let mut evaluator = PathEvaluator::new(&params, &forward);
        let mut rows = Vec::new();
        paths::for_each_path(&expansion.logits, &heads, None, |p| {
            let logits = evaluator.logits(&p);
            if let Some(last) = p.heads(Side::Head).last() {
                by_head[last.layer][last.head] += &logits;
            }
            total += &logits;
            rows.push(logits);
        });
        let scale = 1.0 + forward.logits.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        prop_assert!(max_diff(&total, &forward.logits) <= 1e-9 * scale, "sum of paths vs forward");
        // Direct logit attribution (factored, target columns only) = the full rows' entries.
        for target in [eval::Target::Next, eval::Target::Token(a.outputs() - 1)] {
            let Ok(targets) = eval::Targets::for_params(target, &a.tokens, &params, None) else {
                let vocab_out = a.d_vocab_out.is_some_and(|o| o != a.d_vocab);
                prop_assert!(target == eval::Target::Next && (n == 1 || vocab_out), "only a single token or other outputs have no next-token targets");
                continue;
            };
            let dla = eval::target_logits(&expansion, &params, &forward, &targets).unwrap();
            prop_assert_eq!(dla.values.nrows(), rows.len());
            for (i, logits) in rows.iter().enumerate() {
                for (j, (&p, &t)) in targets.positions.iter().zip(&targets.tokens).enumerate() {
                    let (fast, slow) = (dla.values[(i, j)], logits[(p, t)]);
                    prop_assert!((fast - slow).abs() <= 1e-12 * scale, "{} {:?}: {} vs {}", dla.names[i], target, fast, slow);
                }
            }
        }
        for (l, layer_heads) in by_head.iter().enumerate() {
            for (h, paths_sum) in layer_heads.iter().enumerate() {
                // The head's result as the forward pass computes it, through the final LayerNorm
                // (scale frozen) and W_U.
                let output = to_logits(&params, &forward, &forward.head_results[l][h]);
                prop_assert!(max_diff(paths_sum, &output) <= 1e-9 * scale, "head L{}H{}", l, h);
            }
        }
        // An MLP's input terms sum to its pre-activation (a gated MLP's to its linear input),
        // a gated MLP's gate-input terms to its gate input.
        for (l, templates) in expansion.mlp_inputs.iter().enumerate() {
            let Some(templates) = templates else { continue };
            let gated = expansion.mlp_gates[l].is_some();
            let pre = if gated { &forward.mlp_linear[l] } else { &forward.mlp_pre[l] };
            let pre = pre.as_ref().expect("recorded");
            let mut total = Matrix::zeros(pre.nrows(), pre.ncols());
            paths::for_each_path(templates, &heads, None, |p| total += evaluator.mlp_input(&p, l));
            let scale = 1.0 + pre.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            prop_assert!(max_diff(&total, pre) <= 1e-9 * scale, "MLP {} input", l);
            if let Some(gates) = &expansion.mlp_gates[l] {
                let pre = forward.mlp_pre[l].as_ref().expect("recorded");
                let mut total = Matrix::zeros(pre.nrows(), pre.ncols());
                paths::for_each_path(gates, &heads, None, |p| total += evaluator.mlp_gate_input(&p, l));
                prop_assert!(max_diff(&total, pre) <= 1e-9 * scale.max(1.0 + pre.iter().fold(0.0f64, |m, x| m.max(x.abs()))), "MLP {} gate input", l);
            }
        }
        for max_order in [None, Some(0), Some(1)] {
            let options = ExpandOptions { max_order, ..ExpandOptions::default() };
            let truncated = pathc::expand_compiled(pathc::compile(&model_source(&a)).unwrap(), &options).unwrap();
            let report = eval::check(&truncated, &params, &forward, &pathc::progress::Silent).unwrap();
            prop_assert!(report.max_abs_error <= 1e-9 * scale, "check at order ≤ {:?}: {:?}", max_order, report);
        }
    }

    #[test]
    fn score_terms_sum_to_the_scores(a in arch()) {
        let (expansion, params) = build(&a);
        let forward = eval::forward_masked(&params, &a.tokens, a.mask.as_deref()).expect("valid tokens");
        let heads = expansion.heads_per_layer();
        let n = a.tokens.len();
        let mut evaluator = ScoreEvaluator::new(&params, &forward);
        for (layer, templates) in expansion.scores.as_ref().expect("qk").iter().enumerate() {
            for head in 0..heads[layer] {
                let mut total = Matrix::zeros(n, n);
                let fixed = (IndexVar { side: Side::Head, layer }, head);
                paths::for_each_path(templates, &heads, Some(fixed), |p| total += evaluator.scores(&p, layer, head));
                let expected = &forward.scores[layer][head];
                let scale = 1.0 + expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                prop_assert!(max_diff(&total, expected) <= 1e-9 * scale, "scores of L{}H{}", layer, head);
            }
        }
    }

    #[test]
    fn dataset_aggregates_are_the_per_prompt_numbers(a in arch()) {
        use pathc::aggregate::{self, Inputs, LogitQuestion, Position};
        use pathc::eval::{Target, Targets};
        let (expansion, params) = build(&a);
        let mut rng = Rng(a.seed ^ 0x5eed);
        let prompts: Vec<Vec<usize>> = (0..5)
            .map(|_| {
                let n = 1 + ((rng.next() + 1.0) / 2.0 * a.n_ctx as f64) as usize % a.n_ctx;
                (0..n).map(|_| ((rng.next() + 1.0) / 2.0 * a.d_vocab as f64) as usize % a.d_vocab).collect()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("pathc-prop-dataset-{}-{}", std::process::id(), a.seed));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prompts.jsonl");
        let lines: Vec<String> = prompts.iter().map(|t| format!("{{\"tokens\": {t:?}}}")).collect();
        std::fs::write(&file, lines.join("\n")).unwrap();
        // The logit of output 0 minus that of the last output, at every position (a mean).
        let outputs = a.outputs();
        let against = (outputs > 1).then_some(Target::Token(outputs - 1));
        let question = LogitQuestion { target: Some(Target::Token(0)), against, position: Some(Position::All) };
        let mut per_prompt: Vec<(f64, Vec<f64>)> = Vec::new();
        let result = aggregate::dataset_paths(&expansion, &params, &file, Inputs::default(), question, None, &pathc::progress::Silent, |p| {
            per_prompt.push((p.metric, p.values.to_vec()));
            Ok(())
        });
        std::fs::remove_dir_all(&dir).unwrap();
        let result = result.expect("a valid dataset");
        prop_assert_eq!(result.prompts, prompts.len());
        let rows = result.rows.len();
        let mut sums = vec![0.0; rows];
        for (tokens, (metric, values)) in prompts.iter().zip(&per_prompt) {
            // One prompt at a time, by direct logit attribution of each target and the metric's
            // weights applied here.
            let forward = eval::forward(&params, tokens).expect("valid tokens");
            let plus = Targets::resolve(Target::Token(0), tokens, outputs, None).unwrap();
            let dla = eval::target_logits(&expansion, &params, &forward, &plus).unwrap();
            let minus = against.map(|u| {
                let t = Targets::resolve(u, tokens, outputs, None).unwrap();
                eval::target_logits(&expansion, &params, &forward, &t).unwrap()
            });
            let n = tokens.len() as f64;
            let logits = &forward.logits;
            let expected_metric: f64 = (0..tokens.len())
                .map(|p| logits[(p, 0)] - if outputs > 1 { logits[(p, outputs - 1)] } else { 0.0 })
                .sum::<f64>() / n;
            let scale = 1.0 + logits.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            prop_assert!((metric - expected_metric).abs() <= 1e-12 * scale);
            prop_assert!((values.iter().sum::<f64>() - metric).abs() <= 1e-9 * scale, "paths sum to the metric");
            for (r, value) in values.iter().enumerate() {
                let mut expected = dla.values.row(r).sum() / n;
                if let Some(minus) = &minus {
                    expected -= minus.values.row(r).sum() / n;
                }
                prop_assert!((value - expected).abs() <= 1e-12 * scale, "path {} of a prompt", dla.names[r]);
                sums[r] += value;
            }
        }
        for (row, sum) in result.rows.iter().zip(&sums) {
            let mean = sum / prompts.len() as f64;
            prop_assert!((row.contribution.mean - mean).abs() <= 1e-12 * (1.0 + mean.abs()), "mean of {}", row.name);
        }
    }

    #[test]
    fn score_differences_over_a_dataset(a in arch()) {
        use pathc::eval::{score_attribution, score_params, ScoreDifference};
        let (expansion, params) = build(&a);
        prop_assume!(!a.layers.is_empty() && a.tokens.len() >= 2);
        let forward = eval::forward(&params, &a.tokens).expect("valid tokens");
        let folded = score_params(&params);
        let heads = expansion.heads_per_layer();
        let n = a.tokens.len();
        let mut evaluator = ScoreEvaluator::new(&params, &forward);
        for (layer, templates) in expansion.scores.as_ref().expect("qk").iter().enumerate() {
            let causal = params.layers[layer].attn.causal;
            let diff = ScoreDifference { layer, head: heads[layer] - 1, query: n - 1, key: 0, against_key: n - 1 };
            diff.check(n, causal).expect("valid positions");
            let got = score_attribution(&expansion, &folded, &forward, diff).expect("finite");
            let scores = &forward.scores[layer][diff.head];
            prop_assert!((got.difference - (scores[(n - 1, 0)] - scores[(n - 1, n - 1)])).abs() <= 1e-12 * (1.0 + got.difference.abs()));
            let total: f64 = got.terms.iter().map(|t| t.difference).sum();
            prop_assert!((total - got.difference).abs() <= 1e-9 * (1.0 + scores.iter().fold(0.0f64, |m, x| m.max(x.abs()))));
            // Each term's first-order effect on p[q, key] against a central finite difference of
            // the real softmax (every key attends: no mask here, all keys ≤ the last query).
            let fixed = (IndexVar { side: Side::Head, layer }, diff.head);
            let row: Vec<f64> = (0..n).map(|j| scores[(n - 1, j)]).collect();
            let softmax0 = |s: &[f64]| {
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = s.iter().map(|x| (x - max).exp()).sum();
                (s[0] - max).exp() / total
            };
            let mut i = 0;
            paths::for_each_path(templates, &heads, Some(fixed), |p| {
                let t = evaluator.scores(&p, layer, diff.head);
                let h = 1e-5;
                let plus: Vec<f64> = (0..n).map(|j| row[j] + h * t[(n - 1, j)]).collect();
                let minus: Vec<f64> = (0..n).map(|j| row[j] - h * t[(n - 1, j)]).collect();
                let numeric = (softmax0(&plus) - softmax0(&minus)) / (2.0 * h);
                let linear = got.terms[i].prob_linear;
                let size = 1.0 + t.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                assert!((linear - numeric).abs() <= 1e-6 * size * size, "{}: {linear} vs {numeric}", p.name());
                let removed: Vec<f64> = (0..n).map(|j| row[j] - t[(n - 1, j)]).collect();
                assert!((got.terms[i].prob_removed - (softmax0(&row) - softmax0(&removed))).abs() <= 1e-12);
                i += 1;
            });
            prop_assert_eq!(i, got.terms.len());
        }
    }
}
