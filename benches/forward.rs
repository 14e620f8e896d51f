//! pathc's forward pass against its path evaluation, for `benches/gpt2.sh` (issue 5's target (b):
//! every path up to order 2 in at most 3× one forward pass, as direct logit attribution to the
//! next token at every position).
//!
//! ```sh
//! PATHC_BENCH_MODEL=m.tf PATHC_BENCH_WEIGHTS=w.safetensors PATHC_BENCH_TOKENS=128 \
//!   cargo bench --bench forward
//! ```
//!
//! Prints one JSON object. Without the variables (`cargo bench --no-run` in CI, or a plain
//! `cargo bench`) it does nothing.
//!
//! - `forward_seconds`: the median of 5 runs of `pathc::eval::forward` (f64, recording every
//!   pattern, LayerNorm scale, head result and MLP activation: what the paths are evaluated
//!   with), after loading, on tokens `(7919 i + 13) mod d_vocab`. This is "one forward pass".
//! - `target_paths_seconds`: direct logit attribution as `pathc paths --target next --pos all`
//!   computes it, without the output: every path up to order 2's contribution to the logit of
//!   the next token at every position but the last, through `eval::target_logits` (resolving the
//!   targets, gathering and folding their `W_U` columns, the paths' residual prefixes, the last
//!   head folded into the targets, the dot products: all timed). The median of 5 runs after a
//!   warm-up, each checked bit for bit against the warm-up's numbers.
//!   `target_paths_over_forward` is its ratio to `forward_seconds` (issue 5's target: ≤ 3);
//!   `target_max_abs_error` is `max |Σ paths − forward logit|` over the targets (`null` when
//!   `max_order` leaves paths out).
//! - `paths_*`: the full logit rows, the path evaluation of `pathc paths --pos all` without a
//!   target and without the output: every path up to order 2 through `PathEvaluator` in
//!   enumeration order (so the prefix cache works as in the CLI). Every path's residual
//!   `[n, d_model]` is computed and timed; its logits `[n, d_vocab] = N · X · W_U` (the cost that
//!   grows with d_vocab) are computed for every `PATHC_BENCH_STRIDE`-th path only (default 16)
//!   and the mean of those is multiplied by the number of paths: at GPT-2 width all paths' logits
//!   take minutes, and each path costs one `[n, d_model] · [d_model, d_vocab]` product, so the
//!   sample gives the per-path figure. The estimate is labelled as one
//!   (`paths_seconds_estimated`). `PATHC_BENCH_FULL_ROWS=0` skips this part.
//! - `unembed_seconds`: one `[n, d_model] · [d_model, d_vocab]` product on its own.

use std::time::Instant;

