#!/usr/bin/env bash
# Issue 5 at GPT-2 scale, measured in one run (~10 minutes on this machine):
#
#   bash benches/gpt2.sh
#
# (a) `pathc stats` on GPT-2-small-shaped random f32 weights (144 heads) against a NumPy script
#     doing what TransformerLens's FactoredMatrix does (benches/factored_baseline.py), with wall
#     time, peak RSS, and a cross-check of their numbers;
# (b) `pathc paths` (every path up to order 2) on a 2-layer, 12-head model of GPT-2 width against
#     one forward pass (benches/forward.rs): each path's contribution to the next token's logit at
#     every position (`--target next`), and the whole logit rows;
# and this machine's matrix-product rate (benches/gemm.rs, and NumPy's) to put pathc's GFLOP/s
# against. Weights, model files and NumPy live in a temporary directory removed on exit: nothing
# is installed on the machine and nothing generated is committed. Not in .ci/run (too slow).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check numpy
py="$tmp/venv/bin/python"
# GNU time: wall seconds and peak resident set size of the command, into a file (-o) so the
# command's own output and exit status pass through untouched.
peak() { /usr/bin/time -f "%e %M" -o "$tmp/time.txt" "$@"; }
peak_of() { cat "$tmp/time.txt"; }

echo "== build (release, benches)"
cargo build --quiet --release
cargo bench --quiet --no-run
pathc="$repo/target/release/pathc"

echo "== weights (random f32, fixed seed; TransformerLens names and shapes)"
"$py" benches/make_weights.py "$tmp/gpt2.safetensors" --layers 12
"$py" benches/make_weights.py "$tmp/gpt2-2l.safetensors" --layers 2
# examples/gpt2-small.tf declares `unembed` without a bias; these weights have a nonzero b_U.
sed 's/^unembed$/unembed(bias)/' examples/gpt2-small.tf > "$tmp/gpt2.tf"
sed 's/^unembed$/unembed(bias)/; s/^repeat 12 {/repeat 2 {/; s/^model gpt2_small$/model gpt2_2l/' \
  examples/gpt2-small.tf > "$tmp/gpt2-2l.tf"
grep -q 'repeat 2 {' "$tmp/gpt2-2l.tf" && grep -q 'unembed(bias)' "$tmp/gpt2.tf"

