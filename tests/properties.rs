//! Property tests: for random small attention-only architectures and random weights, the sum of
//! all paths is the forward pass, each head's paths sum to that head's output, and each head's
//! score terms sum to its scores.

use pathc::eval::{self, AttnWeights, LayerParams, Matrix, Params, PathEvaluator, Row, ScoreEvaluator};
use pathc::paths::{self, IndexVar, Side};
use pathc::ExpandOptions;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Arch {
    heads: Vec<usize>,
    d_model: usize,
    d_head: usize,
    d_vocab: usize,
    n_ctx: usize,
    positional: bool,
    tokens: Vec<usize>,
    seed: u64,
}

fn arch() -> impl Strategy<Value = Arch> {
    (
        prop::collection::vec(1usize..=3, 0..=3),
        1usize..=6,
        1usize..=3,
        2usize..=7,
        1usize..=6,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(|(heads, d_model, d_head, d_vocab, n_ctx, positional, seed)| {
            prop::collection::vec(0..d_vocab, 1..=n_ctx).prop_map(move |tokens| Arch {
                heads: heads.clone(),
                d_model,
                d_head,
                d_vocab,
                n_ctx,
                positional,
                tokens,
                seed,
            })
        })
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
}

fn build(a: &Arch) -> (pathc::Expansion, Params) {
    let mut source = format!(
        "model random\ndim d_model = {}\ndim d_vocab = {}\ndim n_ctx = {}\ndim d_head = {}\nembed\n",
        a.d_model, a.d_vocab, a.n_ctx, a.d_head
    );
    if a.positional {
        source.push_str("pos_embed\n");
    }
    for h in &a.heads {
        source.push_str(&format!("layer {{ attn(heads = {h}) }}\n"));
    }
    source.push_str("unembed\n");
    let expansion = pathc::expand(&source, &ExpandOptions { qk: true, ..ExpandOptions::default() }).expect("expands");
    let mut rng = Rng(a.seed);
    let layers = a
        .heads
        .iter()
        .map(|&h| LayerParams {
            ln1: None,
            attn: AttnWeights {
                w_q: (0..h).map(|_| rng.matrix(a.d_model, a.d_head)).collect(),
                w_k: (0..h).map(|_| rng.matrix(a.d_model, a.d_head)).collect(),
                w_v: (0..h).map(|_| rng.matrix(a.d_model, a.d_head)).collect(),
                w_o: (0..h).map(|_| rng.matrix(a.d_head, a.d_model)).collect(),
                b_q: vec![Row::zeros(a.d_head); h],
                b_k: vec![Row::zeros(a.d_head); h],
                b_v: vec![Row::zeros(a.d_head); h],
                b_o: Row::zeros(a.d_model),
                attn_scale: (a.d_head as f64).sqrt(),
            },
            ln2: None,
            mlp: None,
        })
        .collect();
    let params = Params {
        w_e: rng.matrix(a.d_vocab, a.d_model),
        w_pos: a.positional.then(|| rng.matrix(a.n_ctx, a.d_model)),
        layers,
        ln_final: None,
        w_u: rng.matrix(a.d_model, a.d_vocab),
        b_u: Row::zeros(a.d_vocab),
    };
    (expansion, params)
}

fn max_diff(a: &Matrix, b: &Matrix) -> f64 {
    (a - b).iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn paths_sum_to_the_forward_pass_and_heads_to_their_outputs(a in arch()) {
        let (expansion, params) = build(&a);
        let forward = eval::forward(&params, &a.tokens).expect("valid tokens");
        let heads = expansion.heads_per_layer();
        let (n, d_vocab) = (a.tokens.len(), a.d_vocab);
        let mut total = Matrix::zeros(n, d_vocab);
        let mut by_head: Vec<Vec<Matrix>> = heads.iter().map(|&h| vec![Matrix::zeros(n, d_vocab); h]).collect();
        let mut evaluator = PathEvaluator::new(&params, &forward);
        paths::for_each_path(&expansion.logits, &heads, None, |p| {
            let logits = evaluator.logits(&p);
            if let Some(last) = p.heads(Side::Head).last() {
                by_head[last.layer][last.head] += &logits;
            }
            total += logits;
        });
        let scale = 1.0 + forward.logits.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        prop_assert!(max_diff(&total, &forward.logits) <= 1e-9 * scale, "sum of paths vs forward");
        for (l, layer) in params.layers.iter().map(|layer| &layer.attn).enumerate() {
            for (h, paths_sum) in by_head[l].iter().enumerate() {
                // The head's output as the forward pass computes it, through W_U.
                let output = &forward.patterns[l][h] * ((&forward.resid_pre[l] * &layer.w_v[h]) * &layer.w_o[h]) * &params.w_u;
                prop_assert!(max_diff(paths_sum, &output) <= 1e-9 * scale, "head L{}H{}", l, h);
            }
        }
        let report = eval::check(&expansion, &params, &forward);
        prop_assert!(report.max_abs_error <= 1e-9 * scale);
    }

    #[test]
    fn score_terms_sum_to_the_scores(a in arch()) {
        let (expansion, params) = build(&a);
        let forward = eval::forward(&params, &a.tokens).expect("valid tokens");
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
}