use pathc::{eval, paths, ExpandOptions};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let (Ok(model), Ok(weights)) = (std::env::var("PATHC_BENCH_MODEL"), std::env::var("PATHC_BENCH_WEIGHTS")) else {
        eprintln!("forward bench: PATHC_BENCH_MODEL and PATHC_BENCH_WEIGHTS not set, nothing to do");
        return;
    };
    let env_usize = |name: &str, default: usize| std::env::var(name).map_or(default, |v| v.parse().expect(name));
    let n_tokens = env_usize("PATHC_BENCH_TOKENS", 128);
    let stride = env_usize("PATHC_BENCH_STRIDE", 16).max(1);
    let max_order = env_usize("PATHC_BENCH_MAX_ORDER", 2) as u32;

    let source = std::fs::read_to_string(&model).expect("model file");
    let compiled = pathc::compile(&source).expect("model compiles");
    let load = Instant::now();
    let params = pathc::load_params(&compiled, weights.as_ref(), &eval::NameMap::default()).expect("weights load");
    let load_seconds = load.elapsed().as_secs_f64();
    let d_vocab = params.d_vocab();
    let tokens: Vec<usize> = (0..n_tokens).map(|i| (7919 * i + 13) % d_vocab).collect();

    let mut forward = eval::forward(&params, &tokens).expect("forward pass"); // warm-up
    let forward_seconds = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                forward = eval::forward(&params, &tokens).expect("forward pass");
                start.elapsed().as_secs_f64()
            })
            .collect(),
    );

    let x = eval::Matrix::from_fn(n_tokens, params.w_u.nrows(), |i, j| ((i * 31 + j * 17) % 97) as f64 / 97.0);
    let start = Instant::now();
    std::hint::black_box(&x * &params.w_u);
    let unembed_seconds = start.elapsed().as_secs_f64();

    let options = ExpandOptions { max_order: Some(max_order), ..ExpandOptions::default() };
    let expansion = pathc::expand_compiled(compiled, &options).expect("expands");

    // Direct logit attribution to the next token at every position (`--target next --pos all`):
    // resolving the targets, gathering and folding their W_U columns, every path's residual
    // prefix and its dot products, all timed; the median of 5 runs after a warm-up, and
    // checked bit for bit against the warm-up run.
    let targets = eval::Targets::resolve(eval::Target::Next, &tokens, d_vocab, None).expect("targets");
    let reference = eval::target_logits(&expansion, &params, &forward, &targets).expect("finite"); // warm-up
    let target_paths_seconds = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                let targets = eval::Targets::resolve(eval::Target::Next, &tokens, d_vocab, None).expect("targets");
                let run = eval::target_logits(&expansion, &params, &forward, &targets).expect("finite");
                let seconds = start.elapsed().as_secs_f64();
                assert!(run.values.iter().zip(reference.values.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
                seconds
            })
            .collect(),
    );
    // Through max_order ≥ the number of layers the paths are all of them, and their
    // contributions sum to the forward pass's logit of each target.
    let complete = max_order as usize >= params.layers.len();
    let sums: Vec<f64> = (0..targets.len()).map(|j| reference.values.column(j).sum()).collect();
    let target_max_abs_error =
        (sums.iter().zip(targets.forward_logits(&forward))).fold(0.0f64, |m, (s, l)| m.max((s - l).abs()));
    let target_fields = format!(
        "\"model\":{model:?},\"n_tokens\":{n_tokens},\"max_order\":{max_order},\"load_seconds\":{load_seconds:.4},\
         \"forward_seconds\":{forward_seconds:.4},\"unembed_seconds\":{unembed_seconds:.4},\"paths\":{},\
         \"target_positions\":{},\"target_paths_seconds\":{target_paths_seconds:.4},\
         \"target_paths_over_forward\":{:.3},\"target_max_abs_error\":{}",
        reference.names.len(),
        targets.len(),
        target_paths_seconds / forward_seconds,
        if complete { format!("{target_max_abs_error:.3e}") } else { "null".to_string() },
    );
    if std::env::var("PATHC_BENCH_FULL_ROWS").is_ok_and(|v| v == "0") {
        println!("{{{target_fields}}}");
        return;
    }

    let mut evaluator = eval::PathEvaluator::new(&params, &forward);
    let (mut n_paths, mut residual_seconds, mut logits_seconds, mut sampled) = (0usize, 0.0, 0.0, 0usize);
    let all = Instant::now();
    paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
        let start = Instant::now();
        std::hint::black_box(evaluator.residual(&p));
        residual_seconds += start.elapsed().as_secs_f64();
        if n_paths % stride == 0 {
            // The residual is cached now: this times the LayerNorm scaling and the W_U product.
            let start = Instant::now();
            std::hint::black_box(evaluator.logits(&p));
            logits_seconds += start.elapsed().as_secs_f64();
            sampled += 1;
        }
        n_paths += 1;
    });
    let loop_seconds = all.elapsed().as_secs_f64();
    let per_path_logits = logits_seconds / sampled.max(1) as f64;
    let estimated = residual_seconds + per_path_logits * n_paths as f64;
    println!(
        "{{{target_fields},\"paths_sampled_for_logits\":{sampled},\"paths_residual_seconds\":{residual_seconds:.4},\
         \"paths_logits_seconds_per_path\":{per_path_logits:.4},\"paths_loop_seconds\":{loop_seconds:.4},\
         \"paths_seconds_estimated\":{estimated:.4},\"paths_over_forward_estimated\":{:.2}}}",
        estimated / forward_seconds
    );
}
