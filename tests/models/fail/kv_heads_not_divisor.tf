model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 6, d_head = 4, kv_heads = 4) }
layer { attn(heads = 6, d_head = 4, kv_heads = 0) }
unembed
