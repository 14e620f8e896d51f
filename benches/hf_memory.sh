#!/usr/bin/env bash
# Memory of reading a HuggingFace folder (issue 13): a GPT-2-small-sized random checkpoint
# (transformers' own GPT2LMHeadModel(GPT2Config()), 124M parameters, float32, tied embeddings,
# written by save_pretrained as one model.safetensors of 498 MB) read by
#
#   pathc check  (every tensor converted to f64 once: the forward pass needs all of them), and
#   pathc stats  (attention weights read a layer at a time; W_E and W_U = wte transposed
#                 streamed from the file in blocks, never held),
#
# each command's peak RSS (GNU time) against the bytes of what it needs, and against the same
# command on the same weights as a TransformerLens state_dict (transformer_lens's own
# convert_gpt2_weights, saved with safetensors: what `--weights FILE` read before folders). The
# folder's TransformerLens tensors are views of the HF tensors (c_attn split into Q, K, V by
# strides, W_U a transposed view of wte), so reading the folder should cost what reading the
# converted file costs: nothing is converted twice and the file is never held in memory.
#
#   bash benches/hf_memory.sh                  # builds release
#   PATHC=target/debug/pathc bash benches/hf_memory.sh   # any pathc binary
#
# Needs Python with torch, transformers and transformer_lens (PYTHON=..., default
# /work/fixture-env/venv/bin/python).
# The checkpoint lives in a temporary directory removed on exit. Not in .ci/run (minutes, 0.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py=${PYTHON:-/work/fixture-env/venv/bin/python}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
peak() { /usr/bin/time -f "%e %M" -o "$tmp/time.txt" "$@"; }

if [ -z "${PATHC:-}" ]; then
  echo "== build (release)"
  cargo build --quiet --release
  PATHC="$repo/target/release/pathc"
fi

echo "== checkpoint: GPT2LMHeadModel(GPT2Config()) with HF's random init, save_pretrained"
"$py" - "$tmp/gpt2" <<'PY'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config())
model.save_pretrained(sys.argv[1])
# The same weights as TransformerLens's state_dict, converted by TransformerLens itself.
from safetensors.torch import save_file
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
from types import SimpleNamespace
# (what convert_gpt2_weights reads of TransformerLens's config)
cfg = SimpleNamespace(n_heads=12, d_head=64, n_layers=12, n_ctx=1024)
sd = {k: v.detach().contiguous().clone() for k, v in convert_gpt2_weights(model, cfg).items()}
save_file(sd, sys.argv[1] + "-tl.safetensors")
PY
ls -l "$tmp/gpt2"
file_bytes=$(stat -c %s "$tmp/gpt2/model.safetensors")

"$PATHC" import "$tmp/gpt2" -o "$tmp/gpt2.tf"
head -20 "$tmp/gpt2.tf"

# The bytes each command needs, from the config's sizes (f32 in the file, f64 once converted).
read -r all attn wte <<<"$("$py" - <<'PY'
d, v, n, l, f = 768, 50257, 1024, 12, 3072
per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
all_params = v * d + n * d + l * per_layer + 2 * d      # tied: W_U is wte, no second copy
attn = l * 4 * d * d                                        # W_Q, W_K, W_V, W_O
print(all_params, attn, v * d)
PY
)"
mb() { "$py" -c "print(f'{$1 / 1e6:.0f}')"; }

echo "== pathc check (--max-order 0: every order ≥ 1 is added back by the graded recursion)"
tokens=$(seq -s, 1 16)
for w in "$tmp/gpt2" "$tmp/gpt2-tl.safetensors"; do
  peak "$PATHC" check "$tmp/gpt2.tf" --weights "$w" --tokens "$tokens" --max-order 0 --tol 1e-6 > "$tmp/check.txt"
  echo "check $w: $(cat "$tmp/time.txt") (s, kB)"; tail -2 "$tmp/check.txt"
  cat "$tmp/time.txt" >> "$tmp/check-times.txt"
done
echo "== pathc stats"
for w in "$tmp/gpt2" "$tmp/gpt2-tl.safetensors"; do
  peak "$PATHC" stats "$tmp/gpt2.tf" --weights "$w" --format json > "$tmp/stats-$(basename "$w").json"
  echo "stats $w: $(cat "$tmp/time.txt") (s, kB)"
  cat "$tmp/time.txt" >> "$tmp/stats-times.txt"
done
# The statistics are the same numbers from either source (TransformerLens's conversion and the views).
cmp "$tmp/stats-gpt2.json" "$tmp/stats-gpt2-tl.safetensors.json" && echo "stats: identical JSON from the folder and the converted file"

{ read -r check_s check_kb; read -r tl_check_s tl_check_kb; } < "$tmp/check-times.txt"
{ read -r stats_s stats_kb; read -r tl_stats_s tl_stats_kb; } < "$tmp/stats-times.txt"
ratio() { "$py" -c "print(f'{$1 / ($2):.2f}')"; }
echo
echo "model.safetensors: $(mb "$file_bytes") MB (f32, tied); every parameter as f64: $(mb "$all * 8") MB"
echo "pathc check, folder:         ${check_s} s, peak RSS $((check_kb / 1000)) MB = $(ratio "$check_kb * 1000" "$all * 8") x the parameters in f64"
echo "pathc check, converted file: ${tl_check_s} s, peak RSS $((tl_check_kb / 1000)) MB; folder / file $(ratio "$check_kb" "$tl_check_kb")"
echo "pathc stats, folder:         ${stats_s} s, peak RSS $((stats_kb / 1000)) MB; reads the attention weights" \
     "($(mb "$attn * 4") MB f32, a layer at a time) and W_E/W_U streamed ($(mb "$wte * 4") MB f32, one tensor):" \
     "ratio $(ratio "$stats_kb * 1000" "$attn * 4 + $wte * 4") x the weights read"
echo "pathc stats, converted file: ${tl_stats_s} s, peak RSS $((tl_stats_kb / 1000)) MB; folder / file $(ratio "$stats_kb" "$tl_stats_kb")"
