//! `pathc stats` of processed weights (TransformerLens's `fold_ln`, `center_writing_weights`,
//! `center_unembed`, `fold_value_biases`; `--process-weights` for all four, as `from_pretrained`),
//! and of the models with norms of every kind, against:
//!
//! - TransformerLens: the fixture `processed` is TransformerLens's processing of `unprocessed`
//!   (`processed_fold_ln_only` its `fold_ln` alone), saved, with TransformerLens's statistics of
//!   the processed model as its reference. Its weights were rounded to float32 after the float64
//!   processing and its references recomputed from the rounded weights (its `meta.json`), and no
//!   reference of the float64 processing exists; so pathc's processing of `unprocessed` is
//!   compared with pathc's statistics of `processed` within the rounding (1e-6), and those with
//!   TransformerLens's reference within 1e-9. The hand processing below is checked against
//!   TransformerLens's saved weights within the float32 rounding.
//! - circuits multiplied out here, from weights processed by hand here (never by pathc's
//!   processing or statistics code), for every combination of the four steps on every fixture:
//!   `W_E W_V W_O W_U` and `W_E W_Q W_Kᵀ W_Eᵀ` (vocab × vocab) and `‖L R‖ / (‖L‖ ‖R‖)` with the
//!   d_model × d_model `W_V W_O`, `W_Q W_Kᵀ` (within 1e-9);
//! - the norm-kind fixtures' TransformerLens references (`lnpre`, `rms`, `rmspre_attn`,
//!   `gated_ln`, `solu`, `solu_pre`, `parallel`, `hf_llama`, `hf_gptj`, `hf_gptj_shared`,
//!   `hf_neox_parallel`: the statistics of the weights as given; none has a folded reference);
//! - itself: streamed from the file = in memory, bit for bit, for every combination; the same
//!   bits on 1–3 threads; refusals exactly where `Params::process` refuses, with its messages, on
//!   the command line too (exit 2); the processing recorded in the JSON, the text and the plots.

use std::process::{Command, Output};

use nalgebra::DMatrix;
use pathc::eval::{NameMap, Params, Processing, StatsParams};
use pathc::model::NormKind;
use pathc::progress::Silent;
use pathc::stats::{self, Stats, StatsError, StatsOptions};
use pathc::weights::Weights;

mod common;
use common::{compiled, dir, error, flat2, flat4, params, pathc, reference, stderr, stdout};

type Matrix = DMatrix<f64>;

const TOL: f64 = 1e-9;

/// The fixtures whose reference holds TransformerLens's statistics of the weights as given.
const NORM_KINDS: [&str; 14] = [
    "unprocessed",
    "processed",
    "processed_fold_ln_only",
    "lnpre",
    "rms",
    "rmspre_attn",
    "gated_ln",
    "solu",
    "solu_pre",
    "parallel",
    "hf_llama",
    "hf_gptj",
    "hf_gptj_shared",
    "hf_neox_parallel",
];

/// Those with a norm that does not centre (RMSNorm), where `center_writing_weights` is refused.
const NOT_CENTRING: [&str; 3] = ["rms", "rmspre_attn", "hf_llama"];

/// The other architectures' fixtures with a square vocabulary (rotary, grouped-query, other
/// scales, shortformer, with or without LayerNorms): `center_writing_weights` is refused on those
/// without a LayerNorm before every reader, and on shortformer.
const OTHERS: [&str; 8] =
    ["rotary_neox", "rotary_gptj", "rotary_gqa", "hf_neox", "scale", "shortformer", "causal_mask", "act_gelu_fast"];

/// Every combination of the four steps, the empty one first.
fn every_processing() -> Vec<Processing> {
    (0..16u8)
        .map(|bits| Processing {
            fold_ln: bits & 1 != 0,
            center_writing_weights: bits & 2 != 0,
            center_unembed: bits & 4 != 0,
            fold_value_biases: bits & 8 != 0,
        })
        .collect()
}