echo "== GEMM rate: nalgebra (pathc's kernels) and NumPy (OpenBLAS), same shapes"
cargo bench --quiet --bench gemm | tee "$tmp/gemm.jsonl"
"$py" - <<'PY' | tee -a "$tmp/gemm.jsonl"
import json, time
import numpy as np
# NumPy's BLAS uses every core by itself: its rate is the machine's, not one thread's.
for (m, k, n), repeat in [((768, 768, 768), 5), ((50257, 768, 768), 2)]:
    for dtype in ["float64", "float32"]:
        a = np.random.default_rng(0).standard_normal((m, k)).astype(dtype)
        b = np.random.default_rng(1).standard_normal((k, n)).astype(dtype)
        a @ b
        best = min((lambda s: (a @ b, time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(repeat))
        print(json.dumps({"case": f"numpy {m}x{k}x{n}", "dtype": dtype.replace("float", "f"), "seconds": best,
                          "gflops": round(2 * m * k * n / best / 1e9, 2)}))
PY

echo "== (a) pathc stats, 12 layers x 12 heads: f32 products (the default), then --precision f64"
peak "$pathc" stats "$tmp/gpt2.tf" --weights "$tmp/gpt2.safetensors" --format json > "$tmp/stats.json"
read -r stats_s stats_kib <<< "$(peak_of)"
echo "pathc stats: $stats_s s, peak RSS $stats_kib KiB"
peak "$pathc" stats "$tmp/gpt2.tf" --weights "$tmp/gpt2.safetensors" --format json --precision f64 > "$tmp/stats64.json"
read -r stats64_s stats64_kib <<< "$(peak_of)"
echo "pathc stats --precision f64: $stats64_s s, peak RSS $stats64_kib KiB"

"$pathc" plan "$tmp/gpt2.tf" --format json > "$tmp/plan.json"
"$pathc" plan "$tmp/gpt2.tf" | sed -n '1,4p'

echo "== (a) NumPy FactoredMatrix baseline (benches/factored_baseline.py), ~4 minutes"
peak "$py" benches/factored_baseline.py "$tmp/gpt2.safetensors" > "$tmp/baseline.json"
read -r base_s base_kib <<< "$(peak_of)"
echo "baseline: $base_s s, peak RSS $base_kib KiB"

echo "== (b) forward pass and path evaluation in-process (benches/forward.rs), 128 tokens"
PATHC_BENCH_MODEL="$tmp/gpt2-2l.tf" PATHC_BENCH_WEIGHTS="$tmp/gpt2-2l.safetensors" PATHC_BENCH_TOKENS=128 \
  cargo bench --quiet --bench forward | tee "$tmp/forward.json"

# The CLI on the same tokens as benches/forward.rs: (7919 i + 13) mod d_vocab.
tokens() { python3 -c "import sys; print(','.join(str((7919 * i + 13) % 50257) for i in range(int(sys.argv[1]))))" "$1"; }
echo "== (b) pathc paths --max-order 2 --pos last, 128 tokens (every path's logit row at one position)"
peak "$pathc" paths "$tmp/gpt2-2l.tf" --weights "$tmp/gpt2-2l.safetensors" --tokens "$(tokens 128)" \
  --max-order 2 --pos last --format json > /dev/null
read -r last_s last_kib <<< "$(peak_of)"
echo "paths --pos last: $last_s s, peak RSS $last_kib KiB"
echo "== (b) pathc paths --max-order 2 --pos all --target next, 128 tokens (direct logit attribution to the next token)"
peak "$pathc" paths "$tmp/gpt2-2l.tf" --weights "$tmp/gpt2-2l.safetensors" --tokens "$(tokens 128)" \
  --max-order 2 --pos all --target next --format json > "$tmp/target.json"
read -r target_s target_kib <<< "$(peak_of)"
echo "paths --pos all --target next: $target_s s, peak RSS $target_kib KiB, $(wc -c < "$tmp/target.json") bytes of JSON"
# --pos all holds every path's [n, d_vocab] f64 logits and builds the whole JSON document in memory
# (src/emit/numbers.rs: path_table, then write_paths_json's serde_json::Value): at 128 tokens that is
# 549 x 128 x 50257 x 8 B = 28 GB before the JSON values, more than this 24 GiB machine. So it runs
# at 2 tokens here, and the summary scales its memory to 128.
echo "== (b) pathc paths --max-order 2 --pos all, 2 tokens (128 would not fit in memory; see the script)"
peak "$pathc" paths "$tmp/gpt2-2l.tf" --weights "$tmp/gpt2-2l.safetensors" --tokens "$(tokens 2)" \
  --max-order 2 --pos all --format json | wc -c > "$tmp/all_bytes.txt"
read -r all_s all_kib <<< "$(peak_of)"
echo "paths --pos all (2 tokens): $all_s s, peak RSS $all_kib KiB, $(cat "$tmp/all_bytes.txt") bytes of JSON"

echo "== summary"
"$py" - "$tmp" "$stats_s" "$stats_kib" "$base_s" "$base_kib" "$last_s" "$last_kib" "$all_s" "$all_kib" \
  "$target_s" "$target_kib" "$stats64_s" "$stats64_kib" <<'PY'
import json, pathlib, struct, sys
import numpy as np
tmp = pathlib.Path(sys.argv[1])
(stats_s, stats_kib, base_s, base_kib, last_s, last_kib, all_s, all_kib, target_s, target_kib, stats64_s,
 stats64_kib) = map(float, sys.argv[2:])

def tensor_bytes(path, keep=lambda name: True):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if keep(k))

w = tmp / "gpt2.safetensors"
needed = tensor_bytes(w, lambda k: k in ("embed.W_E", "unembed.W_U") or ".attn.W_" in k)
print(f"weights: file {w.stat().st_size / 1e6:.1f} MB; W_E, W_U and attention weights (what stats needs) "
      f"{needed / 1e6:.1f} MB f32")

# Cross-checks: pathc's f32 and f64 products against the f32 baseline and each other. Relative
# difference for norms and composition scores (entries pathc gives as nonzero); absolute for the
# copying scores, which sit near 0 on random weights, where a relative difference says nothing.
p, p64 = json.loads((tmp / "stats.json").read_text()), json.loads((tmp / "stats64.json").read_text())
b = json.loads((tmp / "baseline.json").read_text())
assert p["precision"] == "f32" and p64["precision"] == "f64"
for name, (first, second) in [("pathc f64 vs baseline", (p64, b)), ("pathc f32 vs f64", (p, p64))]:
    for key in ["ov_frobenius", "qk_frobenius", "comp_q", "comp_k", "comp_v", "ov_copying", "qk_copying"]:
        x, y = np.array(first[key]), np.array(second[key])
        nz = x != 0
        rel = (np.abs(x - y)[nz] / np.abs(x[nz])).max()
        print(f"cross-check {name} {key:13s} ({nz.sum():5d} entries): max |difference| {np.abs(x - y).max():.2e}, "
              f"max relative {rel:.2e}")

gemm = [json.loads(line) for line in (tmp / "gemm.jsonl").read_text().splitlines()]
def rate(case, dtype, threads=None):
    return next(g["gflops"] for g in gemm if g["case"] == case and g["dtype"] == dtype and g.get("threads") == threads)
nal64 = rate("50257x768x768", "f64", 2)
nal32 = rate("50257x768x768", "f32", 2)
numpy32 = rate("numpy 50257x768x768", "f32")
for g in gemm:
    print(f"GEMM {g['case']:22s} {g['dtype']} {('threads ' + str(g['threads'])) if 'threads' in g else 'all cores':10s} "
          f"{g['gflops']:8.2f} GFLOP/s")

# FLOPs of pathc stats' products: the chosen plan's own count (`pathc plan --format json`, a
# multiply-add counting 2; eigenvalue computations estimated at 10 n^3).
plan = json.loads((tmp / "plan.json").read_text())
flops = plan["chosen"]["flops"]
V = plan["d_vocab"]
streamed = sum(s["flops"] for s in plan["chosen"]["steps"] if s["streamed"])
f = json.loads((tmp / "forward.json").read_text())
print()
print(f"(a) pathc stats (f32 products) {stats_s:.2f} s, --precision f64 {stats64_s:.2f} s, baseline {base_s:.2f} s: "
      f"baseline / pathc = {base_s / stats_s:.1f}x f32, {base_s / stats64_s:.1f}x f64 (target >= 50x)")
print(f"(a) pathc stats peak RSS {stats_kib * 1024 / 1e6:.0f} MB = {stats_kib * 1024 / needed:.2f}x the weights it needs "
      f"(f64: {stats64_kib * 1024 / needed:.2f}x; target <= 1.2x); baseline peak RSS {base_kib * 1024 / 1e6:.0f} MB")
print(f"(a) pathc stats: the chosen plan's {flops / 1e9:.0f} GFLOP ({streamed / 1e9:.0f} in the three products over the "
      f"vocabulary, Grams at half; the naive plan's {plan['naive']['flops'] / 1e12:.0f} TFLOP) in {stats_s:.2f} s (wall, "
      f"incl. loading) = {flops / stats_s / 1e9:.1f} GFLOP/s = {flops / stats_s / 1e9 / nal32 * 100:.0f} % of nalgebra f32 "
      f"on 2 cores ({nal32:.1f} GFLOP/s), {flops / stats_s / 1e9 / numpy32 * 100:.0f} % of NumPy f32 ({numpy32:.1f}; "
      f"target >= 70 %); f64: {flops / stats64_s / 1e9:.1f} GFLOP/s = {flops / stats64_s / 1e9 / nal64 * 100:.0f} % of "
      f"nalgebra f64 ({nal64:.1f}); the plan's peak-memory estimate {plan['chosen']['peak_bytes'] / 1e6:.0f} MB")
print(f"(b) forward pass (128 tokens, f64, in-process): {f['forward_seconds']:.3f} s; one [128,768]x[768,50257] "
      f"product {f['unembed_seconds']:.3f} s; load {f['load_seconds']:.2f} s")
print(f"(b) {f['paths']} paths, contribution to the next token's logit at {f['target_positions']} positions "
      f"(eval::target_logits, no output): {f['target_paths_seconds']:.3f} s = {f['target_paths_over_forward']:.2f}x "
      f"the forward pass (target <= 3x); max |sum of paths - forward logit| {f['target_max_abs_error']}")
print(f"(b) {f['paths']} paths, whole logit rows at all 128 positions, no output (estimated from every 16th path): "
      f"{f['paths_seconds_estimated']:.1f} s = {f['paths_over_forward_estimated']:.0f}x the forward pass")
t = json.loads((tmp / "target.json").read_text())
assert len(t["paths"]) == f["paths"] and t["positions"] == list(range(127))
sums = np.array([p["target_logits"] for p in t["paths"]]).sum(axis=0)
print(f"(b) CLI paths --pos all --target next, 128 tokens (incl. loading, JSON {(tmp / 'target.json').stat().st_size / 1e6:.1f} MB): "
      f"{target_s:.2f} s, peak RSS {target_kib * 1024 / 1e6:.0f} MB; max |sum of paths - forward logit| "
      f"{np.abs(sums - np.array(t['forward_target_logits'])).max():.1e}")
print(f"(b) CLI paths --pos last, 128 tokens: {last_s:.2f} s = {last_s / f['forward_seconds']:.0f}x the forward pass, "
      f"peak RSS {last_kib * 1024 / 1e6:.0f} MB")
all_bytes = int((tmp / "all_bytes.txt").read_text())
print(f"(b) CLI paths --pos all, 2 tokens: {all_s:.2f} s, peak RSS {all_kib * 1024 / 1e6:.0f} MB, "
      f"{all_bytes / 1e9:.2f} GB of JSON; at 128 tokens the logits alone are {f['paths'] * 128 * V * 8 / 1e9:.0f} GB "
      f"(f64) and the JSON ~{all_bytes * 64 / 1e9:.0f} GB: not runnable here")
PY
