#!/usr/bin/env bash
# Runs pathc's expansion benchmarks and the sympy baseline in one go and prints the ratios.
#
#   bash benches/run.sh            # full run (criterion + sympy + peak memory), ~3 minutes
#
# sympy is installed into a throwaway virtual environment (removed afterwards); nothing is
# installed on the machine. Figures go to standard output; the README quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check sympy

echo "== sympy baseline: 4 layers x 12 heads, noncommutative symbols =="
sympy_json=$("$venv/bin/python" benches/sympy_baseline.py --layers 4 --heads 12 --repeat 3)
echo "$sympy_json"

echo "== pathc (criterion) =="
cargo bench --quiet --bench expand -- --noplot 2>&1 | grep -E "^expand/|time:" || true

cargo build --quiet --release
echo "== pathc CLI: wall time and peak memory (GNU time), output to /dev/null =="
peak() { /usr/bin/time -f "%e s  %M KiB" "$@" 2>&1 >/dev/null | tail -1; }
for k in 1 2 3; do
  echo "attn-only-12l --max-order $k --format json: $(peak ./target/release/pathc expand examples/attn-only-12l.tf --max-order "$k" --format json)"
done
echo "gpt2-small --max-order 2 --format json: $(peak ./target/release/pathc expand examples/gpt2-small.tf --max-order 2 --format json)"
echo "attn-only-4l --format text:              $(peak ./target/release/pathc expand examples/attn-only-4l.tf)"
# Attention scores' expansions (issue 15's targets): benches/speed.sh.

python3 - "$sympy_json" <<'PY'
import json, pathlib, sys
sympy = json.loads(sys.argv[1])["seconds"]
print("== ratios against sympy, same run ==")
for name in ["attn-only-4l/symbolic", "attn-only-4l/paths", "attn-only-4l/text"]:
    est = pathlib.Path("target/criterion/expand") / name.replace("/", "_") / "new" / "estimates.json"
    seconds = json.loads(est.read_text())["median"]["point_estimate"] / 1e9
    print(f"{name:28s} {seconds * 1e3:8.3f} ms   sympy / pathc = {sympy / seconds:8.0f}x")
est = pathlib.Path("target/criterion/expand/attn-only-12l_order-3_json/new/estimates.json")
seconds = json.loads(est.read_text())["median"]["point_estimate"] / 1e9
print(f"{'attn-only-12l/order-3/json':28s} {seconds * 1e3:8.3f} ms   (target: <= 1000 ms)")
PY
