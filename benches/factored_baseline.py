"""The baseline for `pathc stats` in benches/speed.sh: what TransformerLens does, in NumPy.

    python benches/factored_baseline.py WEIGHTS.safetensors [--heads-only N] > baseline.json

TransformerLens computes these statistics with `FactoredMatrix` (transformer_lens/FactoredMatrix.py)
and `utils.composition_scores`; this script mirrors that math step by step in NumPy, in the
weights' own dtype (f32, as TransformerLens runs an f32 model), so the timing is of the same
algorithm without torch (not installable in a small throwaway environment):

- full OV circuit of head h: `W_E @ OV[h] @ W_U` with `OV = FactoredMatrix(W_V, W_O)` is
  `FactoredMatrix(A = W_E @ W_V[h], B = W_O[h] @ W_U)` (vocab x 64 and 64 x vocab, by
  `__rmatmul__`/`__matmul__`: ldim, rdim > mdim). Full QK: `A = W_E @ W_Q[h]`,
  `B = W_K[h].T @ W_E.T`.
- `.eigenvalues` is `eig(B @ A)` (64 x 64); the copying score is sum(Re l) / sum(|l|).
- `.norm()` is `sqrt(sum(S**2))` with `S` from `FactoredMatrix.svd()`: SVD of A, SVD of B, SVD of
  the 64 x 64 `middle = Sa[:, None] * Vha.T @ Ub * Sb[None, :]`.
- `all_composition_scores(mode)`: left = `OV` (W_V, W_O), right = `QK` (W_Q, W_K.T) for Q,
  `QK.T` (W_K, W_Q.T) for K, `OV` for V, every (left head, right head) pair broadcast as
  TransformerLens does (then masked to layer_left < layer_right);
  `composition_scores(left, right) = ||left.collapse_l() @ right.collapse_r()|| / ||left|| / ||right||`
  with `collapse_l = S[:, None] * Vh.T` and `collapse_r = U * S[None, :]` from `.svd()`.

Prints JSON with the same keys and layout as `pathc stats --format json` (`[layer][head]`,
`[layer_left][head_left][layer_right][head_right]`) plus `seconds` (compute only, after loading).
"""

import argparse
import json
import struct
import sys
import time

import numpy as np


def load(path, names):
    """The named tensors of a safetensors file (header parsed here; no safetensors package)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        out = {}
        for name in names:
            entry = header[name]
            assert entry["dtype"] == "F32", entry
            start, end = entry["data_offsets"]
            f.seek(8 + n + start)
            out[name] = np.frombuffer(f.read(end - start), dtype="<f4").reshape(entry["shape"])
    n_layers = sum(1 for k in header if k.endswith(".attn.W_Q"))
    return out, n_layers


def svd(a, b):
    """`FactoredMatrix(a, b).svd()` (batched over leading dimensions like torch.svd)."""
    ua, sa, vha_t = np.linalg.svd(a, full_matrices=False)  # numpy gives Vh transposed vs torch
    ub, sb, vhb_t = np.linalg.svd(b, full_matrices=False)
    middle = sa[..., :, None] * vha_t @ ub * sb[..., None, :]
    um, sm, vhm_t = np.linalg.svd(middle, full_matrices=False)
    u = ua @ um
    vh = np.swapaxes(vhb_t, -1, -2) @ np.swapaxes(vhm_t, -1, -2)  # torch's Vh: rdim x mdim
    return u, sm, vh


def norm(a, b):
    return np.sqrt((svd(a, b)[1].astype(np.float64) ** 2).sum(-1))


def copying(a, b):
    eig = np.linalg.eigvals(b @ a)
    abs_sum = np.abs(eig).sum()
    return float(eig.real.sum() / abs_sum) if abs_sum != 0 else 0.0


def composition(left, right, n_layers, n_heads):
    """`all_composition_scores` for factor pairs left = (A, B) and right = (A, B), [L*H, ...] each."""
    u_l, s_l, vh_l = svd(*left)
    u_r, s_r, vh_r = svd(*right)
    collapse_l = s_l[..., :, None] * np.swapaxes(vh_l, -1, -2)  # [LH, 64, d_model]
    collapse_r = u_r * s_r[..., None, :]  # [LH, d_model, 64]
    n_left = np.sqrt((s_l.astype(np.float64) ** 2).sum(-1))
    n_right = np.sqrt((s_r.astype(np.float64) ** 2).sum(-1))
    lh = n_layers * n_heads
    scores = np.zeros((lh, lh))
    # TransformerLens broadcasts all [L, H] x [L, H] pairs in one product; one left head at a time
    # here (the same products, 144 x smaller temporaries).
    for i in range(lh):
        prod = collapse_l[i][None] @ collapse_r  # [LH, 64, 64]
        scores[i] = np.sqrt((prod.astype(np.float64) ** 2).sum((-2, -1))) / n_right / n_left[i]
    scores = scores.reshape(n_layers, n_heads, n_layers, n_heads)
    mask = np.arange(n_layers)[:, None, None, None] < np.arange(n_layers)[None, None, :, None]
    return np.where(mask, scores, 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    args = ap.parse_args()

    with open(args.weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        n_layers = sum(1 for k in json.loads(f.read(n)) if k.endswith(".attn.W_Q"))
    names = ["embed.W_E", "unembed.W_U"] + [
        f"blocks.{l}.attn.{w}" for l in range(n_layers) for w in ["W_Q", "W_K", "W_V", "W_O"]
    ]
    t, n_layers = load(args.weights, names)
    start = time.perf_counter()
    w_e, w_u = t["embed.W_E"], t["unembed.W_U"]
    w_e_t = np.ascontiguousarray(w_e.T)
    stack = {w: np.stack([t[f"blocks.{l}.attn.{w}"] for l in range(n_layers)]) for w in ["W_Q", "W_K", "W_V", "W_O"]}
    n_heads = stack["W_Q"].shape[1]
    out = {k: [[0.0] * n_heads for _ in range(n_layers)] for k in ["ov_copying", "qk_copying", "ov_frobenius", "qk_frobenius"]}
    for l in range(n_layers):
        for h in range(n_heads):
            w_q, w_k, w_v, w_o = (stack[w][l, h] for w in ["W_Q", "W_K", "W_V", "W_O"])
            ov = (w_e @ w_v, w_o @ w_u)  # W_E @ OV @ W_U
            qk = (w_e @ w_q, w_k.T @ w_e_t)  # W_E @ QK @ W_E.T
            out["ov_copying"][l][h] = copying(*ov)
            out["qk_copying"][l][h] = copying(*qk)
            out["ov_frobenius"][l][h] = float(norm(*ov))
            out["qk_frobenius"][l][h] = float(norm(*qk))
    flat = {w: stack[w].reshape((-1,) + stack[w].shape[2:]) for w in stack}
    left = (flat["W_V"], flat["W_O"])
    rights = {
        "comp_q": (flat["W_Q"], np.swapaxes(flat["W_K"], -1, -2)),
        "comp_k": (flat["W_K"], np.swapaxes(flat["W_Q"], -1, -2)),
        "comp_v": (flat["W_V"], flat["W_O"]),
    }
    for key, right in rights.items():
        out[key] = composition(left, right, n_layers, n_heads).tolist()
    out["seconds"] = time.perf_counter() - start
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
