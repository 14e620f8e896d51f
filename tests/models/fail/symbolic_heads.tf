model m
dim d_model = 8
dim d_vocab = 5
dim n_heads
embed
layer { attn(heads = n_heads, d_head = 4) }
unembed
