//! Evaluation plans (`pathc::plan`): the plan the e-graph chooses computes what the naive plan
//! (the statistics as written, every product multiplied out) computes, on the TransformerLens
//! fixtures and on random shapes; the statistics streamed from the file equal those computed in
//! memory; GPT-2 small's plan is pinned (e-graph size, FLOPs, the shared products).

use pathc::eval::Processing;
use pathc::eval::{NameMap, Params, StatsParams};
use pathc::plan::{self, Plan};
use pathc::progress::Silent;
use pathc::stats::{self, Stats};
use pathc::weights::Weights;
use proptest::prelude::*;

fn fixture_params(name: &str) -> Params {
    let source = std::fs::read_to_string(format!("examples/{name}.tf")).unwrap();
    let compiled = pathc::compile(&source).unwrap();
    pathc::load_params(&compiled, format!("tests/fixtures/{name}/model.safetensors").as_ref(), &NameMap::default())
        .unwrap()
}

fn plans_for(params: &Params) -> plan::Plans {
    stats::plans_for(&params.layers, params.w_e.nrows(), params.w_e.ncols())
}

/// Every number of two statistics, side by side with its name.
fn numbers(s: &Stats) -> Vec<(&'static str, f64)> {
    let two = |name, x: &Vec<Vec<f64>>| x.iter().flatten().map(move |&v| (name, v)).collect::<Vec<_>>();
    let four = |name, x: &Vec<Vec<Vec<Vec<f64>>>>| {
        x.iter().flatten().flatten().flatten().map(move |&v| (name, v)).collect::<Vec<_>>()
    };
    [
        two("ov_copying", &s.ov_copying),
        two("qk_copying", &s.qk_copying),
        two("ov_frobenius", &s.ov_frobenius),
        two("qk_frobenius", &s.qk_frobenius),
        four("comp_q", &s.comp_q),
        four("comp_k", &s.comp_k),
        four("comp_v", &s.comp_v),
    ]
    .concat()
}

/// The largest difference, relative to the larger of 1 and the value for the norms (which scale
/// with the weights) and absolute for the scores (which lie in [-1, 1]).
fn largest_difference(a: &Stats, b: &Stats) -> (f64, &'static str) {
    numbers(a).into_iter().zip(numbers(b)).fold((0.0, ""), |worst, ((name, x), (_, y))| {
        let scale = if name.ends_with("frobenius") { x.abs().max(y.abs()).max(1.0) } else { 1.0 };
        let d = (x - y).abs() / scale;
        if d > worst.0 {
            (d, name)
        } else {
            worst
        }
    })
}

fn run(plan: &plan::EvalPlan, params: &Params) -> Stats {
    run_in(plan, params, stats::Precision::F64)
}

fn run_in(plan: &plan::EvalPlan, params: &Params, precision: stats::Precision) -> Stats {
    stats::stats_with_plan(plan, &stats::head_weights(&params.layers), params, &Silent, precision).unwrap()
}

/// The f32 products (`Precision::F32`, what the command line runs unless `--precision f64`) give
/// the f64 numbers within 1e-5: relative for the norms, absolute for the scores (which lie in
/// [-1, 1]); the fixtures, as given and folded, and uniform random weights with a vocabulary
/// wider than d_model (GPT-2 small's shape: `benches/speed.sh`, 6.8e-8 measured).
#[test]
fn f32_products_are_within_1e_5_of_f64() {
    let mut cases: Vec<(String, Params)> = Vec::new();
    for name in ["attn1", "attn2", "full2"] {
        cases.push((format!("{name} as given"), fixture_params(name)));
        cases.push((format!("{name} folded"), fixture_params(name).fold_layer_norm()));
    }
    for seed in 0..4 {
        cases.push((format!("random {seed}"), random_params(seed, 600, 96, 16, &[4, 4, 4])));
    }
    for (name, params) in &cases {
        let plans = plans_for(params);
        let (f64s, f32s) = (run(&plans.chosen, params), run_in(&plans.chosen, params, stats::Precision::F32));
        assert_eq!(f32s.precision, stats::Precision::F32);
        let (error, stat) = largest_difference(&f64s, &f32s);
        eprintln!("{name}: f32 vs f64 products, largest difference {error:.1e} ({stat})");
        assert!(error < 1e-5, "{name}: {stat} differs by {error:e}");
        // And f32 is not f64 under another name.
        assert!(error > 0.0, "{name}");
    }
}