/// Every statistic TransformerLens's references hold, by name, flattened.
fn statistics(s: &Stats) -> Vec<(&'static str, Vec<f64>)> {
    vec![
        ("ov_copying", flat2(&s.ov_copying)),
        ("qk_copying", flat2(&s.qk_copying)),
        ("ov_frobenius", flat2(&s.ov_frobenius)),
        ("qk_frobenius", flat2(&s.qk_frobenius)),
        ("comp_q", flat4(&s.comp_q)),
        ("comp_k", flat4(&s.comp_k)),
        ("comp_v", flat4(&s.comp_v)),
    ]
}

/// The largest [`error`] over every statistic, and which.
fn largest_error(ours: &Stats, expected: &Stats) -> (f64, &'static str) {
    let mut worst = (0.0, "");
    for ((name, x), (_, y)) in statistics(ours).into_iter().zip(statistics(expected)) {
        let e = error(&x, &y);
        if e.is_nan() || e > worst.0 {
            worst = (e, name);
        }
    }
    worst
}

/// The largest error of `s` against a fixture's reference arrays.
fn against_reference(s: &Stats, r: &Weights) -> (f64, &'static str) {
    let (n_layers, n_heads) = (s.qk_frobenius.len(), s.qk_frobenius[0].len());
    let mut worst = (0.0, "");
    for (name, ours) in statistics(s) {
        let shape =
            if name.starts_with("comp") { vec![n_layers, n_heads, n_layers, n_heads] } else { vec![n_layers, n_heads] };
        let expected = &r.get(name, &shape).unwrap_or_else(|e| panic!("{name}: {e}")).data;
        let e = error(&ours, expected);
        if e.is_nan() || e > worst.0 {
            worst = (e, name);
        }
    }
    worst
}

// ---------------------------------------------------------------------------------------------
// The processing by hand, and the circuits multiplied out.

/// The matrices the statistics read, processed by hand: `w_q[l][h]` etc. per query head (a
/// grouped-query head's `W_K`, `W_V` are its group's).
struct Circuits {
    w_e: Matrix,
    w_q: Vec<Vec<Matrix>>,
    w_k: Vec<Vec<Matrix>>,
    w_v: Vec<Vec<Matrix>>,
    w_o: Vec<Vec<Matrix>>,
    w_u: Matrix,
}

/// Every column of `m` less its mean (over the rows).
fn centre_columns(m: &Matrix) -> Matrix {
    let means: Vec<f64> = (0..m.ncols()).map(|j| m.column(j).iter().sum::<f64>() / m.nrows() as f64).collect();
    Matrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] - means[j])
}

/// Every row of `m` less its mean (over the columns).
fn centre_rows(m: &Matrix) -> Matrix {
    let means: Vec<f64> = (0..m.nrows()).map(|i| m.row(i).iter().sum::<f64>() / m.ncols() as f64).collect();
    Matrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] - means[i])
}

/// A reader of a norm of `kind` with weight `w`, folded as TransformerLens's `fold_ln` folds it
/// (the documentation of `meta.json`'s `tl_processing`): LayerNorm, the rows times `w`, then the
/// columns centred; LayerNormPre, the columns centred; RMSNorm, the rows times `w`; RMSNormPre,
/// nothing.
fn fold(kind: NormKind, w: &[f64], m: &Matrix) -> Matrix {
    let scaled = match kind {
        NormKind::LayerNorm | NormKind::Rms => Matrix::from_fn(m.nrows(), m.ncols(), |i, j| w[i] * m[(i, j)]),
        NormKind::LayerNormPre | NormKind::RmsPre => m.clone(),
    };
    match kind {
        NormKind::LayerNorm | NormKind::LayerNormPre => centre_columns(&scaled),
        NormKind::Rms | NormKind::RmsPre => scaled,
    }
}

