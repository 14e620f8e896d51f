//! `pathc stats` on the other architectures (an output vocabulary of its own, rotary positions,
//! grouped-query attention, bidirectional attention, another attention scale, shortformer
//! positions) against the TransformerLens/numpy fixtures `tests/fixtures/{vocab_out,bidir_mask,
//! rotary_neox,rotary_gptj,rotary_gqa,hf_neox,scale,shortformer}` (`reference.safetensors`, see
//! each `meta.json`'s "arrays"), and against circuits multiplied out explicitly here:
//!
//! - `d_vocab_out ≠ d_vocab`: the OV copying score is refused (its circuit is not square); the
//!   OV Frobenius norm, for which TransformerLens gives no reference, is checked against
//!   `‖W_E W_V W_O W_U‖_F` multiplied out (33 × 2);
//! - rotary: `qk_*@D`, `comp_q@3`, `comp_k@3` (the QK circuit at offset `D`, `W_Q R(D) W_Kᵀ`),
//!   with `R(p)` itself checked against the fixtures' `rotation.{p}` and an independent port of
//!   the fixture script's `rot_matrix`;
//! - the chosen plan equals the naive plan (1e-9), streamed equals in memory (bit for bit), on
//!   the fixtures and on random shapes with another output vocabulary and rotary layers.

use std::process::{Command, Output};

use nalgebra::DMatrix;
use pathc::eval::{AttnWeights, LayerParams, NameMap, Params, Processing, Row, StatsParams};
use pathc::model::{Real, Rotary, RotaryStyle};
use pathc::progress::Silent;
use pathc::stats::{self, Stats, StatsError, StatsOptions};
use pathc::weights::Weights;

mod common;
use common::{compiled, dir, error, flat2, flat4, params, pathc, reference, stderr, stdout};

type Matrix = DMatrix<f64>;

const TOL: f64 = 1e-9;

const FIXTURES: [&str; 8] =
    ["vocab_out", "bidir_mask", "rotary_neox", "rotary_gptj", "rotary_gqa", "hf_neox", "scale", "shortformer"];
const ROTARY: [&str; 4] = ["rotary_neox", "rotary_gptj", "rotary_gqa", "hf_neox"];

fn with(offset: Option<i64>) -> StatsOptions {
    StatsOptions { processing: Processing::NONE, rotary_offset: offset, ..StatsOptions::default() }
}

/// Compares one statistic with its reference array, prints and returns the error.
fn compare(name: &str, stat: &str, ours: Vec<f64>, reference: &Weights, failures: &mut Vec<String>) -> f64 {
    let (n_layers, n_heads) = (2, 4);
    let shape = if ours.len() == n_layers * n_heads { vec![n_layers, n_heads] } else { vec![2, 4, 2, 4] };
    let expected = &reference.get(stat, &shape).unwrap_or_else(|e| panic!("{name} {stat}: {e}")).data;
    let err = error(&ours, expected);
    eprintln!("{name:<12} {stat:<15} largest error {err:.3e}");
    if err.is_nan() || err > TOL {
        failures.push(format!("{name} {stat}: {err:e}"));
    }
    err
}

// ---------------------------------------------------------------------------------------------
// Against the references.

