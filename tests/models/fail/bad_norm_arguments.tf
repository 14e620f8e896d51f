# Wrong arguments of norms, layers and MLPs, each reported where written.
model m
dim d_model = 8
dim d_vocab = 5
dim d_mlp = 16
embed
layer(parallel = 2) {
  rmsnorm(eps = 0)
  attn(heads = 2, d_head = 4)
  layernorm(pre = yes, weight)
  mlp(act = gelu, ln = pre)
}
layer(sequential) {
  attn(heads = 2, d_head = 4)
  mlp(act = solu_ln, ln = post)
}
rmsnorm
rmsnorm
unembed
