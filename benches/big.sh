#!/usr/bin/env bash
# Issue 15 part 3: pathc stats on bigger models, measured in one run (~6 minutes here):
#
#   bash benches/big.sh
#
# Random f32 weights (benches/make_weights.py --attn-only, fixed seed) of two shapes:
#   GPT-2-XL     48 layers x 25 heads, d_model 1600, d_head 64,  d_vocab 50257
#   Pythia-1.4B  24 layers x 16 heads, d_model 2048, d_head 128, d_vocab 50304
# as attention-only models (what `pathc stats` reads of any model of these sizes: W_E, W_U and the
# attention weights; Pythia's rotary QK circuits at offset 0 are these). For each: wall time and
# peak RSS (GNU time) of `pathc stats --format json`, peak RSS over the f32 bytes it reads, and the
# chosen plan's FLOPs (`pathc plan --format json`) per second against this machine's f32 GEMM rate
# (benches/gemm.rs, same run). Weights and models live in a temporary directory removed on exit.
# Not in .ci/run (too slow).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check numpy
py="$tmp/venv/bin/python"

echo "== build (release, benches)"
cargo build --quiet --release
pathc="$repo/target/release/pathc"
echo "== GEMM rate: nalgebra (pathc's kernels)"
cargo bench --quiet --bench gemm | tee "$tmp/gemm.jsonl"

run() {
  local name=$1 layers=$2 d_model=$3 heads=$4 d_head=$5 d_vocab=$6
  echo "== $name: $layers x $heads heads, d_model $d_model, d_head $d_head, d_vocab $d_vocab"
  "$py" benches/make_weights.py "$tmp/$name.safetensors" --attn-only --layers "$layers" --d-model "$d_model" \
    --heads "$heads" --d-head "$d_head" --d-vocab "$d_vocab"
  printf 'model %s\ndim d_model = %s\ndim d_vocab = %s\ndim d_head = %s\nembed\nrepeat %s {\n  layer { attn(heads = %s) }\n}\nunembed\n' \
    "$name" "$d_model" "$d_vocab" "$d_head" "$layers" "$heads" > "$tmp/$name.tf"
  "$pathc" plan "$tmp/$name.tf" --format json > "$tmp/$name.plan.json"
  "$pathc" plan "$tmp/$name.tf" | sed -n '1,4p'
  /usr/bin/time -f "%e %M" -o "$tmp/$name.time" "$pathc" stats "$tmp/$name.tf" --weights "$tmp/$name.safetensors" \
    --format json > "$tmp/$name.stats.json"
  echo "pathc stats: $(cat "$tmp/$name.time") (seconds, peak KiB)"
  rm "$tmp/$name.safetensors"
}
run gpt2_xl 48 1600 25 64 50257
run pythia_1_4b 24 2048 16 128 50304

echo "== summary"
"$py" - "$tmp" <<'PY'
import json, pathlib, sys
tmp = pathlib.Path(sys.argv[1])
gemm = [json.loads(l) for l in (tmp / "gemm.jsonl").read_text().splitlines()]
rate = {g["case"]: g["gflops"] for g in gemm if g["dtype"] == "f32" and g["threads"] > 1}
best = max(rate.values())
for name, (layers, d_model, heads, d_head, d_vocab) in {
        "gpt2_xl": (48, 1600, 25, 64, 50257), "pythia_1_4b": (24, 2048, 16, 128, 50304)}.items():
    seconds, kib = map(float, (tmp / f"{name}.time").read_text().split())
    plan = json.loads((tmp / f"{name}.plan.json").read_text())
    flops = plan["chosen"]["flops"]
    read = 4 * (2 * d_vocab * d_model + layers * heads * 4 * d_model * d_head)
    stats = json.loads((tmp / f"{name}.stats.json").read_text())
    assert stats["precision"] == "f32" and len(stats["comp_q"]) == layers
    print(f"{name}: pathc stats {seconds:.1f} s, peak RSS {kib * 1024 / 1e9:.2f} GB = {kib * 1024 / read:.2f}x the "
          f"{read / 1e9:.2f} GB of f32 weights it reads (target <= 1.2x); the plan's {flops / 1e12:.2f} TFLOP at "
          f"{flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / 1e9 / best * 100:.0f} % of nalgebra's f32 GEMM on "
          f"2 cores ({best:.1f} GFLOP/s, the best of benches/gemm.rs's shapes); the plan's memory estimate "
          f"{plan['chosen']['peak_bytes'] / 1e9:.2f} GB")
PY