/// Every statistic TransformerLens defines, at offset 0 (the default), against its reference:
/// `ov_*` where `d_vocab_out = d_vocab`, `qk_*` and `comp_*` everywhere.
#[test]
fn offset_free_statistics_match_transformer_lens_on_every_architecture() {
    let mut failures = Vec::new();
    for name in FIXTURES {
        let p = params(name);
        let r = reference(name);
        let s = stats::stats(&p).unwrap();
        let rotary = ROTARY.contains(&name);
        assert_eq!(s.rotary_offset, rotary.then_some(0), "{name}");
        let square = p.d_vocab() == p.d_vocab_out();
        assert_eq!(r.contains("ov_copying"), square, "{name}: the fixture's ov_copying");
        if square {
            compare(name, "ov_copying", flat2(&s.ov_copying), &r, &mut failures);
            compare(name, "ov_frobenius", flat2(&s.ov_frobenius), &r, &mut failures);
            assert!(s.not_defined.is_empty(), "{name}");
        }
        compare(name, "qk_copying", flat2(&s.qk_copying), &r, &mut failures);
        compare(name, "qk_frobenius", flat2(&s.qk_frobenius), &r, &mut failures);
        for mode in ["comp_q", "comp_k", "comp_v"] {
            let ours = match mode {
                "comp_q" => flat4(&s.comp_q),
                "comp_k" => flat4(&s.comp_k),
                _ => flat4(&s.comp_v),
            };
            compare(name, mode, ours, &r, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// The rotary fixtures' statistics at offsets 0 and 3: `qk_frobenius@D`, `qk_copying@D` (the
/// full QK circuit `W_E W_Q R(D) W_Kᵀ W_Eᵀ`), `comp_q@3`, `comp_k@3` (the right head's
/// `W_Q R(3) W_Kᵀ`, or its transpose); V-composition and OV do not change with the offset.
#[test]
fn rotary_statistics_at_an_offset_match_the_references() {
    let mut failures = Vec::new();
    for name in ROTARY {
        let p = params(name);
        let r = reference(name);
        let free = stats::stats(&p).unwrap();
        for offset in [0, 3] {
            let s = stats::stats_processed(&p, with(Some(offset))).unwrap();
            assert_eq!(s.rotary_offset, Some(offset));
            compare(name, &format!("qk_frobenius@{offset}"), flat2(&s.qk_frobenius), &r, &mut failures);
            compare(name, &format!("qk_copying@{offset}"), flat2(&s.qk_copying), &r, &mut failures);
            if offset == 3 {
                compare(name, "comp_q@3", flat4(&s.comp_q), &r, &mut failures);
                compare(name, "comp_k@3", flat4(&s.comp_k), &r, &mut failures);
                // What the offset does not touch is bit for bit the offset-free numbers.
                assert_eq!(
                    (&s.ov_copying, &s.ov_frobenius, &s.comp_v),
                    (&free.ov_copying, &free.ov_frobenius, &free.comp_v)
                );
                // ... and what it touches changes beyond the tolerance.
                assert!(error(&flat2(&s.qk_frobenius), &flat2(&free.qk_frobenius)) > 1e-6, "{name}");
                assert!(error(&flat4(&s.comp_q), &flat4(&free.comp_q)) > 1e-6, "{name}");
            } else {
                assert_eq!(s, free, "{name}: offset 0 is the default");
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// `R(p)` from the fixture script's `rot_matrix`, written out again: pair `k` rotated by
/// `θ_k = p · base^(−2k/D)`, `out[a] = x[a] cos − x[b] sin`, `out[b] = x[b] cos + x[a] sin`.
fn rot_matrix(p: i64, d_head: usize, rotary: &Rotary) -> Matrix {
    let mut r = Matrix::identity(d_head, d_head);
    let dim = rotary.dim as usize;
    let half = dim / 2;
    for k in 0..half {
        let theta = p as f64 * rotary.base.0.powf(-2.0 * k as f64 / dim as f64);
        let (c, s) = (theta.cos(), theta.sin());
        let (a, b) = match rotary.style {
            RotaryStyle::Neox => (k, k + half),
            RotaryStyle::Gptj => (2 * k, 2 * k + 1),
        };
        r[(a, a)] = c;
        r[(b, a)] = -s;
        r[(a, b)] = s;
        r[(b, b)] = c;
    }
    r
}

/// The rotation the statistics use is the fixtures' `rotation.{p}`, and the rotated `W_Q` is
/// `W_Q · R(Δ)`.
#[test]
fn the_rotation_is_the_fixtures_and_rotates_w_q_on_the_right() {
    for name in ROTARY {
        let p = params(name);
        let r = reference(name);
        let attn = &p.layers[0].attn;
        let rotary = attn.rotary.expect("a rotary fixture");
        let d_head = attn.w_q[0].ncols();
        for offset in [0, 1, 3] {
            let ours = pathc::eval::rotary::rotation(&rotary, d_head, offset);
            let expected = r.get(&format!("rotation.{offset}"), &[d_head, d_head]).unwrap();
            let expected = Matrix::from_row_slice(d_head, d_head, &expected.data);
            let err = (&ours - &expected).amax();
            eprintln!("{name:<12} rotation.{offset}      largest error {err:.3e}");
            assert!(err <= 1e-15, "{name} rotation.{offset}: {err:e}");
            assert!((&ours - rot_matrix(offset, d_head, &rotary)).amax() <= 1e-15);
        }
        let rotated = stats::rotated_queries(&p.layers, Some(3));
        for (l, layer) in p.layers.iter().enumerate() {
            let rotated = rotated[l].as_ref().expect("every layer is rotary");
            for (h, w_q) in layer.attn.w_q.iter().enumerate() {
                let want = w_q * rot_matrix(3, d_head, &rotary);
                assert!((&rotated[h] - want).amax() <= 1e-14, "{name} L{l}H{h}");
            }
        }
        // Offset 0 rotates nothing: the statistics are of W_Q itself.
        assert!(stats::rotated_queries(&p.layers, Some(0)).iter().all(Option::is_none));
    }
}

// ---------------------------------------------------------------------------------------------
// An output vocabulary of its own.

/// `‖W_E W_V W_O W_U‖_F` multiplied out head by head (d_vocab × d_vocab_out), the paper's
/// equation, against pathc's factored norm; the OV copying score is refused with the reason.
#[test]
fn the_ov_norm_of_a_non_square_circuit_is_the_explicit_products_and_its_copying_score_is_refused() {
    for (name, d_vocab_out) in [("vocab_out", 2), ("bidir_mask", 5)] {
        let p = params(name);
        assert_eq!((p.d_vocab(), p.d_vocab_out()), (33, d_vocab_out));
        let s = stats::stats(&p).unwrap();
        let mut worst: f64 = 0.0;
        for (l, layer) in p.layers.iter().enumerate() {
            for h in 0..4 {
                let attn = &layer.attn;
                let full_ov = &p.w_e * attn.w_v(h) * &attn.w_o[h] * &p.w_u;
                assert_eq!(full_ov.shape(), (33, d_vocab_out));
                let explicit = full_ov.norm();
                worst = worst.max((s.ov_frobenius[l][h] - explicit).abs() / explicit.max(1.0));
            }
        }
        eprintln!("{name:<12} ov_frobenius    largest error {worst:.3e} (explicit 33 × {d_vocab_out} products)");
        assert!(worst <= TOL, "{name}: {worst:e}");
        // Refused, with the reason, and nothing in its place.
        assert!(s.ov_copying.is_empty(), "{name}");
        let reason = &s.not_defined["ov_copying"];
        let want = format!(
            "the full OV circuit W_E·W_OV·W_U is d_vocab × d_vocab_out = 33 × {d_vocab_out}, not square, so it has no eigenvalues (set by unembed(d_vocab_out = {d_vocab_out}))"
        );
        assert_eq!(reason, &want);
        assert_eq!(s.not_defined.len(), 1);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("ov_copying").is_none(), "{name}: {json}");
        assert_eq!(json["not_defined"]["ov_copying"], want.as_str());
        for key in ["qk_copying", "ov_frobenius", "qk_frobenius", "comp_q", "comp_k", "comp_v"] {
            assert!(json[key].is_array(), "{name} {key}");
        }
        assert!(json.get("rotary_offset").is_none());
        match stats::ov_eigenvalues(&p, 0, 0) {
            Err(StatsError::NotDefined { reason, .. }) => assert!(reason.contains("not square"), "{reason}"),
            other => panic!("{name}: {other:?}"),
        }
        // The QK spectrum is still there.
        assert_eq!(stats::qk_eigenvalues(&p, 0, 0).unwrap().len(), 8);
    }
}

/// The plan's sizes: `W_U` is d_model × d_vocab_out, the OV circuit d_vocab × d_vocab_out, no
/// OV copying root and no `W_U · W_E` anywhere; the chosen plan equals the naive one.
#[test]
fn plans_of_a_non_square_ov_circuit_have_the_right_shapes_and_equal_the_naive_plan() {
    let compiled = compiled("vocab_out");
    let plans = pathc::plan_stats(&compiled.model).unwrap();
    for plan in [&plans.chosen, &plans.naive] {
        assert_eq!((plan.dims.d_vocab, plan.dims.d_vocab_out), (33, 2));
        assert!(plan.roots.iter().all(|&(stat, _)| stat != pathc::plan::Stat::OvCopying));
        assert_eq!(plan.roots.len(), pathc::plan::Stat::ALL.len() - 1);
        for step in plan.step_ids() {
            let shape = plan.shape(step);
            if let pathc::plan::Plan::Weight(w) = plan.node(step) {
                if w.as_str() == "W_U" {
                    assert_eq!((shape.rows, shape.cols), (32, 2));
                }
            }
            assert_ne!(plan.describe(step), "W_U · W_E");
        }
    }
    // The naive plan multiplies the 33 × 2 OV circuit and the 33 × 33 QK circuit out.
    let shapes: Vec<(usize, usize)> =
        plans.naive.step_ids().map(|s| (plans.naive.shape(s).rows, plans.naive.shape(s).cols)).collect();
    assert!(shapes.contains(&(33, 2)) && shapes.contains(&(33, 33)), "{shapes:?}");
    let text = plans.render("vocab_out", 2);
    assert!(
        text.starts_with(
            "plan for vocab_out: 8 heads, 16 composing pairs; d_vocab 33, d_vocab_out 2, d_model 32, d_head 8\n"
        ),
        "{text}"
    );
    assert!(text.contains("ov_copying[h]          : not defined: the full OV circuit W_E·W_OV·W_U is d_vocab × d_vocab_out = 33 × 2, not square"), "{text}");
    let json = plans.to_json("vocab_out", 2);
    assert_eq!((json["d_vocab"].as_u64(), json["d_vocab_out"].as_u64()), (Some(33), Some(2)));
    assert!(json["chosen"]["statistics"].get("ov_copying[h]").is_none());
    assert!(json["chosen"]["not_defined"]["ov_copying[h]"].as_str().unwrap().contains("33 × 2"));
    // From the weights file: the same dimensions.
    let weights = pathc::load_weights(format!("{}/model.safetensors", dir("vocab_out")).as_ref()).unwrap();
    let from_file = pathc::plan_stats_from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
    assert_eq!(from_file.chosen.dims, plans.chosen.dims);

    for name in ["vocab_out", "bidir_mask"] {
        let p = params(name);
        let plans = stats::plans_for_vocab(&p.layers, p.d_vocab(), p.d_vocab_out(), p.w_e.ncols());
        let heads = stats::head_weights(&p.layers);
        let naive = stats::stats_with_plan(&plans.naive, &heads, &p, &Silent, stats::Precision::F64).unwrap();
        let chosen = stats::stats_with_plan(&plans.chosen, &heads, &p, &Silent, stats::Precision::F64).unwrap();
        let (err, stat) = largest_difference(&naive, &chosen);
        eprintln!("{name:<12} chosen vs naive plan, largest difference {err:.1e} ({stat})");
        assert!(err < TOL, "{name}: {stat} {err:e}");
    }
}

/// Every number of two statistics side by side (relative to the value for the norms).
fn largest_difference(a: &Stats, b: &Stats) -> (f64, &'static str) {
    assert_eq!(a.not_defined, b.not_defined);
    let all = |s: &Stats| {
        vec![
            ("ov_copying", flat2(&s.ov_copying)),
            ("qk_copying", flat2(&s.qk_copying)),
            ("ov_frobenius", flat2(&s.ov_frobenius)),
            ("qk_frobenius", flat2(&s.qk_frobenius)),
            ("comp_q", flat4(&s.comp_q)),
            ("comp_k", flat4(&s.comp_k)),
            ("comp_v", flat4(&s.comp_v)),
        ]
    };
    let mut worst = (0.0, "");
    for ((name, x), (_, y)) in all(a).into_iter().zip(all(b)) {
        let e = error(&x, &y);
        if e > worst.0 {
            worst = (e, name);
        }
    }
    worst
}

/// Streamed from the file (each of `W_E`, `W_U` over its own length) equals in memory, bit for
/// bit, for every fixture, both weight processings and two offsets of the rotary ones.
#[test]
fn statistics_streamed_from_the_file_equal_those_in_memory() {
    for name in FIXTURES {
        let compiled = compiled(name);
        let weights = Weights::load(format!("{}/model.safetensors", dir(name)).as_ref()).unwrap();
        let p = params(name);
        let offsets: &[Option<i64>] = if ROTARY.contains(&name) { &[None, Some(3)] } else { &[None] };
        for processing in [Processing::NONE, Processing::FOLD_LN] {
            for &rotary_offset in offsets {
                let options = StatsOptions { processing, rotary_offset, ..StatsOptions::default() };
                let streamed = StatsParams::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
                let streamed = stats::stats_streamed(streamed, options, &Silent).unwrap();
                let in_memory = stats::stats_processed(&p, options).unwrap();
                assert_eq!(streamed, in_memory, "{name} {options:?}");
                assert_eq!(streamed.weight_processing, processing);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Grouped-query attention, folding.

/// A query head's `W_K`, `W_V` are its group's matrices, by reference (no per-head copies), and
/// the rotated `W_Q` is the query head's own.
#[test]
fn grouped_query_heads_read_their_groups_weights_by_reference() {
    let p = params("rotary_gqa");
    let rotated = stats::rotated_queries(&p.layers, Some(3));
    for heads in [stats::head_weights(&p.layers), stats::head_weights_at(&p.layers, &rotated)] {
        for (l, layer) in p.layers.iter().enumerate() {
            let attn = &layer.attn;
            assert_eq!((attn.w_q.len(), attn.w_k_kv.len(), attn.w_v_kv.len()), (4, 2, 2));
            for (h, w) in heads[l].iter().enumerate() {
                assert!(std::ptr::eq(w.w_k, &attn.w_k_kv[h / 2]), "L{l}H{h}: W_K");
                assert!(std::ptr::eq(w.w_v, &attn.w_v_kv[h / 2]), "L{l}H{h}: W_V");
                assert!(std::ptr::eq(w.w_o, &attn.w_o[h]));
            }
        }
    }
}

/// `--fold-ln` with an offset: the circuits multiplied out from weights folded by hand (each
/// reader row times the LayerNorm weight, then every column centred) and rotated by the
/// independent `R(Δ)`: folding acts on `W_Q`'s rows, the rotation on its columns.
#[test]
fn folded_rotary_statistics_equal_explicit_circuits_of_hand_folded_rotated_weights() {
    let p = params("rotary_gqa");
    let fold = |w: &Row, m: &Matrix| {
        let scaled = Matrix::from_fn(m.nrows(), m.ncols(), |i, j| w[i] * m[(i, j)]);
        let mean = scaled.row_mean();
        Matrix::from_fn(m.nrows(), m.ncols(), |i, j| scaled[(i, j)] - mean[j])
    };
    let options = StatsOptions { processing: Processing::FOLD_LN, rotary_offset: Some(3), ..StatsOptions::default() };
    let s = stats::stats_processed(&p, options).unwrap();
    assert_eq!((s.weight_processing, s.rotary_offset), (Processing::FOLD_LN, Some(3)));
    let mut worst: f64 = 0.0;
    let qk = |l: usize, h: usize| {
        let attn = &p.layers[l].attn;
        let ln1 = &p.layers[l].ln1.as_ref().unwrap().w;
        let rot = rot_matrix(3, 8, &attn.rotary.unwrap());
        fold(ln1, &attn.w_q[h]) * rot * fold(ln1, attn.w_k(h)).transpose()
    };
    let ov = |l: usize, h: usize| {
        let attn = &p.layers[l].attn;
        fold(&p.layers[l].ln1.as_ref().unwrap().w, attn.w_v(h)) * &attn.w_o[h]
    };
    for l in 0..2 {
        for h in 0..4 {
            let full_qk = &p.w_e * qk(l, h) * p.w_e.transpose();
            worst = worst.max((s.qk_frobenius[l][h] - full_qk.norm()).abs() / full_qk.norm());
            let eig = stats::eigenvalues(full_qk.clone()).unwrap();
            let copying = eig.iter().map(|z| z.re).sum::<f64>() / eig.iter().map(|z| z.norm()).sum::<f64>();
            worst = worst.max((s.qk_copying[l][h] - copying).abs());
        }
        for h in 0..4 {
            for g in 0..4 {
                if l == 0 {
                    let (left, right) = (ov(0, h), qk(1, g));
                    let comp_q = (&left * &right).norm() / (left.norm() * right.norm());
                    let comp_k = (&left * right.transpose()).norm() / (left.norm() * right.norm());
                    worst = worst.max((s.comp_q[0][h][1][g] - comp_q).abs());
                    worst = worst.max((s.comp_k[0][h][1][g] - comp_k).abs());
                }
            }
        }
    }
    eprintln!("rotary_gqa --fold-ln --rotary-offset 3: largest error against the explicit circuits {worst:.3e}");
    assert!(worst <= 1e-8, "{worst:e}");
}

#[test]
fn an_offset_on_a_model_without_rotary_layers_is_an_error() {
    let p = params("scale");
    match stats::stats_processed(&p, with(Some(0))) {
        Err(e @ StatsError::NotRotary { offset: 0 }) => assert!(e.to_string().contains("no"), "{e}"),
        other => panic!("{other:?}"),
    }
    let s = stats::stats_processed(&p, with(None)).unwrap();
    assert_eq!(s.rotary_offset, None);
    let json = serde_json::to_value(&s).unwrap();
    assert!(json.get("rotary_offset").is_none() && json.get("not_defined").is_none(), "{json}");
}

// ---------------------------------------------------------------------------------------------
// Random shapes: another output vocabulary and rotary layers, against explicit circuits, and
// chosen plan against naive plan.

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| self.unit())
    }
}

fn random_params(
    rng: &mut Rng,
    d_vocab: usize,
    d_vocab_out: usize,
    d_model: usize,
    layers: &[(usize, usize, usize, Option<Rotary>)],
) -> Params {
    let layers = layers
        .iter()
        .map(|&(n_heads, kv_heads, d_head, rotary)| LayerParams {
            ln1: None,
            attn: AttnWeights {
                w_q: (0..n_heads).map(|_| rng.matrix(d_model, d_head)).collect(),
                w_k_kv: (0..kv_heads).map(|_| rng.matrix(d_model, d_head)).collect(),
                w_v_kv: (0..kv_heads).map(|_| rng.matrix(d_model, d_head)).collect(),
                w_o: (0..n_heads).map(|_| rng.matrix(d_head, d_model)).collect(),
                b_q: vec![Row::zeros(d_head); n_heads],
                b_k_kv: vec![Row::zeros(d_head); kv_heads],
                b_v_kv: vec![Row::zeros(d_head); kv_heads],
                b_o: Row::zeros(d_model),
                attn_scale: (d_head as f64).sqrt(),
                causal: true,
                rotary,
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
        w_u: rng.matrix(d_model, d_vocab_out),
        b_u: Row::zeros(d_vocab_out),
        shortformer: false,
    }
}

#[test]
fn random_shapes_with_another_output_vocabulary_and_rotary_layers_equal_the_explicit_circuits() {
    let mut rng = Rng(20_211_222);
    for case in 0..48 {
        let (d_vocab, d_model) = (rng.range(1, 12), rng.range(1, 9));
        let d_vocab_out = if case % 3 == 0 { d_vocab } else { rng.range(1, 12) };
        let n_layers = rng.range(1, 3);
        let layers: Vec<(usize, usize, usize, Option<Rotary>)> = (0..n_layers)
            .map(|_| {
                let kv_heads = rng.range(1, 2);
                let n_heads = kv_heads * rng.range(1, 2);
                let d_head = 2 * rng.range(1, 3);
                let rotary = (rng.range(0, 2) > 0).then(|| Rotary {
                    dim: 2 * rng.range(1, d_head / 2) as u64,
                    base: Real([10.0, 100.0, 10000.0][rng.range(0, 2)]),
                    style: if rng.range(0, 1) == 0 { RotaryStyle::Neox } else { RotaryStyle::Gptj },
                });
                (n_heads, kv_heads, d_head, rotary)
            })
            .collect();
        let p = random_params(&mut rng, d_vocab, d_vocab_out, d_model, &layers);
        let any_rotary = layers.iter().any(|l| l.3.is_some());
        let offset = any_rotary.then(|| rng.range(0, 6) as i64 - 2);
        let at = format!(
            "case {case}: vocab {d_vocab} → {d_vocab_out}, d_model {d_model}, layers {layers:?}, offset {offset:?}"
        );
        let s = stats::stats_processed(&p, with(offset)).unwrap();
        assert_eq!(s.not_defined.contains_key("ov_copying"), d_vocab != d_vocab_out, "{at}");
        assert_eq!(s.ov_copying.is_empty(), d_vocab != d_vocab_out, "{at}");
        // The W_QK(Δ) of each head, explicitly.
        let qk = |l: usize, h: usize| {
            let attn = &p.layers[l].attn;
            let rot = match (&attn.rotary, offset) {
                (Some(r), Some(o)) => rot_matrix(o, attn.w_q[h].ncols(), r),
                _ => Matrix::identity(attn.w_q[h].ncols(), attn.w_q[h].ncols()),
            };
            &attn.w_q[h] * rot * attn.w_k(h).transpose()
        };
        let ov = |l: usize, h: usize| p.layers[l].attn.w_v(h) * &p.layers[l].attn.w_o[h];
        let close = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-10 * scale.max(1.0);
        for (l, (n_heads, ..)) in layers.iter().enumerate() {
            for h in 0..*n_heads {
                let full_ov = &p.w_e * ov(l, h) * &p.w_u;
                let full_qk = &p.w_e * qk(l, h) * p.w_e.transpose();
                assert!(close(s.ov_frobenius[l][h], full_ov.norm(), full_ov.norm()), "{at}: ov_frobenius L{l}H{h}");
                assert!(close(s.qk_frobenius[l][h], full_qk.norm(), full_qk.norm()), "{at}: qk_frobenius L{l}H{h}");
                for (circuit, copy) in [(&full_qk, s.qk_copying[l][h])]
                    .into_iter()
                    .chain((d_vocab == d_vocab_out).then(|| (&full_ov, s.ov_copying[l][h])))
                {
                    let eig = stats::eigenvalues(circuit.clone()).unwrap();
                    let abs: f64 = eig.iter().map(|z| z.norm()).sum();
                    // Eigenvalues that are zero in exact arithmetic come out at rounding size from
                    // the vocab × vocab matrix: compare only where the sum is well away from them.
                    if abs > 1e-6 {
                        let want = eig.iter().map(|z| z.re).sum::<f64>() / abs;
                        assert!((copy - want).abs() < 1e-7, "{at}: copying L{l}H{h} {copy} vs {want}");
                    }
                }
                for (r, (right_heads, ..)) in layers.iter().enumerate() {
                    for g in 0..*right_heads {
                        let (left, q) = (ov(l, h), qk(r, g));
                        let want = |m: &Matrix| if l < r { (&left * m).norm() / (left.norm() * m.norm()) } else { 0.0 };
                        assert!((s.comp_q[l][h][r][g] - want(&q)).abs() < 1e-12, "{at}: comp_q");
                        assert!((s.comp_k[l][h][r][g] - want(&q.transpose())).abs() < 1e-12, "{at}: comp_k");
                        assert!((s.comp_v[l][h][r][g] - want(&ov(r, g))).abs() < 1e-12, "{at}: comp_v");
                    }
                }
            }
        }
        // The chosen plan computes what the naive plan (every product multiplied out) computes.
        let plans = stats::plans_for_vocab(&p.layers, d_vocab, d_vocab_out, d_model);
        let rotated = stats::rotated_queries(&p.layers, offset);
        let heads = stats::head_weights_at(&p.layers, &rotated);
        let naive = stats::stats_with_plan(&plans.naive, &heads, &p, &Silent, stats::Precision::F64).unwrap();
        let chosen = stats::stats_with_plan(&plans.chosen, &heads, &p, &Silent, stats::Precision::F64).unwrap();
        let (err, stat) = largest_difference(&naive, &chosen);
        assert!(err < TOL, "{at}: {stat} differs by {err:e}");
        assert_eq!(chosen.qk_frobenius, s.qk_frobenius, "{at}");
    }
}

// ---------------------------------------------------------------------------------------------
// The command line.

fn fixture_args(name: &str) -> [String; 3] {
    [format!("{}/model.tf", dir(name)), "--weights".to_string(), format!("{}/model.safetensors", dir(name))]
}

fn run(command: &str, name: &str, extra: &[&str]) -> Output {
    let model = fixture_args(name);
    let args: Vec<&str> =
        [command].into_iter().chain(model.iter().map(String::as_str)).chain(extra.iter().copied()).collect();
    pathc(&args)
}

const REFUSAL: &str = "ov_copying: not defined: the full OV circuit W_E·W_OV·W_U is d_vocab × d_vocab_out = 33 × 2, not square, so it has no eigenvalues (set by unembed(d_vocab_out = 2))";

#[test]
fn stats_refuses_the_ov_copying_score_of_a_non_square_circuit_in_words() {
    let out = run("stats", "vocab_out", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], REFUSAL, "{text}");
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["head", "qk_copying", "ov_frobenius", "qk_frobenius"]);
    assert_eq!(lines[3].split_whitespace().count(), 4, "{text}");
    assert!(!text.contains("NaN") && !text.contains("rotary"), "{text}");

    let out = run("stats", "vocab_out", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("ov_copying").is_none(), "{json}");
    let reason = json["not_defined"]["ov_copying"].as_str().unwrap();
    assert_eq!(format!("ov_copying: not defined: {reason}"), REFUSAL);
    assert_eq!(
        json["ov_frobenius"][1][3].as_f64().unwrap(),
        stats::stats(&params("vocab_out")).unwrap().ov_frobenius[1][3]
    );

    // The plot: exit 2 with the reason; the output file left alone. Other plots are drawn.
    let dir = std::env::temp_dir().join(format!("pathc-arch-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ov.svg");
    std::fs::write(&file, "before").unwrap();
    let o = file.to_str().unwrap();
    let out = run("plot", "vocab_out", &["--what", "ov-copying", "-o", o]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim_end(), format!("error: {REFUSAL}"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "before");
    for (what, last) in [("qk-copying", "H3"), ("comp-q", "L1H3"), ("comp-v", "L1H3")] {
        let out = run("plot", "vocab_out", &["--what", what, "-o", o]);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
        let svg = std::fs::read_to_string(&file).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("the SVG parses");
        let labelled =
            doc.descendants().filter(|n| n.has_tag_name("text")).any(|n| n.text().unwrap_or("").trim() == last);
        assert!(labelled, "{what}: every head labelled");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // `pathc plan`'s sizes.
    let out = pathc(&["plan", &fixture_args("vocab_out")[0]]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("d_vocab 33, d_vocab_out 2, d_model 32"), "{text}");
    assert!(text.contains("8×2"), "W_U's 2 columns: {text}");
}

#[test]
fn stats_and_plots_say_which_rotary_offset_they_used() {
    // f64 products: compared with the reference at TOL.
    let out = run("stats", "rotary_neox", &["--rotary-offset", "3", "--format", "json", "--precision", "f64"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rotary_offset"], 3);
    let text = stdout(&out);
    let at = |key: &str| text.find(&format!("\"{key}\"")).unwrap_or_else(|| panic!("{key}: {text}"));
    assert!(at("weight_processing") < at("rotary_offset") && at("rotary_offset") < at("ov_copying"), "{text}");
    let reference = reference("rotary_neox");
    let expected = reference.get("qk_frobenius@3", &[2, 4]).unwrap();
    let ours: Vec<f64> = json["qk_frobenius"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    assert!(error(&ours, &expected.data) <= TOL);

    let out = run("stats", "rotary_neox", &["--rotary-offset", "3"]);
    let text = stdout(&out);
    assert_eq!(
        text.lines().nth(1),
        Some("rotary layers' QK circuits at offset Δ = 3 (query position − key position): W_QK(Δ) = W_Q·Rot(Δ)·W_Kᵀ in qk_copying, qk_frobenius, comp_q and comp_k"),
        "{text}"
    );
    // Without the flag: offset 0, said as well; a negative offset is a number too.
    let text = stdout(&run("stats", "rotary_gptj", &[]));
    assert!(text.lines().nth(1).unwrap().starts_with("rotary layers' QK circuits at offset Δ = 0 "), "{text}");
    assert!(text.contains("Rot(0) = Id"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&run("stats", "rotary_gptj", &["--format", "json"]).stdout).unwrap();
    assert_eq!(json["rotary_offset"], 0);
    let out = run("stats", "rotary_gptj", &["--rotary-offset", "-3", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["rotary_offset"], -3);

    // The plots whose numbers depend on the offset say it.
    let dir = std::env::temp_dir().join(format!("pathc-arch-stats-rotary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plot.svg");
    let o = file.to_str().unwrap();
    for (what, says) in [("qk-copying", true), ("comp-k", true), ("comp-v", false)] {
        let out = run("plot", "rotary_gqa", &["--what", what, "--rotary-offset", "3", "-o", o]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let svg = std::fs::read_to_string(&file).unwrap();
        assert_eq!(svg.contains("offset Δ = 3"), says, "{what}");
    }
    let out = run("plot", "rotary_gqa", &["--what", "paths", "--tokens", "1,2,3", "--rotary-offset", "3", "-o", o]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--rotary-offset applies to the statistics plots"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rotary_offset_on_a_model_without_rotary_layers_exits_2_saying_why() {
    for (command, extra) in
        [("stats", &[][..]), ("plot", &["--what", "qk-copying", "-o", "/nonexistent/never.svg"][..])]
    {
        for offset in ["0", "3"] {
            let mut args = vec!["--rotary-offset", offset];
            args.extend_from_slice(extra);
            let out = run(command, "scale", &args);
            assert_eq!(out.status.code(), Some(2), "{command}: {}", stderr(&out));
            assert_eq!(
                stderr(&out).trim_end(),
                format!("error: --rotary-offset {offset}: model `scale` has no rotary layer (attn(..., rotary = D)), so its QK circuits do not depend on positions and there is no offset to choose")
            );
            assert!(out.stdout.is_empty());
        }
    }
    // Without it, a non-rotary model's output says nothing of offsets.
    let out = run("stats", "scale", &["--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("rotary_offset").is_none() && json.get("not_defined").is_none(), "{json}");
    assert!(!stdout(&run("stats", "scale", &[])).contains("rotary"));
}

#[test]
fn statistics_of_the_new_architectures_are_the_same_bits_on_any_number_of_threads() {
    for (name, extra) in [("vocab_out", &[][..]), ("rotary_gqa", &["--fold-ln", "--rotary-offset", "3"][..])] {
        let once = |threads: &str| {
            let model = fixture_args(name);
            let out = Command::new(env!("CARGO_BIN_EXE_pathc"))
                .arg("stats")
                .args(&model)
                .args(extra)
                .args(["--format", "json"])
                .env("PATHC_THREADS", threads)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            stdout(&out)
        };
        let one = once("1");
        for threads in ["2", "3"] {
            assert_eq!(once(threads), one, "{name} on {threads} threads");
        }
    }
}