fn by_hand(p: &Params, processing: Processing) -> Circuits {
    let mut c = Circuits {
        w_e: p.w_e.clone(),
        w_q: Vec::new(),
        w_k: Vec::new(),
        w_v: Vec::new(),
        w_o: Vec::new(),
        w_u: p.w_u.clone(),
    };
    for layer in &p.layers {
        let a = &layer.attn;
        let heads = 0..a.n_heads();
        let read = |m: &Matrix| match (&layer.ln1, processing.fold_ln) {
            (Some(ln), true) => fold(ln.kind, ln.w.as_slice(), m),
            _ => m.clone(),
        };
        c.w_q.push(heads.clone().map(|h| read(&a.w_q[h])).collect());
        c.w_k.push(heads.clone().map(|h| read(a.w_k(h))).collect());
        c.w_v.push(heads.clone().map(|h| read(a.w_v(h))).collect());
        let write = |m: &Matrix| if processing.center_writing_weights { centre_rows(m) } else { m.clone() };
        c.w_o.push(heads.map(|h| write(&a.w_o[h])).collect());
    }
    if let (Some(ln), true) = (&p.ln_final, processing.fold_ln) {
        c.w_u = fold(ln.kind, ln.w.as_slice(), &c.w_u);
    }
    if processing.center_writing_weights {
        c.w_e = centre_rows(&c.w_e);
    }
    if processing.center_unembed {
        c.w_u = centre_rows(&c.w_u);
    }
    // fold_value_biases: biases enter no circuit.
    c
}

/// `Σ Re λ / Σ |λ|` of `m`'s eigenvalues.
fn copying(m: &Matrix) -> f64 {
    let eig = stats::eigenvalues(m.clone()).unwrap();
    eig.iter().map(|z| z.re).sum::<f64>() / eig.iter().map(|z| z.norm()).sum::<f64>()
}

