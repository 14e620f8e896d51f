# TransformerLens's `solu-2l` (NeelNanda/SoLU_2L512W_C4_Code): 2 layer(s) of 8 heads × 64
# and a SoLU MLP of 2048 (x·softmax(x), then the MLP's own LayerNorm), LayerNorm, learned
# positions, as saved.
model solu_2l

dim d_model = 512
dim d_vocab = 48262
dim n_ctx   = 1024
dim d_head  = 64
dim d_mlp   = 2048

embed
pos_embed
repeat 2 {
  layer {
    layernorm
    attn(heads = 8, bias)
    layernorm
    mlp(act = solu_ln, bias)
  }
}
layernorm
unembed(bias)