#[test]
fn the_chosen_plan_equals_the_naive_plan_on_the_fixtures() {
    for name in ["attn1", "attn2", "full2"] {
        for (weights, params) in
            [("as given", fixture_params(name)), ("folded", fixture_params(name).fold_layer_norm())]
        {
            let plans = plans_for(&params);
            let (naive, chosen) = (run(&plans.naive, &params), run(&plans.chosen, &params));
            let (error, stat) = largest_difference(&naive, &chosen);
            eprintln!("{name}, {weights}: chosen vs naive plan, largest difference {error:.1e} ({stat})");
            assert!(error < 1e-9, "{name}, {weights}: {stat} differs by {error:e}");
            // The naive plan really multiplies the vocab × vocab circuit out.
            let vocab = params.w_e.nrows();
            let largest = plans.naive.step_ids().map(|s| plans.naive.shape(s).entries()).max().unwrap();
            assert_eq!(largest, vocab * vocab, "{name}");
        }
    }
}

#[test]
fn statistics_streamed_from_the_file_equal_those_in_memory() {
    for name in ["attn1", "attn2", "full2"] {
        let source = std::fs::read_to_string(format!("examples/{name}.tf")).unwrap();
        let compiled = pathc::compile(&source).unwrap();
        let weights = Weights::load(format!("tests/fixtures/{name}/model.safetensors").as_ref()).unwrap();
        for processing in [Processing::NONE, Processing::FOLD_LN] {
            let streamed = StatsParams::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
            let streamed = stats::stats_streamed(streamed, processing, &Silent).unwrap();
            let in_memory = stats::stats_processed(&fixture_params(name), processing).unwrap();
            assert_eq!(streamed, in_memory, "{name} {processing:?}");
        }
    }
}

