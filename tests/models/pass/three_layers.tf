# Three attention-only layers with positional embedding: (1 + 2)^3 = 27 paths per source.
model three_layers
dim d_model = 8
dim d_vocab = 5
dim n_ctx = 4
dim d_head = 2
embed
pos_embed
repeat 3 { layer { attn(heads = 2) } }
unembed
