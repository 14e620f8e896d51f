#!/usr/bin/env bash
# Issue 5's path evaluation at GPT-2 scale, measured in one run (~2 minutes on this machine):
#
#   bash benches/gpt2.sh
#
# `pathc paths` (every path up to order 2) on a 2-layer, 12-head model of GPT-2 width against one
# forward pass (benches/forward.rs): each path's contribution to the next token's logit at every
# position (`--target next`), and the whole logit rows. (The statistics at GPT-2 scale, against
# the NumPy FactoredMatrix baseline and this machine's GEMM rate: benches/speed.sh.) Weights, model
# files and NumPy live in a temporary directory removed on exit: nothing is installed on the
# machine and nothing generated is committed. Not in .ci/run (too slow).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

source benches/common.sh

echo "== build (release, benches)"
cargo build --quiet --release
cargo bench --quiet --no-run
pathc="$repo/target/release/pathc"

echo "== weights (random f32, fixed seed; TransformerLens names and shapes)"
"$py" benches/make_weights.py "$tmp/gpt2-2l.safetensors" --layers 2
# examples/gpt2-small.tf declares `unembed` without a bias; these weights have a nonzero b_U.
sed 's/^unembed$/unembed(bias)/; s/^repeat 12 {/repeat 2 {/; s/^model gpt2_small$/model gpt2_2l/' \
  examples/gpt2-small.tf > "$tmp/gpt2-2l.tf"
grep -q 'repeat 2 {' "$tmp/gpt2-2l.tf" && grep -q 'unembed(bias)' "$tmp/gpt2-2l.tf"

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
"$py" - "$tmp" "$last_s" "$last_kib" "$all_s" "$all_kib" "$target_s" "$target_kib" <<'PY'
import json, pathlib, sys
import numpy as np
tmp = pathlib.Path(sys.argv[1])
last_s, last_kib, all_s, all_kib, target_s, target_kib = map(float, sys.argv[2:])
V = 50257
f = json.loads((tmp / "forward.json").read_text())
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