/// The statistics of `c`, every circuit multiplied out (square vocabularies only).
fn explicit(c: &Circuits) -> Stats {
    let layers = c.w_q.len();
    let heads = |l: usize| c.w_q[l].len();
    let per_head = |f: &dyn Fn(usize, usize) -> f64| -> Vec<Vec<f64>> {
        (0..layers).map(|l| (0..heads(l)).map(|h| f(l, h)).collect()).collect()
    };
    let ov = |l: usize, h: usize| &c.w_e * &c.w_v[l][h] * &c.w_o[l][h] * &c.w_u;
    let qk = |l: usize, h: usize| &c.w_e * &c.w_q[l][h] * c.w_k[l][h].transpose() * c.w_e.transpose();
    let left = |l: usize, h: usize| &c.w_v[l][h] * &c.w_o[l][h];
    let right_q = |l: usize, h: usize| &c.w_q[l][h] * c.w_k[l][h].transpose();
    let composition = |right: &dyn Fn(usize, usize) -> Matrix| -> Vec<Vec<Vec<Vec<f64>>>> {
        (0..layers)
            .map(|l| {
                (0..heads(l))
                    .map(|h| {
                        (0..layers)
                            .map(|r| {
                                (0..heads(r))
                                    .map(|g| {
                                        if l >= r {
                                            return 0.0;
                                        }
                                        let (a, b) = (left(l, h), right(r, g));
                                        (&a * &b).norm() / (a.norm() * b.norm())
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    };
    // Only the seven statistics are compared ([`statistics`]); the rest is left empty.
    Stats {
        weight_processing: Processing::NONE,
        rotary_offset: None,
        precision: pathc::stats::Precision::F64,
        not_defined: Default::default(),
        ov_copying: per_head(&|l, h| copying(&ov(l, h))),
        qk_copying: per_head(&|l, h| copying(&qk(l, h))),
        ov_frobenius: per_head(&|l, h| ov(l, h).norm()),
        qk_frobenius: per_head(&|l, h| qk(l, h).norm()),
        comp_q: composition(&right_q),
        comp_k: composition(&|l, h| right_q(l, h).transpose()),
        comp_v: composition(&left),
        comp_baseline: stats::Baseline { q: 0.0, k: 0.0, v: 0.0, samples: 0 },
        comp_q_minus_baseline: Vec::new(),
        comp_k_minus_baseline: Vec::new(),
        comp_v_minus_baseline: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Against TransformerLens.

/// The norm-kind fixtures' statistics of their weights as given are TransformerLens's; the
/// processed fixtures' too (TransformerLens's statistics of its own processed model).
#[test]
fn statistics_of_every_norm_kind_as_given_match_transformer_lens() {
    let mut failures = Vec::new();
    for name in NORM_KINDS {
        let s = stats::stats(&params(name)).unwrap();
        let (err, stat) = against_reference(&s, &reference(name));
        eprintln!("{name:<24} as given vs TransformerLens: largest error {err:.3e} ({stat})");
        if err.is_nan() || err > TOL {
            failures.push(format!("{name} {stat}: {err:e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// `pathc stats --process-weights` of `unprocessed` is TransformerLens's `from_pretrained`
/// statistics (`processed`), and `--fold-ln` its `fold_ln` alone (`processed_fold_ln_only`):
/// within the float32 rounding of the saved processed weights against pathc's statistics of
/// them, which equal TransformerLens's reference within 1e-9; without the processing the
/// statistics are far from them.
#[test]
fn processing_unprocessed_gives_transformer_lens_s_processed_statistics() {
    let unprocessed = params("unprocessed");
    for (name, processing) in
        [("processed", Processing::TRANSFORMER_LENS), ("processed_fold_ln_only", Processing::FOLD_LN)]
    {
        let ours = stats::stats_processed(&unprocessed, processing).unwrap();
        assert_eq!(ours.weight_processing, processing);
        let theirs = stats::stats(&params(name)).unwrap();
        let r = reference(name);
        let (rounding, stat) = largest_error(&ours, &theirs);
        let (direct, direct_stat) = against_reference(&ours, &r);
        let (reference_err, reference_stat) = against_reference(&theirs, &r);
        eprintln!(
            "{name:<24} pathc's processing of unprocessed vs pathc of {name}: {rounding:.3e} ({stat}); vs TransformerLens's reference: {direct:.3e} ({direct_stat}); pathc of {name} vs its reference: {reference_err:.3e} ({reference_stat})"
        );
        assert!(rounding < 1e-6, "{name}: {stat} {rounding:e}");
        assert!(direct < 1e-6, "{name}: {direct_stat} {direct:e}");
        assert!(reference_err < TOL, "{name}: {reference_stat} {reference_err:e}");
        let (unprocessed_err, _) = largest_error(&stats::stats(&unprocessed).unwrap(), &theirs);
        assert!(unprocessed_err > 1e-3, "{name}: the processing changes nothing? {unprocessed_err:e}");
    }
    // Each step on its own changes what it should: after fold_ln, center_writing_weights leaves
    // the full circuits and changes the composition scores; center_unembed changes only the OV
    // circuit; fold_value_biases nothing.
    let folded = stats::stats_processed(&unprocessed, Processing::FOLD_LN).unwrap();
    let with = |step: Processing| {
        let s = stats::stats_processed(&unprocessed, step).unwrap();
        statistics(&s)
            .into_iter()
            .zip(statistics(&folded))
            .map(|((n, x), (_, y))| (n, error(&x, &y)))
            .collect::<Vec<_>>()
    };
    let changed = |diffs: &[(&'static str, f64)]| -> Vec<&'static str> {
        diffs.iter().filter(|(_, e)| *e > 1e-9).map(|(n, _)| *n).collect()
    };
    let centre_writing = with(Processing { center_writing_weights: true, ..Processing::FOLD_LN });
    assert_eq!(changed(&centre_writing), ["comp_q", "comp_k", "comp_v"], "{centre_writing:?}");
    let centre_unembed = with(Processing { center_unembed: true, ..Processing::FOLD_LN });
    assert_eq!(changed(&centre_unembed), ["ov_copying", "ov_frobenius"], "{centre_unembed:?}");
    let value_biases = with(Processing { fold_value_biases: true, ..Processing::FOLD_LN });
    assert!(value_biases.iter().all(|(_, e)| *e == 0.0), "{value_biases:?}");
}

/// The hand processing here is TransformerLens's: applied to `unprocessed`, it gives the weights
/// TransformerLens saved in `processed` and `processed_fold_ln_only`, within their float32
/// rounding.
#[test]
fn the_hand_processing_is_transformer_lens_s() {
    let unprocessed = params("unprocessed");
    for (name, processing) in
        [("processed", Processing::TRANSFORMER_LENS), ("processed_fold_ln_only", Processing::FOLD_LN)]
    {
        let ours = by_hand(&unprocessed, processing);
        let theirs = by_hand(&params(name), Processing::NONE);
        let relative = |a: &Matrix, b: &Matrix| (a - b).amax() / b.amax();
        let mut worst: f64 = relative(&ours.w_e, &theirs.w_e).max(relative(&ours.w_u, &theirs.w_u));
        for (a, b) in
            [(&ours.w_q, &theirs.w_q), (&ours.w_k, &theirs.w_k), (&ours.w_v, &theirs.w_v), (&ours.w_o, &theirs.w_o)]
        {
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                worst = worst.max(relative(x, y));
            }
        }
        eprintln!("{name:<24} hand processing vs TransformerLens's saved weights: {worst:.3e} (relative to each matrix's largest entry)");
        // float32 rounding is at most 2⁻²⁴ ≈ 6e-8 of an entry; the float64 processing adds ~1e-16.
        assert!(worst < 1e-7, "{name}: {worst:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Against the circuits multiplied out.

/// Every combination of the four steps on every fixture: refused exactly where `Params::process`
/// refuses (with its message: `center_writing_weights` on the RMSNorm models, on models without
/// norms, on shortformer), else the circuits multiplied out from the weights processed by hand;
/// in memory and streamed from the file alike, bit for bit.
#[test]
fn every_processing_of_every_fixture_equals_the_explicit_circuits_of_hand_processed_weights() {
    let mut failures = Vec::new();
    for name in NORM_KINDS.into_iter().chain(OTHERS) {
        let p = params(name);
        let compiled = compiled(name);
        let weights = Weights::load(format!("{}/model.safetensors", dir(name)).as_ref()).unwrap();
        let mut worst = (0.0, "", Processing::NONE);
        for processing in every_processing() {
            let in_memory = stats::stats_processed(&p, processing);
            let streamed = StatsParams::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
            let streamed = stats::stats_streamed(streamed, processing, &Silent);
            // The norm-kind fixtures: refused exactly for the RMSNorm ones.
            let refused = processing.center_writing_weights && NOT_CENTRING.contains(&name);
            let known = NORM_KINDS.contains(&name);
            match (p.process(processing), in_memory, streamed) {
                (Err(want), Err(StatsError::Processing(a)), Err(StatsError::Processing(b))) => {
                    assert!(refused || !known, "{name} {processing:?}: {want}");
                    assert!(processing.center_writing_weights, "{name} {processing:?}: {want}");
                    assert_eq!((a.to_string(), b.to_string()), (want.to_string(), want.to_string()));
                    assert!(want.to_string().starts_with("cannot apply center_writing_weights: "), "{want}");
                }
                (Ok(_), Ok(in_memory), Ok(streamed)) => {
                    assert!(!refused, "{name} {processing:?}");
                    assert_eq!(streamed, in_memory, "{name} {processing:?}: streamed vs in memory");
                    assert_eq!(in_memory.weight_processing, processing);
                    let (err, stat) = largest_error(&in_memory, &explicit(&by_hand(&p, processing)));
                    if err.is_nan() || err > worst.0 {
                        worst = (err, stat, processing);
                    }
                }
                (want, a, b) => panic!("{name} {processing:?}: {:?} / {:?} / {:?}", want.err(), a.err(), b.err()),
            }
        }
        let (err, stat, processing) = worst;
        eprintln!(
            "{name:<24} every accepted processing vs the explicit circuits: largest error {err:.3e} ({stat}, {})",
            stats::processing_label(processing)
        );
        if err.is_nan() || err > TOL {
            failures.push(format!("{name} {stat} {processing:?}: {err:e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// With an output vocabulary of its own (`vocab_out`: 33 tokens, 2 outputs), center_unembed
/// subtracts the mean over the 2 outputs: the OV norm of the 33 × 2 circuit multiplied out; and
/// a rotary offset with the processing (`parallel`, Δ = 3).
#[test]
fn processing_with_another_output_vocabulary_and_a_rotary_offset() {
    let p = params("vocab_out");
    let s = stats::stats_processed(&p, Processing { center_unembed: true, ..Processing::NONE }).unwrap();
    let c = by_hand(&p, Processing { center_unembed: true, ..Processing::NONE });
    assert_eq!(c.w_u.ncols(), 2);
    let mut worst: f64 = 0.0;
    for (l, heads) in s.ov_frobenius.iter().enumerate() {
        for (h, &norm) in heads.iter().enumerate() {
            let full = &c.w_e * &c.w_v[l][h] * &c.w_o[l][h] * &c.w_u;
            worst = worst.max((norm - full.norm()).abs() / full.norm());
        }
    }
    assert!(s.not_defined.contains_key("ov_copying"));
    eprintln!("vocab_out --center-unembed: OV norms vs the 33 × 2 circuits: {worst:.3e}");
    assert!(worst < TOL, "{worst:e}");

    // Rotary: the processing acts on W_Q's rows, the offset on its columns; Δ = 3 with all four
    // steps is Δ = 3 of the processed weights, whose V-composition and OV statistics do not
    // depend on Δ.
    let p = params("parallel");
    let options =
        StatsOptions { processing: Processing::TRANSFORMER_LENS, rotary_offset: Some(3), ..StatsOptions::default() };
    let at3 = stats::stats_processed(&p, options).unwrap();
    let at0 = stats::stats_processed(&p, Processing::TRANSFORMER_LENS).unwrap();
    assert_eq!((at3.weight_processing, at3.rotary_offset), (Processing::TRANSFORMER_LENS, Some(3)));
    assert_eq!((&at3.ov_frobenius, &at3.ov_copying, &at3.comp_v), (&at0.ov_frobenius, &at0.ov_copying, &at0.comp_v));
    assert!(error(&flat2(&at3.qk_frobenius), &flat2(&at0.qk_frobenius)) > 1e-6);
    let processed = p.process(Processing::TRANSFORMER_LENS).unwrap();
    assert_eq!(
        at3,
        stats::stats_processed(&processed, StatsOptions { rotary_offset: Some(3), ..Default::default() })
            .map(|s| Stats { weight_processing: Processing::TRANSFORMER_LENS, ..s })
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// The command line.

fn run(command: &str, name: &str, extra: &[&str]) -> Output {
    let (model, weights) = (format!("{}/model.tf", dir(name)), format!("{}/model.safetensors", dir(name)));
    let mut args = vec![command, model.as_str(), "--weights", weights.as_str()];
    args.extend_from_slice(extra);
    pathc(&args)
}

/// `pathc stats --process-weights --format json` is the library's statistics of the processed
/// weights (the same JSON text: serde_json's parser may be an ulp off, so texts are compared)
/// and records the steps; the text says
/// each; the flags one by one add up to `--process-weights`; `--fold-ln` is still `fold_ln`.
#[test]
fn stats_records_the_processing_in_json_and_text() {
    // f64 products, as the library's default.
    let out = run("stats", "unprocessed", &["--process-weights", "--format", "json", "--precision", "f64"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["weight_processing"], "fold_ln+center_writing_weights+center_unembed+fold_value_biases");
    let library = stats::stats_processed(&params("unprocessed"), Processing::TRANSFORMER_LENS).unwrap();
    assert_eq!(stdout(&out), serde_json::to_string_pretty(&library).unwrap() + "\n");
    let steps = [
        "--fold-ln",
        "--center-writing-weights",
        "--center-unembed",
        "--fold-value-biases",
        "--format",
        "json",
        "--precision",
        "f64",
    ];
    assert_eq!(stdout(&run("stats", "unprocessed", &steps)), stdout(&out));

    let out = run("stats", "unprocessed", &["--center-unembed", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["weight_processing"], "center_unembed");
    let out = run("stats", "unprocessed", &["--fold-ln", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["weight_processing"], "fold_ln");
    let out = run("stats", "unprocessed", &["--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["weight_processing"], "as_given");

    let text = stdout(&run("stats", "unprocessed", &["--process-weights"]));
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("model unprocessed: per-head statistics of the full circuits (weights processed as TransformerLens does (all four, as from_pretrained): fold_ln: "), "{first}");
    for step in [
        "center_writing_weights: W_E's and W_O's rows centred",
        "center_unembed: W_U less its mean",
        "fold_value_biases: ",
    ] {
        assert!(first.contains(step), "{first}");
    }
    let text = stdout(&run("stats", "unprocessed", &["--center-unembed"]));
    let first = text.lines().next().unwrap();
    assert!(
        first.ends_with(
            "(weights processed as TransformerLens does: center_unembed: W_U less its mean over the outputs)"
        ),
        "{first}"
    );
}

/// The refusals of `check` on `stats` and the statistics plots, word for word, exit 2, nothing
/// printed on standard output and no plot written; `--what paths` takes none of the processing
/// flags.
#[test]
fn processing_refusals_are_check_s_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("pathc-processed-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("plot.svg");
    let svg = svg.to_str().unwrap();
    for (name, flag) in
        [("rms", "--center-writing-weights"), ("hf_llama", "--process-weights"), ("shortformer", "--process-weights")]
    {
        let check = run("check", name, &["--tokens", "1,2", flag]);
        assert_eq!(check.status.code(), Some(2));
        let stats = run("stats", name, &[flag]);
        assert_eq!(stats.status.code(), Some(2), "{name} {flag}");
        assert_eq!(stderr(&stats), stderr(&check), "{name} {flag}");
        assert!(stdout(&stats).is_empty());
        let plot = run("plot", name, &["--what", "comp-v", flag, "-o", svg]);
        assert_eq!(plot.status.code(), Some(2), "{name} {flag}");
        assert_eq!(stderr(&plot), stderr(&check), "{name} {flag}");
        assert!(!std::path::Path::new(svg).exists());
        assert!(stderr(&check).starts_with("error: cannot apply center_writing_weights: "), "{}", stderr(&check));
    }
    // What is not refused there is accepted: the RMS model with everything but the centring.
    let out = run("stats", "rms", &["--fold-ln", "--center-unembed", "--fold-value-biases", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["weight_processing"], "fold_ln+center_unembed+fold_value_biases");

    for flag in ["--center-writing-weights", "--center-unembed", "--fold-value-biases", "--process-weights"] {
        let out = run("plot", "unprocessed", &["--what", "paths", "--tokens", "1,2", flag, "-o", svg]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert_eq!(
            stderr(&out),
            format!("error: {flag} applies to the statistics plots here; for the path contributions of processed weights, see `pathc paths {flag}`\n")
        );
    }
    assert!(!std::path::Path::new(svg).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The statistics plots of processed weights: their numbers are `stats`' with the same flags and
/// the title says the processing.
#[test]
fn plots_say_the_processing_and_show_its_numbers() {
    let dir = std::env::temp_dir().join(format!("pathc-processed-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("plot.svg");
    let out = run("plot", "unprocessed", &["--what", "ov-copying", "--process-weights", "-o", svg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).unwrap();
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    let description = stats::processing_description(Processing::TRANSFORMER_LENS);
    assert!(texts.contains(&description), "{description:?} in {texts:?}");
    let s = stats::stats_processed(&params("unprocessed"), Processing::TRANSFORMER_LENS).unwrap();
    let cells: Vec<String> = flat2(&s.ov_copying).iter().map(|v| format!("{v:.2}")).collect();
    assert!(texts.windows(cells.len()).any(|w| w == cells), "{cells:?} in {texts:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same bits on 1, 2 and 3 threads with every step (`center_unembed`'s pass over `W_U`
/// included).
#[test]
fn processed_statistics_are_the_same_bits_on_any_number_of_threads() {
    for (name, extra) in
        [("unprocessed", &["--process-weights"][..]), ("parallel", &["--process-weights", "--rotary-offset", "3"][..])]
    {
        let once = |threads: &str| {
            let (model, weights) = (format!("{}/model.tf", dir(name)), format!("{}/model.safetensors", dir(name)));
            let out = Command::new(env!("CARGO_BIN_EXE_pathc"))
                .args(["stats", &model, "--weights", &weights, "--format", "json"])
                .args(extra)
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
