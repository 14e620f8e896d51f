#!/usr/bin/env bash
# Issue 15 in one run (~15 minutes on this machine): every speed figure beside its baseline or
# this machine's limit, measured in the same run, and the ratios against the targets.
#
#   bash benches/speed.sh
#
# 1. Score expansions: `pathc expand examples/gpt2-small.tf --qk --max-order 1 --templates`, then
#    every one of its score terms streamed as JSON; the JSON's peak memory against a run with
#    few terms (--max-order 0), since it must not grow with the number of terms.
# 2. Statistics at GPT-2-small shape (12 x 12 heads, random f32 weights, benches/make_weights.py):
#    `pathc stats` (f32 products, then --precision f64) against a NumPy script doing what
#    TransformerLens's FactoredMatrix does (benches/factored_baseline.py), with their numbers
#    cross-checked; the chosen plan's FLOPs (`pathc plan --format json`) per second against this
#    machine's f32 GEMM rate (benches/gemm.rs: nalgebra's matrixmultiply and the gemm crate, the
#    two kernels pathc's f32 products may run on, a product per core; NumPy's OpenBLAS); peak RSS
#    against the bytes of weights the statistics read.
# 3. Bigger models: the same statistics on GPT-2-XL (48 x 25 heads, d_model 1600) and Pythia-1.4B
#    (24 x 16 heads, d_model 2048, d_head 128, d_vocab 50304) shapes, as attention-only models
#    (what `pathc stats` reads of any model of these sizes: W_E, W_U and the attention weights;
#    Pythia's rotary QK circuits at offset 0 are these).
# Weights and models live in a temporary directory removed on exit. Not in .ci/run (too slow).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
source benches/common.sh

echo "== build (release, benches)"
cargo build --quiet --release
cargo bench --quiet --no-run
pathc="$repo/target/release/pathc"