#[test]
fn gpt2_small_plan_is_pinned() {
    let source = std::fs::read_to_string("examples/gpt2-small.tf").unwrap();
    let compiled = pathc::compile(&source).unwrap();
    let plans = pathc::plan_stats(&compiled.model).unwrap();
    let run = plans.chosen.run.as_ref().unwrap();
    assert_eq!((run.nodes, run.classes, run.iterations, run.stop.as_deref()), (6303, 649, 25, None));
    for rule in plan::lang::rules() {
        assert!(run.applied.get(rule.name.as_str()).is_some_and(|&n| n > 0), "rule {} never applied", rule.name);
    }
    let (chosen, naive) = (plans.chosen.flops(), plans.naive.flops());
    // 453.36 GFLOP with Gram products priced as full ones: W_Eᵀ W_E and W_U W_Uᵀ now cost their
    // upper triangles, n (n + 1) / 2 of the n² entries (59.2 GFLOP less), and the six per-head
    // d_head × d_head Grams likewise (2.7 GFLOP less): 391.48. With the Grams' square roots
    // (`gram-root`) a composition score needs no d_head³ product per pair (29.9 GFLOP less) for
    // 3.6 GFLOP of per-head factors: 365.25.
    assert!((chosen / 365.25e9 - 1.0).abs() < 1e-4, "{chosen}");
    // Per pair and mode: one d_head × d_model × d_head product of per-head factors and its
    // squared norm, nothing else.
    let c = &plans.chosen;
    let per_pair: Vec<String> = c
        .listed_steps()
        .into_iter()
        .filter(|&s| c.shape(s).deps == plan::Deps::PAIR && matches!(c.node(s), Plan::Mul(_)))
        .map(|s| format!("{}×{}", c.shape(s).rows, c.shape(s).cols))
        .collect();
    assert_eq!(per_pair, ["64×64"; 3]);
    assert!(c
        .listed_steps()
        .into_iter()
        .all(|s| c.shape(s).deps != plan::Deps::PAIR || c.batched(s).is_some() || !matches!(c.node(s), Plan::Mul(_))));
    assert!(naive / chosen > 1e5, "{naive} vs {chosen}");
    // The only products over the vocabulary are the three shared d_model × d_model ones,
    // streamed; nothing else is vocabulary-sized.
    let streamed: Vec<String> =
        c.listed_steps().into_iter().filter(|&s| c.streamed(s).is_some()).map(|s| c.describe(s)).collect();
    assert_eq!(streamed, ["W_U · W_E", "W_Eᵀ · W_E", "W_U · W_Uᵀ"]);
    for step in c.listed_steps() {
        let shape = c.shape(step);
        assert!(shape.rows < 50257 && shape.cols < 50257, "{}", c.describe(step));
        if shape.deps == plan::Deps::NONE {
            assert!(c.streamed(step).is_some(), "{} is head-independent but not shared", c.describe(step));
        }
        // Eigenvalues only of d_head × d_head matrices.
        if let Plan::Copying(m) = c.node(step) {
            assert_eq!(c.shape(*m).rows, 64);
        }
    }
    // The memory side of the cost model: within 1.2× of GPT-2 small's f32 weights that the
    // statistics read (W_E, W_U and the attention weights, 422 MB), and no vocab × vocab matrix.
    assert!(c.peak_bytes(2, plan::Precision::F32) < 1.2 * 422e6, "{}", c.peak_bytes(2, plan::Precision::F32));
    insta::assert_snapshot!("gpt2_small_plan", plans.render("gpt2_small", 2));
}

/// A model of the given sizes with weights from a seeded generator (SplitMix64, uniform in
/// [-1, 1)).
fn random_params(seed: u64, d_vocab: usize, d_model: usize, d_head: usize, heads: &[usize]) -> Params {
    let source = format!(
        "model random\ndim d_model = {d_model}\ndim d_vocab = {d_vocab}\ndim d_head = {d_head}\nembed\n{}unembed\n",
        heads.iter().map(|h| format!("layer {{ attn(heads = {h}) }}\n")).collect::<String>()
    );
    let compiled = pathc::compile(&source).unwrap();
    let mut rng = stats::SplitMix64(seed);
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("embed.W_E".into(), vec![d_vocab, d_model]), ("unembed.W_U".into(), vec![d_model, d_vocab])];
    for (l, &h) in heads.iter().enumerate() {
        for w in ["W_Q", "W_K", "W_V"] {
            tensors.push((format!("blocks.{l}.attn.{w}"), vec![h, d_model, d_head]));
        }
        tensors.push((format!("blocks.{l}.attn.W_O"), vec![h, d_head, d_model]));
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n).flat_map(|_| rng.next_signed_unit().to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F64, s.clone(), b).unwrap())
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let weights = Weights::from_bytes(&bytes, "random.safetensors").unwrap();
    Params::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Shapes where the vocabulary is smaller than d_model or d_head, and d_head larger than
    /// d_model, make the e-graph choose other plans: every one computes the naive plan's numbers.
    #[test]
    fn the_chosen_plan_equals_the_naive_plan_on_random_shapes(
        seed in any::<u64>(),
        d_vocab in 1usize..14,
        d_model in 1usize..10,
        d_head in 1usize..7,
        heads in proptest::collection::vec(1usize..4, 1..4),
    ) {
        let params = random_params(seed, d_vocab, d_model, d_head, &heads);
        let plans = plans_for(&params);
        let (naive, chosen) = (run(&plans.naive, &params), run(&plans.chosen, &params));
        let (error, stat) = largest_difference(&naive, &chosen);
        // A copying score is Σλ/Σ|λ| of a rank-d_head circuit, the naive plan's d_vocab × d_vocab:
        // its other eigenvalues come out as rounding noise (~1e-16 of the matrix's norm), which
        // moves the score by that over Σ|λ|, large when Σ|λ| is small (1.3e-9 measured at d_head 1,
        // in the regression file). Plans that differ give differences of order 1.
        let tolerance = if stat.ends_with("copying") { 1e-7 } else { 1e-9 };
        prop_assert!(error < tolerance, "{} differs by {:e}", stat, error);
    }
}

