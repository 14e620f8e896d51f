# Zero layers with a positional embedding: one direct path per source.
model zero_layers_positional
dim d_model = 8
dim d_vocab = 5
dim n_ctx = 4
embed
pos_embed
unembed
