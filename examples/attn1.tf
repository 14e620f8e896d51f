# The `attn1` fixture: 1 layer, 2 heads, attention only, positional embedding,
# no biases, no LayerNorm (../shared/fixtures/attn1/meta.json).
model attn1

dim d_model = 16
dim d_vocab = 20
dim n_ctx   = 12
dim d_head  = 4

embed
pos_embed
layer { attn(heads = 2) }
unembed
