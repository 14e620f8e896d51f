model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = true, d_head = 4, bias = 3) }
unembed
