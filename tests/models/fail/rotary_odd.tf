model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4, rotary = 3) }
unembed
