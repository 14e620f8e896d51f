model m
dim d_vocab = 5
embed
pos_embed
layer { mlp(d_mlp = 4, act = relu) }
layer { attn(heads = 2, d_head = 0, bias = true, bias) }
unembed(bias = yes)
