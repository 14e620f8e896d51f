//! Expansion speed (criterion). `benches/run.sh` runs this next to the sympy baseline and prints
//! the ratios; the figures are in the README.
//!
//! Three depths of the same job, so the ratio against sympy is honest about what is compared:
//! `symbolic` parses, builds the term graph, saturates the e-graphs and extracts the templates
//! with exact counts; `paths` also enumerates every concrete path and builds its name (what
//! sympy's expanded expression holds: every term); `text`/`json` also writes every path in the
//! output format (to a sink, so the disk is not measured).

use std::io;

use criterion::{criterion_group, criterion_main, Criterion};
use pathc::{emit, paths, ExpandOptions};

fn expand(source: &str, max_order: Option<u32>) -> pathc::Expansion {
    let options = ExpandOptions { max_order, ..ExpandOptions::default() };
    pathc::expand(source, &options).expect("expands")
}

fn every_path_name(e: &pathc::Expansion) -> usize {
    let mut name = String::new();
    let mut bytes = 0;
    paths::for_each_path(&e.logits, &e.heads_per_layer(), None, |p| {
        name.clear();
        p.write_name(&mut name);
        bytes += name.len();
    });
    bytes
}

fn benches(c: &mut Criterion) {
    let four = std::fs::read_to_string("examples/attn-only-4l.tf").expect("example");
    let twelve = std::fs::read_to_string("examples/attn-only-12l.tf").expect("example");
    let gpt2 = std::fs::read_to_string("examples/gpt2-small.tf").expect("example");
    let mut group = c.benchmark_group("expand");
    group.sample_size(30);
    // 4 layers × 12 heads, token source: 28,561 paths, the sympy baseline's product.
    group.bench_function("attn-only-4l/symbolic", |b| b.iter(|| expand(&four, None).logits.len()));
    group.bench_function("attn-only-4l/paths", |b| b.iter(|| every_path_name(&expand(&four, None))));
    group.bench_function("attn-only-4l/text", |b| {
        b.iter(|| emit::text::write(&expand(&four, None), false, &mut io::sink()).expect("sink"))
    });
    // 12 × 12 with positional embedding, order ≤ 3: 389,809 paths per source, 779,618 in all.
    group.sample_size(10);
    group.bench_function("attn-only-12l/order-3/json", |b| {
        b.iter(|| emit::json::write(&expand(&twelve, Some(3)), &mut io::sink()).expect("sink"))
    });
    // GPT-2 small (MLPs, LayerNorms, biases), order ≤ 2: 572,181 logit paths and MLP-input terms.
    group.bench_function("gpt2-small/order-2/json", |b| {
        b.iter(|| emit::json::write(&expand(&gpt2, Some(2)), &mut io::sink()).expect("sink"))
    });
    group.finish();
}

criterion_group!(expand_benches, benches);
criterion_main!(expand_benches);
