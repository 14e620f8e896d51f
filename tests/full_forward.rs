//! Full transformers (LayerNorms, MLPs, biases) against the TransformerLens fixture
//! `tests/fixtures/full2` (`make_fixtures.py`: computed in f64 from the stored f32 weights): the
//! forward pass and its recordings, each head's and each residual component's share of the
//! logits through the final LayerNorm with its scale frozen, and `fold_layer_norm`. Tolerance
//! 1e-9 absolute; every comparison prints its largest error.

use pathc::eval::{self, Forward, LayerParams, Matrix, NormWeights, Params, Row};
use pathc::graph::Source;
use pathc::model::NormKind;
use pathc::weights::Weights;

const TOL: f64 = 1e-9;

struct Fixture {
    meta: serde_json::Value,
    reference: Weights,
    params: Params,
    forward: Forward,
}

fn load(name: &str) -> (Params, Vec<usize>, serde_json::Value) {
    let dir = format!("tests/fixtures/{name}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/meta.json")).unwrap()).unwrap();
    let tokens = meta["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
    let compiled = pathc::compile(&std::fs::read_to_string(format!("examples/{name}.tf")).unwrap()).unwrap();
    let weights = format!("{dir}/model.safetensors");
    let params = pathc::load_params(&compiled, weights.as_ref(), &eval::NameMap::default()).unwrap();
    (params, tokens, meta)
}

fn full2() -> Fixture {
    let (params, tokens, meta) = load("full2");
    let forward = eval::forward(&params, &tokens).unwrap();
    let reference = Weights::load("tests/fixtures/full2/reference.safetensors".as_ref()).unwrap();
    Fixture { meta, reference, params, forward }
}

impl Fixture {
    fn n(&self) -> usize {
        self.forward.tokens.len()
    }

    /// The reference array `name` of `shape`, cut along its leading axes into `[rows, cols]`
    /// matrices (one for a 2-d array; a 1-d array is one row).
    fn matrices(&self, name: &str, shape: &[usize]) -> Vec<Matrix> {
        let data = &self.reference.get(name, shape).unwrap_or_else(|e| panic!("{e}")).data;
        let (rows, cols) = match shape {
            [len] => (1, *len),
            [.., rows, cols] => (*rows, *cols),
            [] => panic!("{name}: a scalar"),
        };
        data.chunks_exact(rows * cols).map(|chunk| Matrix::from_row_slice(rows, cols, chunk)).collect()
    }

    /// `r` `[n, d_model]` through `ln_final` with the recorded scale frozen (centre, divide by the
    /// scale, times `ln_final.w`), then `W_U`: its exact share of the logits, without the
    /// constant `ln_final.b · W_U + b_U`.
    fn through_frozen_ln_final(&self, r: &Matrix) -> Matrix {
        let ln = self.params.ln_final.as_ref().expect("full2 has a final LayerNorm");
        let scale = self.forward.scale_final.as_ref().expect("recorded");
        let mut x = r.clone();
        for (mut row, &s) in x.row_iter_mut().zip(scale) {
            let mean = row.mean();
            row.add_scalar_mut(-mean);
            row /= s;
            row.component_mul_assign(&ln.w);
        }
        x * &self.params.w_u
    }
}

fn sum(matrices: &[Matrix]) -> Matrix {
    let first = matrices.first().expect("at least one");
    matrices[1..].iter().fold(first.clone(), |a, m| a + m)
}

fn max_diff(a: &Matrix, b: &Matrix) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a - b).iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Compares named lists of matrices, printing each one's largest error; fails on any above `TOL`
/// (or NaN).
fn assert_close(what: &str, comparisons: Vec<(String, Vec<Matrix>, Vec<Matrix>)>) {
    let mut failures = Vec::new();
    for (name, ours, reference) in comparisons {
        assert_eq!(ours.len(), reference.len(), "{what} {name}: count");
        let err = ours.iter().zip(&reference).map(|(a, b)| max_diff(a, b)).fold(0.0f64, f64::max);
        eprintln!("{what}: {name:<16} largest error {err:.3e}");
        if err.is_nan() || err > TOL {
            failures.push(format!("{name}: {err:e}"));
        }
    }
    assert!(failures.is_empty(), "{what}: {failures:?}");
}

