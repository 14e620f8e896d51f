//! `pathc::stats` against the TransformerLens fixtures (`tests/fixtures/{attn1,attn2,full2}`,
//! `reference.safetensors`, computed in f64 from the stored f32 weights; full2's on the raw
//! weights, without `fold_ln`), and the factored
//! computations against explicitly multiplied circuits on small random models.

use nalgebra::DMatrix;
use pathc::eval::{AttnWeights, LayerParams, Params, Row};
use pathc::stats::{self, Stats};
use pathc::weights::Weights;

type Matrix = DMatrix<f64>;

const TOL: f64 = 1e-9;

fn fixture_params(name: &str) -> Params {
    let source = std::fs::read_to_string(format!("examples/{name}.tf")).unwrap();
    let compiled = pathc::compile(&source).unwrap();
    let names = pathc::eval::NameMap::default();
    pathc::load_params(&compiled, format!("tests/fixtures/{name}/model.safetensors").as_ref(), &names).unwrap()
}

fn flat2(x: &[Vec<f64>]) -> Vec<f64> {
    x.iter().flatten().copied().collect()
}

fn flat4(x: &[Vec<Vec<Vec<f64>>>]) -> Vec<f64> {
    x.iter().flatten().flatten().flatten().copied().collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn statistics_match_transformer_lens() {
    for name in ["attn1", "attn2", "full2"] {
        let params = fixture_params(name);
        let (n_layers, n_heads) = (params.layers.len(), params.layers[0].attn.w_q.len());
        let reference = Weights::load(format!("tests/fixtures/{name}/reference.safetensors").as_ref()).unwrap();
        let s = stats::stats(&params).unwrap();
        let per_head = [
            ("ov_copying", flat2(&s.ov_copying)),
            ("qk_copying", flat2(&s.qk_copying)),
            ("ov_frobenius", flat2(&s.ov_frobenius)),
            ("qk_frobenius", flat2(&s.qk_frobenius)),
        ];
        let per_pair = [("comp_q", flat4(&s.comp_q)), ("comp_k", flat4(&s.comp_k)), ("comp_v", flat4(&s.comp_v))];
        let mut failures = Vec::new();
        for (stat, ours, shape) in per_head
            .into_iter()
            .map(|(n, v)| (n, v, vec![n_layers, n_heads]))
            .chain(per_pair.into_iter().map(|(n, v)| (n, v, vec![n_layers, n_heads, n_layers, n_heads])))
        {
            let expected = &reference.get(stat, &shape).unwrap().data;
            let err = max_abs_diff(&ours, expected);
            let magnitude = expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            eprintln!("{name} {stat:<13} largest error {err:.3e} (largest |value| {magnitude:.3e})");
            if err.is_nan() || err > TOL {
                failures.push(format!("{name} {stat}: {err:e}"));
            }
        }
        assert!(failures.is_empty(), "{failures:?}");

        // The QK circuit is TransformerLens's `model.QK`, without 1/attn_scale: the scaled norm
        // would be off by the factor attn_scale (2 and 2.83 here).
        let expected = &reference.get("qk_frobenius", &[n_layers, n_heads]).unwrap().data;
        let scale = params.layers[0].attn.attn_scale;
        let scaled: Vec<f64> = flat2(&s.qk_frobenius).iter().map(|x| x / scale).collect();
        assert!(max_abs_diff(&scaled, expected) > 1e-3, "{name}: the reference QK includes 1/attn_scale?");

        // The baseline-subtracted arrays: score − baseline where layer_left < layer_right.
        let b = &s.comp_baseline;
        assert_eq!((b.q, b.k, b.samples), (b.v, b.v, stats::BASELINE_SAMPLES));
        for (scores, minus, baseline) in
            [(&s.comp_q, &s.comp_q_minus_baseline, b.q), (&s.comp_k, &s.comp_k_minus_baseline, b.k)]
                .into_iter()
                .chain([(&s.comp_v, &s.comp_v_minus_baseline, b.v)])
        {
            for l in 0..n_layers {
                for h in 0..n_heads {
                    for r in 0..n_layers {
                        for g in 0..n_heads {
                            let want = if l < r { scores[l][h][r][g] - baseline } else { 0.0 };
                            assert_eq!(minus[l][h][r][g], want);
                            if l >= r {
                                assert_eq!(scores[l][h][r][g], 0.0);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// full2's reference statistics are of the raw weights: folding the LayerNorms first (scaling
/// and centring `W_Q`, `W_K`, `W_V`, `W_U`) changes them well beyond the tolerance, so the
/// fixture tells the two apart.
#[test]
fn full2_statistics_are_of_the_raw_weights() {
    let folded = stats::stats(&fixture_params("full2").fold_layer_norm()).unwrap();
    let reference = Weights::load("tests/fixtures/full2/reference.safetensors".as_ref()).unwrap();
    for (stat, ours) in [("ov_frobenius", flat2(&folded.ov_frobenius)), ("qk_frobenius", flat2(&folded.qk_frobenius))] {
        let err = max_abs_diff(&ours, &reference.get(stat, &[2, 4]).unwrap().data);
        assert!(err > 1e-3, "{stat}: the folded weights' statistics match the raw reference ({err:e})");
    }
    let comp_v = max_abs_diff(&flat4(&folded.comp_v), &reference.get("comp_v", &[2, 4, 2, 4]).unwrap().data);
    assert!(comp_v > 1e-3, "comp_v: {comp_v:e}");
}

/// `pathc stats --fold-ln` on full2 against the circuits multiplied out explicitly from weights
/// folded by hand here (each reader row times the LayerNorm weight, then every column centred).
#[test]
fn folded_statistics_equal_explicit_circuits_of_hand_folded_weights() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pathc"))
        .args(["stats", "examples/full2.tf", "--weights", "tests/fixtures/full2/model.safetensors"])
        .args(["--fold-ln", "--format", "json", "--precision", "f64"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["weight_processing"], "fold_ln");
    let p = fixture_params("full2");
    let fold = |w: &Row, m: &Matrix| {
        let scaled = Matrix::from_fn(m.nrows(), m.ncols(), |i, j| w[i] * m[(i, j)]);
        let mean = scaled.row_mean();
        Matrix::from_fn(m.nrows(), m.ncols(), |i, j| scaled[(i, j)] - mean[j])
    };
    let w_u = fold(&p.ln_final.as_ref().unwrap().w, &p.w_u);
    let ov = |l: usize, h: usize| {
        let attn = &p.layers[l].attn;
        fold(&p.layers[l].ln1.as_ref().unwrap().w, attn.w_v(h)) * &attn.w_o[h]
    };
    let mut worst: f64 = 0.0;
    for l in 0..2 {
        let ln1 = &p.layers[l].ln1.as_ref().unwrap().w;
        for h in 0..4 {
            let attn = &p.layers[l].attn;
            let full_ov = &p.w_e * ov(l, h) * &w_u;
            let full_qk = &p.w_e * fold(ln1, &attn.w_q[h]) * fold(ln1, attn.w_k(h)).transpose() * p.w_e.transpose();
            worst = worst.max((json["ov_frobenius"][l][h].as_f64().unwrap() - full_ov.norm()).abs() / full_ov.norm());
            worst = worst.max((json["qk_frobenius"][l][h].as_f64().unwrap() - full_qk.norm()).abs() / full_qk.norm());
            for h2 in 0..4 {
                let (left, right) = (ov(0, h), ov(1, h2));
                let comp_v = (&left * &right).norm() / (left.norm() * right.norm());
                worst = worst.max((json["comp_v"][0][h][1][h2].as_f64().unwrap() - comp_v).abs());
            }
        }
    }
    eprintln!("full2 --fold-ln: largest relative error against the explicit circuits {worst:.3e}");
    assert!(worst <= TOL, "{worst}");
}

#[test]
fn baseline_is_deterministic_and_strictly_between_0_and_1() {
    let params = fixture_params("attn2");
    let (a, b) = (stats::stats(&params).unwrap(), stats::stats(&params).unwrap());
    assert_eq!(a, b);
    let baseline = &a.comp_baseline;
    eprintln!("attn2 baseline {baseline:?}");
    for x in [baseline.q, baseline.k, baseline.v] {
        assert!(x > 0.0 && x < 1.0, "{x}");
    }
    // A function of the shapes alone: the same number from the function itself.
    assert_eq!(baseline.q, stats::composition_baseline(32, 8, 8, stats::BASELINE_SAMPLES));
    // Different shapes, different numbers; one draw is still a score in (0, 1).
    let other = stats::composition_baseline(64, 4, 4, stats::BASELINE_SAMPLES);
    assert!(other > 0.0 && other < 1.0 && other != baseline.q, "{other}");
    let one = stats::composition_baseline(5, 2, 3, 1);
    assert!(one > 0.0 && one < 1.0, "{one}");
    // The scale: for Gaussian factors the score concentrates near 1/sqrt(d_model) whatever the
    // d_heads (E‖VOAB‖² = d³·d_l·d_r against E‖VO‖²·E‖AB‖² = d⁴·d_l·d_r).
    for (d_model, d_left, d_right) in [(32, 8, 8), (64, 4, 4), (100, 2, 10), (200, 16, 16)] {
        let b = stats::composition_baseline(d_model, d_left, d_right, stats::BASELINE_SAMPLES);
        let expected = 1.0 / (d_model as f64).sqrt();
        assert!((b / expected - 1.0).abs() < 0.15, "d_model {d_model}, d_head {d_left}/{d_right}: {b} vs {expected}");
    }
}

// ---------------------------------------------------------------------------------------------
// Small random models, with the circuits multiplied out explicitly.

/// SplitMix64, for the tests' own random shapes and weights.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| self.unit())
    }
}

fn random_params(rng: &mut Rng, d_vocab: usize, d_model: usize, d_heads: &[usize], n_heads: &[usize]) -> Params {
    let layers = d_heads
        .iter()
        .zip(n_heads)
        .map(|(&d_head, &h)| LayerParams {
            ln1: None,
            attn: AttnWeights {
                w_q: (0..h).map(|_| rng.matrix(d_model, d_head)).collect(),
                w_k_kv: (0..h).map(|_| rng.matrix(d_model, d_head)).collect(),
                w_v_kv: (0..h).map(|_| rng.matrix(d_model, d_head)).collect(),
                w_o: (0..h).map(|_| rng.matrix(d_head, d_model)).collect(),
                b_q: vec![Row::zeros(d_head); h],
                b_k_kv: vec![Row::zeros(d_head); h],
                b_v_kv: vec![Row::zeros(d_head); h],
                b_o: Row::zeros(d_model),
                attn_scale: (d_head as f64).sqrt(),
                causal: true,
                rotary: None,
                pos_readers: None,
            },
            ln2: None,
            mlp: None,
            parallel: false,
            shared_norm: false,
        })
        .collect();
    Params {
        w_e: rng.matrix(d_vocab, d_model),
        w_pos: None,
        layers,
        ln_final: None,
        w_u: rng.matrix(d_model, d_vocab),
        b_u: Row::zeros(d_vocab),
        shortformer: false,
    }
}

fn explicit_eigenvalues(m: &Matrix) -> Vec<nalgebra::Complex<f64>> {
    stats::eigenvalues(m.clone()).expect("the explicit eigenvalues converge")
}

fn copying(eig: &[nalgebra::Complex<f64>]) -> f64 {
    eig.iter().map(|z| z.re).sum::<f64>() / eig.iter().map(|z| z.norm()).sum::<f64>()
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-10 * scale.max(1.0)
}

#[test]
fn factored_statistics_equal_the_explicit_circuits() {
    let mut rng = Rng(20_211_222);
    for case in 0..40 {
        let n_layers = rng.range(1, 3);
        // d_head above d_model and d_vocab below d_head are included on purpose.
        let (d_vocab, d_model) = (rng.range(2, 12), rng.range(2, 9));
        let d_heads: Vec<usize> = if case % 4 == 0 {
            (0..n_layers).map(|_| rng.range(1, 6)).collect()
        } else {
            vec![rng.range(1, 6); n_layers]
        };
        let n_heads: Vec<usize> = (0..n_layers).map(|_| rng.range(1, 3)).collect();
        let p = random_params(&mut rng, d_vocab, d_model, &d_heads, &n_heads);
        let shape = format!("case {case}: vocab {d_vocab}, d_model {d_model}, d_head {d_heads:?}, heads {n_heads:?}");
        let s = stats::stats(&p).unwrap();
        for (l, layer) in p.layers.iter().map(|layer| &layer.attn).enumerate() {
            for h in 0..n_heads[l] {
                let ov = &p.w_e * layer.w_v(h) * &layer.w_o[h] * &p.w_u;
                let qk = &p.w_e * &layer.w_q[h] * layer.w_k(h).transpose() * p.w_e.transpose();
                assert_eq!(ov.shape(), (d_vocab, d_vocab));
                for (what, explicit, factored_eig, norm, copy) in [
                    ("OV", &ov, stats::ov_eigenvalues(&p, l, h).unwrap(), s.ov_frobenius[l][h], s.ov_copying[l][h]),
                    ("QK", &qk, stats::qk_eigenvalues(&p, l, h).unwrap(), s.qk_frobenius[l][h], s.qk_copying[l][h]),
                ] {
                    let at = format!("{shape}, {what} L{l}H{h}");
                    assert!(close(norm, explicit.norm(), explicit.norm()), "{at}: {norm} vs {}", explicit.norm());
                    let sum: f64 = factored_eig.iter().map(|z| z.re).sum();
                    let imag: f64 = factored_eig.iter().map(|z| z.im).sum();
                    assert!(close(sum, explicit.trace(), explicit.norm()), "{at}: {sum} vs {}", explicit.trace());
                    assert!(imag.abs() <= 1e-10 * explicit.norm().max(1.0), "{at}: imaginary part {imag}");
                    assert_eq!(factored_eig.len(), d_heads[l]);
                    let want = copying(&explicit_eigenvalues(explicit));
                    assert!((copy - want).abs() < 1e-8, "{at}: copying {copy} vs {want}");
                    assert!((copy - copying(&factored_eig)).abs() < 1e-12, "{at}");
                }
            }
        }
        // Composition scores from the explicit d_model × d_model matrices.
        for (l, left) in p.layers.iter().map(|layer| &layer.attn).enumerate() {
            for h in 0..n_heads[l] {
                let ov_left = left.w_v(h) * &left.w_o[h];
                for (r, right) in p.layers.iter().map(|layer| &layer.attn).enumerate() {
                    for g in 0..n_heads[r] {
                        let rights = [
                            (&s.comp_q, &right.w_q[g] * right.w_k(g).transpose()),
                            (&s.comp_k, right.w_k(g) * right.w_q[g].transpose()),
                            (&s.comp_v, right.w_v(g) * &right.w_o[g]),
                        ];
                        for (mode, (scores, m)) in ["Q", "K", "V"].into_iter().zip(rights) {
                            let want = if l < r { (&ov_left * &m).norm() / (ov_left.norm() * m.norm()) } else { 0.0 };
                            let got = scores[l][h][r][g];
                            assert!(
                                (got - want).abs() < 1e-12,
                                "{shape}: comp_{mode} L{l}H{h}→L{r}H{g} {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        // Mixed d_head: each pair's baseline is that of its own shapes.
        for (l, r) in (0..n_layers).flat_map(|l| (l + 1..n_layers).map(move |r| (l, r))) {
            let b = stats::composition_baseline(d_model, d_heads[l], d_heads[r], stats::BASELINE_SAMPLES);
            assert_eq!(s.comp_v_minus_baseline[l][0][r][0], s.comp_v[l][0][r][0] - b, "{shape}");
        }
    }
}

/// One small hand-built model: 2 layers × 2 heads, d_model 6, d_head 3, d_vocab 7.
fn small_model(seed: u64) -> Params {
    random_params(&mut Rng(seed), 7, 6, &[3, 3], &[2, 2])
}

fn all_finite(s: &Stats) -> bool {
    let per_head = [&s.ov_copying, &s.qk_copying, &s.ov_frobenius, &s.qk_frobenius].into_iter().flat_map(|x| flat2(x));
    let per_pair = [&s.comp_q, &s.comp_k, &s.comp_v, &s.comp_q_minus_baseline, &s.comp_k_minus_baseline]
        .into_iter()
        .chain([&s.comp_v_minus_baseline])
        .flat_map(|x| flat4(x));
    per_head.chain(per_pair).all(f64::is_finite)
}

#[test]
fn a_head_with_a_zero_ov_circuit_copies_nothing() {
    let mut p = small_model(7);
    p.layers[0].attn.w_o[1] = Matrix::zeros(3, 6);
    p.layers[1].attn.w_o[0] = Matrix::zeros(3, 6);
    let s = stats::stats(&p).unwrap();
    assert!(all_finite(&s), "{s:?}");
    for (l, h) in [(0, 1), (1, 0)] {
        assert_eq!(s.ov_copying[l][h], 0.0);
        assert_eq!(s.ov_frobenius[l][h], 0.0);
        assert!(stats::ov_eigenvalues(&p, l, h).unwrap().iter().all(|z| z.norm() == 0.0));
        // Its QK circuit is untouched.
        assert!(s.qk_frobenius[l][h] > 0.0);
    }
    // As a left head it composes with nothing; as a V-right head neither (its W_V W_O is zero).
    for (r, g) in [(1, 0), (1, 1)] {
        assert_eq!(s.comp_q[0][1][r][g], 0.0);
        assert_eq!(s.comp_k[0][1][r][g], 0.0);
        assert_eq!(s.comp_v[0][1][r][g], 0.0);
        assert_eq!(s.comp_v[0][0][1][0], 0.0);
    }
    assert!(s.comp_q[0][0][1][0] > 0.0);
    // Everything zero: every score 0, nothing NaN.
    let mut zero = small_model(8);
    for layer in &mut zero.layers {
        layer.attn.w_o.iter_mut().for_each(|w| w.fill(0.0));
        layer.attn.w_q.iter_mut().for_each(|w| w.fill(0.0));
    }
    let s = stats::stats(&zero).unwrap();
    assert!(all_finite(&s));
    assert!(flat2(&s.ov_copying).iter().chain(&flat2(&s.qk_copying)).all(|&x| x == 0.0));
}

#[test]
fn the_copying_score_of_a_pure_copier_is_one_and_of_an_anticopier_minus_one() {
    // W_E W_V W_O W_U = W_E W_Eᵀ-like positive semidefinite: all eigenvalues ≥ 0, score 1.
    let mut p = small_model(9);
    let w_e = p.w_e.clone();
    p.w_u = w_e.transpose();
    let layer = &mut p.layers[0].attn;
    layer.w_o[0] = layer.w_v(0).transpose();
    layer.w_o[1] = -layer.w_v(1).transpose();
    layer.w_k_kv[0] = layer.w_q[0].clone();
    let s = stats::stats(&p).unwrap();
    assert!((s.ov_copying[0][0] - 1.0).abs() < 1e-12, "{}", s.ov_copying[0][0]);
    assert!((s.ov_copying[0][1] + 1.0).abs() < 1e-12, "{}", s.ov_copying[0][1]);
    assert!((s.qk_copying[0][0] - 1.0).abs() < 1e-12, "{}", s.qk_copying[0][0]);
}

#[test]
fn eigenvalues_of_identity_plus_low_rank_converge() {
    // The case seen to hang nalgebra's unbounded Schur: 64 × 64, identity plus low rank.
    let mut rng = Rng(64);
    for rank in [1, 2, 5] {
        let u = rng.matrix(64, rank);
        let v = rng.matrix(rank, 64);
        let m = Matrix::identity(64, 64) + &u * &v;
        let eig = stats::eigenvalues(m.clone()).expect("converges within the iteration limit");
        let sum: f64 = eig.iter().map(|z| z.re).sum();
        assert!((sum - m.trace()).abs() < 1e-9, "{sum} vs {}", m.trace());
        let ones = eig.iter().filter(|z| (z.re - 1.0).abs() < 1e-9 && z.im.abs() < 1e-9).count();
        assert!(ones >= 64 - rank, "rank {rank}: {ones} eigenvalues 1");
    }
    assert!(stats::eigenvalues(Matrix::identity(64, 64)).unwrap().iter().all(|z| z.re == 1.0));
    assert!(stats::eigenvalues(Matrix::zeros(64, 64)).unwrap().iter().all(|z| z.norm() == 0.0));
}

#[test]
fn the_statistics_serialize_to_json() {
    let s = stats::stats(&small_model(10)).unwrap();
    let json = serde_json::to_value(&s).unwrap();
    for key in ["ov_copying", "qk_copying", "ov_frobenius", "qk_frobenius", "comp_q", "comp_k", "comp_v"] {
        assert!(json[key].is_array(), "{key}");
    }
    assert_eq!(json["comp_baseline"]["samples"], stats::BASELINE_SAMPLES);
    assert_eq!(json["comp_q"][0][0][1][1], s.comp_q[0][0][1][1]);
    assert!(json["comp_baseline"]["q"].is_f64());
}