/// `fixture`'s weights file with `W_E` and `W_U` multiplied by `factor` (a power of two, so the
/// f32 values stay exact), written to a temporary file.
fn scaled_fixture(name: &str, factor: f32) -> std::path::PathBuf {
    let bytes = std::fs::read(format!("tests/fixtures/{name}/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(tensor_name, view)| {
            let mut data = view.data().to_vec();
            if tensor_name == "embed.W_E" || tensor_name == "unembed.W_U" {
                assert_eq!(view.dtype(), safetensors::Dtype::F32);
                data = data
                    .chunks_exact(4)
                    .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) * factor).to_le_bytes())
                    .collect();
            }
            (tensor_name, view.dtype(), view.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = std::env::temp_dir().join(format!("pathc-plan-{}-{name}-{factor}.safetensors", std::process::id()));
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

/// The f32 products' fast path: `W_E` and `W_U` stored as F32 are read as they are (no f64
/// detour, strided views instead of transposed copies), divided by a power of two only when
/// their magnitudes are far from 1. Its numbers are those of the f64 products within 1e-5, at
/// the fixtures' magnitudes and at 2^±30 times them (the scaled path), and equal those of the
/// f32 products on the same weights held in memory as f64 (the rounding path) within 1e-12.
#[test]
fn f32_products_read_straight_from_an_f32_file_are_within_1e_5_of_f64() {
    let options = |precision| stats::StatsOptions { precision, ..stats::StatsOptions::from(Processing::NONE) };
    for name in ["attn1", "attn2"] {
        let source = std::fs::read_to_string(format!("examples/{name}.tf")).unwrap();
        let compiled = pathc::compile(&source).unwrap();
        for factor in [1.0f32, 2f32.powi(30), 2f32.powi(-30)] {
            let path = scaled_fixture(name, factor);
            let weights = Weights::load(&path).unwrap();
            let streamed = |precision| {
                let params = StatsParams::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
                stats::stats_streamed(params, options(precision), &Silent).unwrap()
            };
            let (f32s, f64s) = (streamed(stats::Precision::F32), streamed(stats::Precision::F64));
            // Relative for the norms whatever their size (2^-60 times the fixtures' here).
            let (error, stat) =
                numbers(&f64s).into_iter().zip(numbers(&f32s)).fold((0.0, ""), |worst, ((n, x), (_, y))| {
                    let scale =
                        if n.ends_with("frobenius") { x.abs().max(y.abs()).max(f64::MIN_POSITIVE) } else { 1.0 };
                    if (x - y).abs() / scale > worst.0 {
                        ((x - y).abs() / scale, n)
                    } else {
                        worst
                    }
                });
            eprintln!("{name} × {factor:e}: f32 from the file vs f64, largest difference {error:.1e} ({stat})");
            assert!(error < 1e-5 && error > 0.0, "{name} × {factor:e}: {stat} differs by {error:e}");
            let in_memory = Params::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
            let in_memory = stats::stats_processed(&in_memory, options(stats::Precision::F32)).unwrap();
            let (error, stat) = largest_difference(&in_memory, &f32s);
            assert!(error < 1e-12, "{name} × {factor:e}: {stat} differs by {error:e} between the two f32 paths");
            std::fs::remove_file(&path).unwrap();
        }
    }
}