#[test]
fn forward_pass_matches_transformer_lens() {
    let f = full2();
    let (n, d_vocab, d_model) = (f.n(), f.params.d_vocab(), f.params.w_e.ncols());
    let mut comparisons = vec![
        ("logits".to_string(), vec![f.forward.logits.clone()], f.matrices("logits", &[n, d_vocab])),
        ("resid_final".to_string(), vec![f.forward.resid_final.clone()], f.matrices("resid_final", &[n, d_model])),
        (
            "ln_final_scale".to_string(),
            vec![Matrix::from_row_slice(1, n, f.forward.scale_final.as_ref().expect("recorded"))],
            f.matrices("ln_final_scale", &[n]),
        ),
    ];
    for l in 0..f.params.layers.len() {
        let h = f.params.layers[l].attn.w_q.len();
        comparisons.extend([
            (format!("pattern.{l}"), f.forward.patterns[l].clone(), f.matrices(&format!("pattern.{l}"), &[h, n, n])),
            (format!("scores.{l}"), f.forward.scores[l].clone(), f.matrices(&format!("scores.{l}"), &[h, n, n])),
            (
                format!("resid_pre.{l}"),
                vec![f.forward.resid_pre[l].clone()],
                f.matrices(&format!("resid_pre.{l}"), &[n, d_model]),
            ),
        ]);
    }
    assert_close("full2 forward", comparisons);
    // What the fixture exercises: every LayerNorm, MLP and bias is there and nonzero.
    assert!(f.params.ln_final.is_some() && f.params.b_u.amax() > 0.0);
    for layer in &f.params.layers {
        assert!(layer.ln1.is_some() && layer.ln2.is_some() && layer.attn.b_o.amax() > 0.0);
        assert!(layer.mlp.as_ref().is_some_and(|mlp| mlp.b_in.amax() > 0.0 && mlp.b_out.amax() > 0.0));
    }
    assert!(f.forward.scale_attn.iter().chain(&f.forward.scale_mlp).all(Option::is_some));
}

