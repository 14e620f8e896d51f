# A gated MLP multiplies an elementwise activation by a linear input: solu_ln cannot gate.
model m
dim d_model = 8
dim d_vocab = 5
dim d_mlp = 16
embed
layer {
  attn(heads = 2, d_head = 4)
  mlp(act = solu_ln, gated)
}
unembed
