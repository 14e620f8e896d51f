# TransformerLens's `gelu-4l` (NeelNanda/GELU_4L512W_C4_Code): 4 layer(s) of 8 heads × 64
# and a GELU MLP of 2048, LayerNorm, learned positions, as saved.
model gelu_4l

dim d_model = 512
dim d_vocab = 48262
dim n_ctx   = 1024
dim d_head  = 64
dim d_mlp   = 2048

embed
pos_embed
repeat 4 {
  layer {
    layernorm
    attn(heads = 8, bias)
    layernorm
    mlp(act = gelu, bias)
  }
}
layernorm
unembed(bias)
