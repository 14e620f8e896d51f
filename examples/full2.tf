# The `full2` fixture: 2 layers × 4 heads with MLPs (gelu_new), LayerNorm before
# attention, before the MLP and at the end, and biases everywhere
# (../shared/fixtures/full2/meta.json).
model full2

dim d_model = 32
dim d_vocab = 50
dim n_ctx   = 16
dim d_head  = 8
dim d_mlp   = 64

embed
pos_embed
repeat 2 {
  layer {
    layernorm
    attn(heads = 4, bias)
    layernorm
    mlp(act = gelu_new, bias)
  }
}
layernorm
unembed(bias)
