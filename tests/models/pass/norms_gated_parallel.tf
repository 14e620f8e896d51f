# expand: --qk --max-order 1
# Every norm kind, a gated MLP (two input expansions: x·W_in and x·W_gate), SoLU with its inner
# norm, and parallel layers with two norms (GPT-NeoX) and with one shared (GPT-J): a parallel
# layer's MLP input has no paths through its own layer's heads.
model norms_gated_parallel
dim d_model = 8
dim d_vocab = 11
dim d_head = 4
dim d_mlp = 16
embed
layer(parallel) {
  layernorm(eps = 1e-6)
  attn(heads = 2, bias)
  layernorm
  mlp(act = gelu, bias)
}
layer(parallel) {
  rmsnorm
  attn(heads = 2)
  mlp(act = silu, gated)
}
layer {
  layernorm(pre)
  attn(heads = 2)
  rmsnorm(pre)
  mlp(act = solu_ln, ln = pre)
}
rmsnorm(eps = 1e-6)
unembed
