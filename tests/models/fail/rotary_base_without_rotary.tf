model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4, rotary_base = 10000, rotary_style = neox) }
unembed
