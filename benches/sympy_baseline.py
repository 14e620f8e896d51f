"""Baseline for `benches/expand.rs`: the 4-layer × 12-head attention-only product expanded by
sympy with noncommutative symbols, the way one would do it by hand in a notebook.

    T = W_U · Π_{l=3..0} (1 + Σ_h A^{l,h} W_OV^{l,h}) · W_E

(the paper's product with the tensor product written as juxtaposition of noncommuting symbols;
sympy's own TensorProduct fails to expand the 4-layer product, raising inside Mul.flatten).
Expanding gives 13^4 = 28,561 terms (paths). Prints the number of terms and the best wall time
of --repeat runs, as JSON on one line.
"""
import argparse
import json
import time

import sympy


def expand(n_layers: int, n_heads: int):
    w_u, w_e = sympy.symbols("W_U W_E", commutative=False)
    product = w_u
    for layer in reversed(range(n_layers)):
        patterns = sympy.symbols(f"A_{layer}_0:{n_heads}", commutative=False)
        ov = sympy.symbols(f"W_OV_{layer}_0:{n_heads}", commutative=False)
        product = product * (1 + sum(a * w for a, w in zip(patterns, ov)))
    return sympy.expand(product * w_e)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best = float("inf")
    terms = None
    for _ in range(args.repeat):
        # sympy memoises expand(): without this the repeats would time a cache lookup.
        sympy.core.cache.clear_cache()
        start = time.perf_counter()
        expanded = expand(args.layers, args.heads)
        terms = len(expanded.args)
        best = min(best, time.perf_counter() - start)
    expected = (1 + args.heads) ** args.layers
    assert terms == expected, (terms, expected)
    print(json.dumps({"sympy": sympy.__version__, "layers": args.layers, "heads": args.heads, "terms": terms, "seconds": best}))


if __name__ == "__main__":
    main()
