# expand: --qk --max-order 1
# A pre-LayerNorm block with biases everywhere: every kind of term at order ≤ 1.
model m
dim d_model = 8
dim d_vocab = 5
dim n_ctx = 4
embed
pos_embed
repeat 2 {
  layer {
    layernorm
    attn(heads = 2, d_head = 4, bias)
    layernorm
    mlp(d_mlp = 16, act = relu, bias)
  }
}
layernorm
unembed(bias)
