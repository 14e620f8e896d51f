# Wrong values for the attention's new arguments, each reported where it was written.
model m
dim d_model = 8
dim d_vocab = 5
dim n_ctx = 4
embed
pos_embed(shortformer = 3)
layer { attn(heads = 2, d_head = 4, causal = 1, scale = 0, rotary = d_model) }
layer { attn(heads = 2, d_head = 4, scale = bias, rotary_base = 0) }
unembed(d_vocab_out = 0)
