# TransformerLens's `attn-only-3l` (NeelNanda/Attn_Only_3L512W_C4_Code): 3 attention-only
# layer(s) of 8 heads × 64, LayerNorm, learned positions, as saved (before from_pretrained's
# processing, after which the norms are `layernorm(pre)`).
model attn_only_3l

dim d_model = 512
dim d_vocab = 48262
dim n_ctx   = 1024
dim d_head  = 64

embed
pos_embed
repeat 3 {
  layer {
    layernorm
    attn(heads = 8, bias)
  }
}
layernorm
unembed(bias)
