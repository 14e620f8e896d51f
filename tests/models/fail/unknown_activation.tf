model m
dim d_model = 8
dim d_vocab = 5
dim d_mlp = 32
embed
layer {
  attn(heads = 2, d_head = 4)
  mlp(act = swish)
}
unembed
