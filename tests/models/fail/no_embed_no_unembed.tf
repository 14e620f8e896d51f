model m
dim d_model = 8
dim d_vocab = 5
layer { attn(heads = 2, d_head = 4) }
