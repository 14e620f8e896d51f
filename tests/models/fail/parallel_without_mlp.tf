model m
dim d_model = 8
dim d_vocab = 5
embed
layer(parallel) { layernorm attn(heads = 2, d_head = 4) }
unembed
