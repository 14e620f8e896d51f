model m
dim d_model = 8
dim d_vocab = 5
embed
repeat 8 { layer { attn(heads = 12, d_head = 4) } }
unembed