/// The forward pass's recordings decompose the logits as TransformerLens's `stack_head_results`
/// and `decompose_resid` do: each head's result, and each residual component, through the final
/// LayerNorm with its scale frozen, plus a constant.
#[test]
fn heads_and_components_share_out_the_logits() {
    let f = full2();
    let (n, d_vocab) = (f.n(), f.params.d_vocab());
    let (n_layers, n_heads) = (f.params.layers.len(), f.params.layers[0].attn.w_q.len());
    let ours: Vec<Matrix> = f.forward.head_results.iter().flatten().map(|r| f.through_frozen_ln_final(r)).collect();
    let heads = f.matrices("head_logits", &[n_layers, n_heads, n, d_vocab]);

    let labels: Vec<&str> =
        f.meta["component_logits_labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let components: Vec<Matrix> = labels
        .iter()
        .map(|&label| {
            let residual = match label {
                "embed" => f.params.source_rows(Source::E, &f.forward.tokens),
                "pos_embed" => f.params.source_rows(Source::P, &f.forward.tokens),
                _ => {
                    let (layer, part) = label.split_once('_').unwrap_or_else(|| panic!("label {label}"));
                    let l: usize = layer.parse().unwrap_or_else(|_| panic!("label {label}"));
                    let (mut out, bias) = match part {
                        "attn_out" => (sum(&f.forward.head_results[l]), &f.params.layers[l].attn.b_o),
                        "mlp_out" => {
                            let mlp = f.params.layers[l].mlp.as_ref().expect("full2 layers have MLPs");
                            (f.forward.mlp_out[l].clone().expect("recorded"), &mlp.b_out)
                        }
                        _ => panic!("label {label}"),
                    };
                    for mut row in out.row_iter_mut() {
                        row += bias;
                    }
                    out
                }
            };
            f.through_frozen_ln_final(&residual)
        })
        .collect();
    let reference_components = f.matrices("component_logits", &[labels.len(), n, d_vocab]);

    let ln_final = f.params.ln_final.as_ref().unwrap();
    let constant = &ln_final.b * &f.params.w_u + &f.params.b_u;
    let reference_constant = f.matrices("constant_logits", &[d_vocab]);
    // Our own pieces add up to our logits: the recordings are the whole forward pass.
    let total = components.iter().fold(Matrix::zeros(n, d_vocab), |a, c| a + c)
        + Matrix::from_fn(n, d_vocab, |_, j| constant[j]);
    assert_close(
        "full2 shares",
        vec![
            ("head_logits".to_string(), ours, heads),
            ("component_logits".to_string(), components, reference_components),
            (
                "constant_logits".to_string(),
                vec![Matrix::from_row_slice(1, d_vocab, constant.as_slice())],
                reference_constant,
            ),
            ("Σ shares = logits".to_string(), vec![total], vec![f.forward.logits.clone()]),
        ],
    );
}

/// The recordings the fixture has no array for, tied to those it has: `resid_pre.{l}` + the
/// heads' results + `b_O` is `resid_mid[l]`; that + `mlp_out[l]` + `b_out` is `resid_pre.{l+1}`
/// (`resid_final` after the last layer); `act(mlp_pre) · W_out` is `mlp_out`; `scale_attn` and
/// `scale_mlp` are σ = sqrt(var + eps) of `resid_pre` and `resid_mid`.
#[test]
fn recordings_fit_together() {
    let f = full2();
    let (n, d_model) = (f.n(), f.params.w_e.ncols());
    let plus = |m: Matrix, bias: &Row| Matrix::from_fn(n, d_model, |i, j| m[(i, j)] + bias[j]);
    let sigma = |m: &Matrix| {
        let rows: Vec<f64> = m
            .row_iter()
            .map(|row| (row.map(|x| x - row.mean()).norm_squared() / d_model as f64 + eval::LN_EPS).sqrt())
            .collect();
        Matrix::from_row_slice(1, n, &rows)
    };
    let recorded = |scale: &Option<Vec<f64>>| Matrix::from_row_slice(1, n, scale.as_ref().expect("recorded"));
    let n_layers = f.params.layers.len();
    let mut comparisons = Vec::new();
    for (l, layer) in f.params.layers.iter().enumerate() {
        let mlp = layer.mlp.as_ref().expect("full2 layers have MLPs");
        let resid_pre = f.matrices(&format!("resid_pre.{l}"), &[n, d_model]).remove(0);
        let next = match l + 1 {
            last if last == n_layers => f.matrices("resid_final", &[n, d_model]),
            next => f.matrices(&format!("resid_pre.{next}"), &[n, d_model]),
        };
        let resid_mid = &f.forward.resid_mid[l];
        let mlp_out = f.forward.mlp_out[l].as_ref().expect("recorded");
        let mlp_pre = f.forward.mlp_pre[l].as_ref().expect("recorded");
        comparisons.extend([
            (
                format!("resid_mid.{l}"),
                vec![resid_mid.clone()],
                vec![plus(resid_pre.clone() + sum(&f.forward.head_results[l]), &layer.attn.b_o)],
            ),
            (format!("resid_mid+mlp.{l}"), vec![plus(resid_mid + mlp_out, &mlp.b_out)], next),
            (
                format!("mlp_pre.{l}"),
                vec![mlp_pre.map(|x| eval::activate(mlp.act, x)) * &mlp.w_out],
                vec![mlp_out.clone()],
            ),
            (format!("scale_attn.{l}"), vec![recorded(&f.forward.scale_attn[l])], vec![sigma(&resid_pre)]),
            (format!("scale_mlp.{l}"), vec![recorded(&f.forward.scale_mlp[l])], vec![sigma(resid_mid)]),
        ]);
    }
    assert_close("full2 recordings", comparisons);
}

/// The recordings of two forward passes side by side, for [`assert_close`].
fn forward_comparisons(a: &Forward, b: &Forward) -> Vec<(String, Vec<Matrix>, Vec<Matrix>)> {
    let scales = |f: &Forward| Matrix::from_column_slice(f.tokens.len(), 1, f.scale_final.as_ref().unwrap());
    let mut comparisons = vec![
        ("logits".to_string(), vec![a.logits.clone()], vec![b.logits.clone()]),
        ("resid_final".to_string(), vec![a.resid_final.clone()], vec![b.resid_final.clone()]),
        ("scale_final".to_string(), vec![scales(a)], vec![scales(b)]),
    ];
    for l in 0..a.patterns.len() {
        comparisons.push((format!("pattern.{l}"), a.patterns[l].clone(), b.patterns[l].clone()));
        comparisons.push((format!("scores.{l}"), a.scores[l].clone(), b.scores[l].clone()));
        comparisons.push((format!("head_results.{l}"), a.head_results[l].clone(), b.head_results[l].clone()));
        comparisons.push((
            format!("mlp_pre.{l}"),
            a.mlp_pre[l].iter().cloned().collect(),
            b.mlp_pre[l].iter().cloned().collect(),
        ));
    }
    comparisons
}

#[test]
fn folding_layer_norm_keeps_the_forward_pass() {
    let f = full2();
    let folded = f.params.fold_layer_norm();
    let forward = eval::forward(&folded, &f.forward.tokens).unwrap();
    assert_close("full2 folded vs raw", forward_comparisons(&forward, &f.forward));
    let (n, d_vocab) = (f.n(), f.params.d_vocab());
    assert_close(
        "full2 folded vs TransformerLens",
        vec![("logits".to_string(), vec![forward.logits.clone()], f.matrices("logits", &[n, d_vocab]))],
    );
    // The folding did fold: every LayerNorm is now w = 1, b = 0, and the readers changed.
    let d_model = f.params.w_e.ncols();
    let identity = NormWeights::layer_norm(Row::from_element(d_model, 1.0), Row::zeros(d_model)).folded();
    let is_identity = |ln: &Option<NormWeights>| {
        ln.as_ref().is_some_and(|ln| ln.w == identity.w && ln.b == identity.b && ln.kind == NormKind::LayerNormPre)
    };
    assert!(is_identity(&folded.ln_final));
    assert!(folded.layers.iter().all(|layer| is_identity(&layer.ln1) && is_identity(&layer.ln2)));
    assert!(max_diff(&folded.w_u, &f.params.w_u) > 1e-2);
    // Folding twice is folding once.
    let twice = folded.fold_layer_norm();
    assert_close(
        "full2 folded twice vs once",
        forward_comparisons(&eval::forward(&twice, &f.forward.tokens).unwrap(), &forward),
    );
    assert!(max_diff(&twice.w_u, &folded.w_u) < 1e-15);
}

#[test]
fn folding_an_attention_only_model_changes_nothing() {
    let (params, _, _) = load("attn2");
    assert!(params.layers.iter().all(|layer| layer.ln1.is_none() && layer.ln2.is_none() && layer.mlp.is_none()));
    // Debug prints every number in full (shortest round-trip form): equal text, equal weights.
    assert_eq!(format!("{:?}", params.fold_layer_norm()), format!("{params:?}"));
}

/// One head read through a LayerNorm, small enough to fold by hand: d_model 2, d_head 1.
#[test]
fn folded_readers_by_hand_and_centred() {
    let row = |v: &[f64]| Row::from_row_slice(v);
    let column = |v: &[f64]| Matrix::from_column_slice(v.len(), 1, v);
    let attn = eval::AttnWeights {
        w_q: vec![column(&[1.0, 0.0])],
        w_k_kv: vec![column(&[0.0, 1.0])],
        w_v_kv: vec![column(&[1.0, 2.0])],
        w_o: vec![Matrix::from_row_slice(1, 2, &[1.0, 1.0])],
        b_q: vec![row(&[0.0])],
        b_k_kv: vec![row(&[0.0])],
        b_v_kv: vec![row(&[0.5])],
        b_o: row(&[0.0, 0.0]),
        attn_scale: 1.0,
        causal: true,
        rotary: None,
        pos_readers: None,
    };
    let params = Params {
        w_e: Matrix::identity(2, 2),
        w_pos: None,
        layers: vec![LayerParams {
            ln1: Some(NormWeights::layer_norm(row(&[2.0, 3.0]), row(&[1.0, -1.0]))),
            attn,
            ln2: None,
            mlp: None,
            parallel: false,
            shared_norm: false,
        }],
        ln_final: None,
        w_u: Matrix::identity(2, 2),
        b_u: row(&[0.0, 0.0]),
        shortformer: false,
    };
    let folded = params.fold_layer_norm();
    let attn = &folded.layers[0].attn;
    // b_V + b · W_V = 0.5 + (1·1 − 1·2); diag(w) W_V = [2, 6], centred by its mean 4.
    assert_eq!(*attn.b_v(0), row(&[-0.5]));
    assert_eq!(*attn.w_v(0), column(&[-2.0, 2.0]));
    // b_Q + b · W_Q = 1; diag(w) W_Q = [2, 0] → [1, −1]. b_K = −1; [0, 3] → [−1.5, 1.5].
    assert_eq!((attn.b_q[0].clone(), attn.w_q[0].clone()), (row(&[1.0]), column(&[1.0, -1.0])));
    assert_eq!((attn.b_k(0).clone(), attn.w_k(0).clone()), (row(&[-1.0]), column(&[-1.5, 1.5])));
    // W_O reads no LayerNorm, nor does W_U here (no final LayerNorm): both untouched.
    assert_eq!(attn.w_o, params.layers[0].attn.w_o);
    assert_eq!(folded.w_u, params.w_u);

    // On full2, every folded reader's columns have zero mean over d_model.
    let f = full2().params.fold_layer_norm();
    let mut readers: Vec<&Matrix> = vec![&f.w_u];
    for layer in &f.layers {
        readers.extend(layer.attn.w_q.iter().chain(&layer.attn.w_k_kv).chain(&layer.attn.w_v_kv));
        readers.push(&layer.mlp.as_ref().unwrap().w_in);
    }
    let worst = readers.iter().map(|w| w.row_mean().amax()).fold(0.0f64, f64::max);
    eprintln!("full2 folded readers: largest column mean {worst:.3e}");
    assert!(worst < 1e-14, "{worst}");
}

/// TransformerLens's activations: `gelu` is PyTorch's exact `F.gelu` (Φ(1) = 0.841344746…),
/// distinct from `gelu_new`'s tanh approximation at every point but 0. Reference values from the
/// formulas in Python's `math` (erf, tanh, exp).
#[test]
fn activations_are_transformer_lens_s() {
    use pathc::model::Activation::{Gelu, GeluNew, Relu, Silu};
    let table: [(f64, [f64; 4]); 4] = [
        // x, [relu, gelu, gelu_new, silu]
        (1.0, [1.0, 0.8413447460685429, 0.8411919906082768, 0.7310585786300049]),
        (-1.0, [0.0, -0.15865525393145707, -0.15880800939172324, -0.2689414213699951]),
        (-3.0, [0.0, -0.00404969409489031, -0.0036373920817729943, -0.14227761953270035]),
        (2.5, [2.5, 2.4844758366855597, 2.484915733910001, 2.3103545499468914]),
    ];
    for (x, expected) in table {
        for (act, want) in [Relu, Gelu, GeluNew, Silu].into_iter().zip(expected) {
            let got = eval::activate(act, x);
            assert!((got - want).abs() < 1e-15, "{}({x}) = {got}, expected {want}", act.name());
        }
    }
}
