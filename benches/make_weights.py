"""Random GPT-2-shaped f32 weights for benches/speed.sh and benches/gpt2.sh, written as safetensors.

    python benches/make_weights.py OUT.safetensors --layers 12 [--seed 0]
    python benches/make_weights.py OUT.safetensors --layers 48 --d-model 1600 --heads 25 \
        --d-head 64 --d-vocab 50257 --attn-only

`--attn-only` writes only what an attention-only model (`embed`, `layer { attn(heads = H) }`,
`unembed`) reads: `embed.W_E`, each layer's `W_Q`, `W_K`, `W_V`, `W_O`, and `unembed.W_U` — what
`pathc stats` reads of any model of those sizes.

TransformerLens's names and shapes (as src/eval/params.rs reads them): `embed.W_E` [d_vocab, d_model],
`pos_embed.W_pos` [n_ctx, d_model], per layer `blocks.{l}.attn.W_Q|W_K|W_V` [n_heads, d_model, d_head],
`W_O` [n_heads, d_head, d_model], `b_Q|b_K|b_V` [n_heads, d_head], `b_O` [d_model], `ln1|ln2.w|b`
[d_model], `mlp.W_in` [d_model, d_mlp], `b_in`, `W_out` [d_mlp, d_model], `b_out`, then `ln_final.w|b`,
`unembed.W_U` [d_model, d_vocab], `unembed.b_U` [d_vocab]. GPT-2 small's sizes; only the layer count
varies (12 for the statistics, 2 for the paths).

Values: weight matrices N(0, 0.02²), TransformerLens's `init_weights_gpt2` with GPT-2's
`initializer_range` 0.02. TransformerLens initialises biases to 0 and LayerNorm weights to 1; here
biases and LayerNorm parameters get small noise (N(0, 0.02²), around 1 for LayerNorm weights) so
that every declared bias and LayerNorm takes part in the computation instead of being a no-op. A
fixed seed: every run writes the same bytes.

The safetensors format is written here (no `safetensors` package): an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
Tensors are generated and written one at a time, so the script holds one tensor at a time.
"""

import argparse
import json
import struct

import numpy as np

D_MODEL, D_VOCAB, N_CTX, D_HEAD, N_HEADS, D_MLP = 768, 50257, 1024, 64, 12, 3072
INIT_STD = 0.02


def attn_only_shapes(n_layers, d_model, d_vocab, n_heads, d_head):
    """The tensors of an attention-only model without biases, in file order."""
    out = [("embed.W_E", (d_vocab, d_model), "weight")]
    for l in range(n_layers):
        p = f"blocks.{l}.attn."
        out += [(p + w, (n_heads, d_model, d_head), "weight") for w in ("W_Q", "W_K", "W_V")]
        out += [(p + "W_O", (n_heads, d_head, d_model), "weight")]
    return out + [("unembed.W_U", (d_model, d_vocab), "weight")]


def shapes(n_layers):
    """(name, shape, kind) in file order; kind is 'weight', 'bias' or 'ln_w'."""
    out = [("embed.W_E", (D_VOCAB, D_MODEL), "weight"), ("pos_embed.W_pos", (N_CTX, D_MODEL), "weight")]
    for l in range(n_layers):
        p = f"blocks.{l}."
        out += [
            (p + "ln1.w", (D_MODEL,), "ln_w"),
            (p + "ln1.b", (D_MODEL,), "bias"),
            (p + "attn.W_Q", (N_HEADS, D_MODEL, D_HEAD), "weight"),
            (p + "attn.W_K", (N_HEADS, D_MODEL, D_HEAD), "weight"),
            (p + "attn.W_V", (N_HEADS, D_MODEL, D_HEAD), "weight"),
            (p + "attn.W_O", (N_HEADS, D_HEAD, D_MODEL), "weight"),
            (p + "attn.b_Q", (N_HEADS, D_HEAD), "bias"),
            (p + "attn.b_K", (N_HEADS, D_HEAD), "bias"),
            (p + "attn.b_V", (N_HEADS, D_HEAD), "bias"),
            (p + "attn.b_O", (D_MODEL,), "bias"),
            (p + "ln2.w", (D_MODEL,), "ln_w"),
            (p + "ln2.b", (D_MODEL,), "bias"),
            (p + "mlp.W_in", (D_MODEL, D_MLP), "weight"),
            (p + "mlp.b_in", (D_MLP,), "bias"),
            (p + "mlp.W_out", (D_MLP, D_MODEL), "weight"),
            (p + "mlp.b_out", (D_MODEL,), "bias"),
        ]
    out += [
        ("ln_final.w", (D_MODEL,), "ln_w"),
        ("ln_final.b", (D_MODEL,), "bias"),
        ("unembed.W_U", (D_MODEL, D_VOCAB), "weight"),
        ("unembed.b_U", (D_VOCAB,), "bias"),
    ]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn-only", action="store_true")
    ap.add_argument("--d-model", type=int, default=D_MODEL)
    ap.add_argument("--d-vocab", type=int, default=D_VOCAB)
    ap.add_argument("--heads", type=int, default=N_HEADS)
    ap.add_argument("--d-head", type=int, default=D_HEAD)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    if args.attn_only:
        tensors = attn_only_shapes(args.layers, args.d_model, args.d_vocab, args.heads, args.d_head)
    else:
        assert (args.d_model, args.d_vocab, args.heads, args.d_head) == (D_MODEL, D_VOCAB, N_HEADS, D_HEAD), \
            "other sizes only with --attn-only"
        tensors = shapes(args.layers)
    header, offset = {}, 0
    for name, shape, _ in tensors:
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # The data start is conventionally 8-byte aligned: pad the header with spaces.
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(args.out, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, shape, kind in tensors:
            x = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
            if kind == "ln_w":
                x += np.float32(1.0)
            f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
    print(json.dumps({"file": args.out, "layers": args.layers, "bytes": 8 + len(header_bytes) + offset}))


if __name__ == "__main__":
    main()
