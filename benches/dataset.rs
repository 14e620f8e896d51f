//! Issue 14's speed figure: every path of order ≤ 2 into a logit difference over 1,000 prompts of
//! 20 tokens, on a 2-layer, 12-head model of GPT-2 width with MLPs, against 1,000 forward passes
//! measured in the same run (goal: within 3×).
//!
//! ```sh
//! cargo bench --bench dataset            # or PATHC_BENCH_PROMPTS=200 for a shorter run
//! ```
//!
//! The model is GPT-2 small's blocks (LayerNorm before attention and MLP, 12 heads of 64,
//! `gelu_new` MLP of 3072, biases everywhere, a final LayerNorm, d_vocab 50257, n_ctx 1024)
//! with 2 layers and random weights (SplitMix64, uniform in ±0.05; the LayerNorm weights around
//! 1): the times do not depend on the values. The dataset (written to a temporary file) has
//! `(7919 i + 13 p) mod d_vocab`-style tokens per prompt and a target and an against token each.
//!
//! Prints one JSON object:
//! - `forward_seconds`: the 1,000 forward passes (`pathc::eval::forward`, f64, recording every
//!   pattern and scale), on the same worker threads (`parallel::parallel_map`, in chunks of
//!   `aggregate::CHUNK` as the dataset run uses them), the prompts already in memory.
//! - `dataset_seconds`: `aggregate::dataset_paths` on the file, everything included (both passes
//!   over the file, each prompt's forward pass — without the vocabulary-wide unembedding, which
//!   the paths do not need — every path's contribution, the metric, the aggregation).
//! - `ratio`: `dataset_seconds / forward_seconds`. Each is the median of 3 runs after a warm-up;
//!   `max_abs_rest` is the largest `|Σ paths − metric|` over the prompts (every order is there:
//!   a 2-layer model's paths have order ≤ 2).

use std::io::Write;
use std::time::Instant;

use pathc::aggregate::{self, Inputs, LogitQuestion};
use pathc::eval::{self, AttnWeights, LayerParams, Matrix, MlpWeights, NormWeights, Params, Row};
use pathc::model::{Activation, NormKind};

const SOURCE: &str = "model gpt2_2l
dim d_model = 768
dim d_vocab = 50257
dim n_ctx   = 1024
dim d_head  = 64
dim d_mlp   = 3072
embed
pos_embed
repeat 2 {
  layer {
    layernorm
    attn(heads = 12, bias)
    layernorm
    mlp(act = gelu_new, bias)
  }
}
layernorm
unembed
";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 52) as f64 - 1.0) * 0.05
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| self.next())
    }

    fn row(&mut self, len: usize) -> Row {
        Row::from_fn(len, |_, _| self.next())
    }

    fn norm(&mut self, width: usize) -> Option<NormWeights> {
        Some(NormWeights {
            kind: NormKind::LayerNorm,
            w: Row::from_fn(width, |_, _| 1.0 + self.next()),
            b: self.row(width),
            eps: 1e-5,
        })
    }
}

fn params() -> Params {
    let (d, h, d_head, d_mlp, d_vocab, n_ctx) = (768, 12, 64, 3072, 50257, 1024);
    let mut rng = Rng(14);
    let layers = (0..2)
        .map(|_| LayerParams {
            ln1: rng.norm(d),
            attn: AttnWeights {
                w_q: (0..h).map(|_| rng.matrix(d, d_head)).collect(),
                w_k_kv: (0..h).map(|_| rng.matrix(d, d_head)).collect(),
                w_v_kv: (0..h).map(|_| rng.matrix(d, d_head)).collect(),
                w_o: (0..h).map(|_| rng.matrix(d_head, d)).collect(),
                b_q: (0..h).map(|_| rng.row(d_head)).collect(),
                b_k_kv: (0..h).map(|_| rng.row(d_head)).collect(),
                b_v_kv: (0..h).map(|_| rng.row(d_head)).collect(),
                b_o: rng.row(d),
                attn_scale: (d_head as f64).sqrt(),
                causal: true,
                rotary: None,
                pos_readers: None,
            },
            ln2: rng.norm(d),
            mlp: Some(MlpWeights {
                w_in: rng.matrix(d, d_mlp),
                b_in: rng.row(d_mlp),
                gate: None,
                inner_norm: None,
                w_out: rng.matrix(d_mlp, d),
                b_out: rng.row(d),
                act: Activation::GeluNew,
            }),
            parallel: false,
            shared_norm: false,
        })
        .collect();
    Params {
        w_e: rng.matrix(d_vocab, d),
        w_pos: Some(rng.matrix(n_ctx, d)),
        layers,
        ln_final: rng.norm(d),
        w_u: rng.matrix(d, d_vocab),
        b_u: rng.row(d_vocab),
        shortformer: false,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    // `cargo bench --no-run` builds it; `cargo test --benches` would run it: only a real bench run
    // (criterion-style `--bench` argument) measures.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("dataset bench: run with `cargo bench --bench dataset`");
        return;
    }
    let prompts: usize = std::env::var("PATHC_BENCH_PROMPTS").map_or(1000, |v| v.parse().expect("a count"));
    let n_tokens = 20;
    let params = params();
    let d_vocab = params.d_vocab();
    let tokens: Vec<Vec<usize>> =
        (0..prompts).map(|i| (0..n_tokens).map(|p| (7919 * i + 104_729 * p + 13) % d_vocab).collect()).collect();
    let dir = std::env::temp_dir().join(format!("pathc-dataset-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for (i, t) in tokens.iter().enumerate() {
            let (target, against) = ((31 * i + 7) % d_vocab, (57 * i + 3) % d_vocab);
            writeln!(out, "{{\"tokens\": {t:?}, \"target\": {target}, \"against\": {against}}}").unwrap();
        }
    }
    let expansion =
        pathc::expand(SOURCE, &pathc::ExpandOptions { max_order: Some(2), ..Default::default() }).expect("expands");
    let paths: u64 = expansion.logit_counts.total().try_into().unwrap_or(u64::MAX);

    let forwards = || {
        let start = Instant::now();
        for chunk in tokens.chunks(aggregate::CHUNK) {
            let done =
                pathc::parallel::parallel_map(chunk, |t| eval::forward(&params, t).expect("forward").logits[(0, 0)]);
            std::hint::black_box(done);
        }
        start.elapsed().as_secs_f64()
    };
    let mut result = None;
    let mut dataset = || {
        let start = Instant::now();
        let r = aggregate::dataset_paths(
            &expansion,
            &params,
            &file,
            Inputs::default(),
            LogitQuestion::default(),
            None,
            &pathc::progress::Silent,
            |_| Ok(()),
        )
        .expect("the dataset runs");
        let seconds = start.elapsed().as_secs_f64();
        result = Some(r);
        seconds
    };
    forwards();
    dataset();
    let forward_seconds = median((0..3).map(|_| forwards()).collect());
    let dataset_seconds = median((0..3).map(|_| dataset()).collect());
    let result = result.expect("ran");
    std::fs::remove_dir_all(&dir).unwrap();
    println!(
        "{}",
        serde_json::json!({
            "prompts": prompts,
            "tokens_per_prompt": n_tokens,
            "paths": paths,
            "threads": pathc::parallel::threads(),
            "forward_seconds": forward_seconds,
            "dataset_seconds": dataset_seconds,
            "ratio": dataset_seconds / forward_seconds,
            "max_abs_rest": result.max_abs_rest,
            "metric_mean": result.metric.mean,
        })
    );
}