echo "== GEMM rate: nalgebra (matrixmultiply) and the gemm crate (faer's kernel), pathc's two f32 kernels, and NumPy (OpenBLAS)"
cargo bench --quiet --bench gemm | tee "$tmp/gemm.jsonl"
"$py" - <<'PY' | tee -a "$tmp/gemm.jsonl"
import json, time
import numpy as np
# NumPy's BLAS uses every core by itself: its rate is the machine's, not one thread's.
for (m, k, n), repeat in [((768, 768, 768), 5), ((50257, 768, 768), 2), ((768, 1024, 768), 5)]:
    for dtype in ["float64", "float32"]:
        a = np.random.default_rng(0).standard_normal((m, k)).astype(dtype)
        b = np.random.default_rng(1).standard_normal((k, n)).astype(dtype)
        a @ b
        best = min((lambda s: (a @ b, time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(repeat))
        print(json.dumps({"case": f"{m}x{k}x{n}", "kernel": "numpy", "dtype": dtype.replace("float", "f"), "seconds": best,
                          "gflops": round(2 * m * k * n / best / 1e9, 2)}))
PY

echo "== 1. score expansions, examples/gpt2-small.tf"
peak "$pathc" expand examples/gpt2-small.tf --qk --max-order 1 --templates > "$tmp/templates.txt"
peak_of > "$tmp/templates.time"
peak "$pathc" expand examples/gpt2-small.tf --qk --max-order 1 --format json --limit 8000000 | wc -c > "$tmp/terms.bytes"
peak_of > "$tmp/terms.time"
peak "$pathc" expand examples/gpt2-small.tf --qk --max-order 0 --format json --limit 8000000 | wc -c > "$tmp/terms0.bytes"
peak_of > "$tmp/terms0.time"
"$pathc" count examples/gpt2-small.tf --qk --max-order 1 | grep 'attention-score terms' > "$tmp/count1.txt"
"$pathc" count examples/gpt2-small.tf --qk --max-order 0 | grep 'attention-score terms' > "$tmp/count0.txt"
for f in templates terms terms0; do echo "$f: $(cat "$tmp/$f.time") (seconds, peak KiB)"; done

echo "== 2. statistics, GPT-2-small shape (random f32 weights, fixed seed)"
"$py" benches/make_weights.py "$tmp/gpt2.safetensors" --layers 12
# examples/gpt2-small.tf declares `unembed` without a bias; these weights have a nonzero b_U.
sed 's/^unembed$/unembed(bias)/' examples/gpt2-small.tf > "$tmp/gpt2.tf"
grep -q 'unembed(bias)' "$tmp/gpt2.tf"
"$pathc" plan "$tmp/gpt2.tf" --format json > "$tmp/gpt2.plan.json"
"$pathc" plan "$tmp/gpt2.tf" | sed -n '1,4p'
peak "$pathc" stats "$tmp/gpt2.tf" --weights "$tmp/gpt2.safetensors" --format json > "$tmp/gpt2.stats.json"
peak_of > "$tmp/gpt2.time"
peak "$pathc" stats "$tmp/gpt2.tf" --weights "$tmp/gpt2.safetensors" --format json --precision f64 > "$tmp/gpt2.stats64.json"
peak_of > "$tmp/gpt2.time64"
echo "pathc stats: $(cat "$tmp/gpt2.time"); --precision f64: $(cat "$tmp/gpt2.time64") (seconds, peak KiB)"
echo "== 2. NumPy FactoredMatrix baseline (benches/factored_baseline.py), ~4 minutes"
peak "$py" benches/factored_baseline.py "$tmp/gpt2.safetensors" > "$tmp/baseline.json"
peak_of > "$tmp/baseline.time"
echo "baseline: $(cat "$tmp/baseline.time") (seconds, peak KiB)"
"$py" - "$tmp/gpt2.safetensors" > "$tmp/gpt2.read" <<'PY'
import json, struct, sys
# The bytes `pathc stats` reads: W_E, W_U and the attention weights (not the biases, norms, MLPs).
with open(sys.argv[1], "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
print(sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items()
          if k in ("embed.W_E", "unembed.W_U") or ".attn.W_" in k))
PY
rm "$tmp/gpt2.safetensors"

big() {
  local name=$1 layers=$2 d_model=$3 heads=$4 d_head=$5 d_vocab=$6
  echo "== 3. $name: $layers x $heads heads, d_model $d_model, d_head $d_head, d_vocab $d_vocab"
  "$py" benches/make_weights.py "$tmp/$name.safetensors" --attn-only --layers "$layers" --d-model "$d_model" \
    --heads "$heads" --d-head "$d_head" --d-vocab "$d_vocab"
  printf 'model %s\ndim d_model = %s\ndim d_vocab = %s\ndim d_head = %s\nembed\nrepeat %s {\n  layer { attn(heads = %s) }\n}\nunembed\n' \
    "$name" "$d_model" "$d_vocab" "$d_head" "$layers" "$heads" > "$tmp/$name.tf"
  "$pathc" plan "$tmp/$name.tf" --format json > "$tmp/$name.plan.json"
  peak "$pathc" stats "$tmp/$name.tf" --weights "$tmp/$name.safetensors" --format json > "$tmp/$name.stats.json"
  peak_of > "$tmp/$name.time"
  echo "pathc stats: $(cat "$tmp/$name.time") (seconds, peak KiB)"
  echo $((4 * (2 * d_vocab * d_model + layers * heads * 4 * d_model * d_head))) > "$tmp/$name.read"
  rm "$tmp/$name.safetensors"
}
big gpt2_xl 48 1600 25 64 50257
big pythia_1_4b 24 2048 16 128 50304

echo "== summary"
"$py" - "$tmp" <<'PY'
import json, pathlib, sys
import numpy as np
tmp = pathlib.Path(sys.argv[1])
def timed(name):
    seconds, kib = map(float, (tmp / name).read_text().split())
    return seconds, kib * 1024
def mark(ok):
    return "met" if ok else "NOT met"

lines = [json.loads(line) for line in (tmp / "gemm.jsonl").read_text().splitlines()]
kernel = next(g["pathc_f32_kernel"] for g in lines if "pathc_f32_kernel" in g)
gemm = [g for g in lines if "case" in g]
print(f"pathc's f32 products run on: {kernel}")
for g in gemm:
    print(f"GEMM {g['case']:14s} {g['kernel']:8s} {g['dtype']} {('threads ' + str(g['threads'])) if 'threads' in g else 'all cores':10s} "
          f"{g['gflops']:8.2f} GFLOP/s")
# This machine's f32 GEMM rate: the best of every f32 case using both cores (nalgebra and the gemm
# crate with a product per core, NumPy's own threading), the strictest limit to put pathc's rate
# against.
f32 = [g for g in gemm if g["dtype"] == "f32" and g.get("threads", 2) > 1]
best = max(f32, key=lambda g: g["gflops"])
limit, limit_case = best["gflops"], f"{best['kernel']} {best['case']}"
f64 = max(g["gflops"] for g in gemm if g["dtype"] == "f64" and g.get("threads", 2) > 1)
print(f"machine f32 GEMM rate: {limit:.1f} GFLOP/s ({limit_case}); f64 {f64:.1f}")
print()

# 1. Score expansions.
(t_s, t_b), (j_s, j_b), (j0_s, j0_b) = timed("templates.time"), timed("terms.time"), timed("terms0.time")
c1, c0 = (tmp / "count1.txt").read_text().strip(), (tmp / "count0.txt").read_text().strip()
print(f"1. --qk --max-order 1 --templates: {t_s:.2f} s, peak RSS {t_b / 1e6:.0f} MB (target <= 0.5 s: {mark(t_s <= 0.5)})")
print(f"1. every score term as JSON: {j_s:.2f} s, {int((tmp / 'terms.bytes').read_text()) / 1e9:.2f} GB, peak RSS "
      f"{j_b / 1e6:.0f} MB (target <= 10 s: {mark(j_s <= 10)}); --max-order 0: {j0_s:.2f} s, peak RSS {j0_b / 1e6:.0f} MB: "
      f"memory ratio {j_b / j0_b:.2f} for {c1} against {c0}")

# 2. GPT-2 small statistics.
(s_s, s_b), (s64_s, s64_b), (b_s, b_b) = timed("gpt2.time"), timed("gpt2.time64"), timed("baseline.time")
read = int((tmp / "gpt2.read").read_text())
plan = json.loads((tmp / "gpt2.plan.json").read_text())
flops = plan["chosen"]["flops"]
p, p64 = json.loads((tmp / "gpt2.stats.json").read_text()), json.loads((tmp / "gpt2.stats64.json").read_text())
b = json.loads((tmp / "baseline.json").read_text())
assert p["precision"] == "f32" and p64["precision"] == "f64"
worst = 0.0
for name, (first, second) in [("pathc f64 vs baseline", (p64, b)), ("pathc f32 vs f64", (p, p64))]:
    for key in ["ov_frobenius", "qk_frobenius", "comp_q", "comp_k", "comp_v", "ov_copying", "qk_copying"]:
        x, y = np.array(first[key]), np.array(second[key])
        nz = x != 0
        rel = (np.abs(x - y)[nz] / np.abs(x[nz])).max()
        if name.startswith("pathc f32") and "copying" not in key:
            worst = max(worst, rel)
        print(f"2. cross-check {name} {key:13s} ({nz.sum():5d} entries): max |difference| {np.abs(x - y).max():.2e}, "
              f"max relative {rel:.2e}")
rate = flops / s_s / 1e9
print(f"2. pathc stats {s_s:.2f} s (f64 {s64_s:.2f} s), baseline {b_s:.1f} s: {b_s / s_s:.1f}x (f64 {b_s / s64_s:.1f}x; "
      f"target >= 50x: {mark(b_s / s_s >= 50)})")
print(f"2. the plan's {flops / 1e9:.0f} GFLOP in {s_s:.2f} s (wall, incl. loading) = {rate:.1f} GFLOP/s = "
      f"{rate / limit * 100:.0f} % of the machine's f32 GEMM rate (target >= 70 %: {mark(rate / limit >= 0.7)}); "
      f"f64 {flops / s64_s / 1e9:.1f} GFLOP/s = {flops / s64_s / 1e9 / f64 * 100:.0f} % of its f64 rate")
print(f"2. peak RSS {s_b / 1e6:.0f} MB = {s_b / read:.2f}x the {read / 1e6:.0f} MB of weights read (f64: {s64_b / read:.2f}x; "
      f"target <= 1.2x: {mark(s_b / read <= 1.2)}); baseline peak RSS {b_b / 1e6:.0f} MB")
print(f"2. f32 vs f64: max relative difference {worst:.1e} over norms and composition scores (target <= 1e-5: "
      f"{mark(worst <= 1e-5)})")

# 3. Bigger models.
for name, layers in [("gpt2_xl", 48), ("pythia_1_4b", 24)]:
    seconds, rss = timed(f"{name}.time")
    read = int((tmp / f"{name}.read").read_text())
    plan = json.loads((tmp / f"{name}.plan.json").read_text())
    stats = json.loads((tmp / f"{name}.stats.json").read_text())
    assert stats["precision"] == "f32" and len(stats["comp_q"]) == layers
    flops = plan["chosen"]["flops"]
    print(f"3. {name}: {seconds:.1f} s; peak RSS {rss / 1e9:.2f} GB = {rss / read:.2f}x the {read / 1e9:.2f} GB read "
          f"(target <= 1.2x: {mark(rss / read <= 1.2)}); the plan's {flops / 1e12:.2f} TFLOP at "
          f"{flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / 1e9 / limit * 100:.0f} % of the machine's f32 rate; "
          f"the plan's memory estimate {plan['chosen']['peak_bytes'] / 1e9:.2f} GB")
PY
