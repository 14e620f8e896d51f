# The `attn2` fixture: 2 layers × 4 heads, attention only, positional embedding,
# no biases, no LayerNorm (../shared/fixtures/attn2/meta.json).
model attn2

dim d_model = 32
dim d_vocab = 50
dim n_ctx   = 16
dim d_head  = 8

embed
pos_embed
repeat 2 {
  layer { attn(heads = 4) }
}
unembed
