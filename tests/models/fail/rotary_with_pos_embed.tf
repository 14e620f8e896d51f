# Rotary attention and a learned positional embedding: TransformerLens has one kind of positions.
model m
dim d_model = 8
dim d_vocab = 5
dim n_ctx = 4
embed
pos_embed(shortformer)
layer { attn(heads = 2, d_head = 4, rotary = 4) }
unembed
