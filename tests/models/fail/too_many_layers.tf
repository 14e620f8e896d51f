model m
dim d_model = 8
dim d_vocab = 5
embed
repeat 5000 { layer { attn(heads = 1, d_head = 4) } }
unembed
