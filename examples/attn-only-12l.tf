# Twelve attention-only layers of 12 heads at GPT-2 small's width, with a positional
# embedding: 2 × 13^12 ≈ 4.6e13 paths in all, so enumerate with --max-order.
model attn_only_12l

dim d_model = 768
dim d_vocab = 50257
dim n_ctx   = 1024
dim d_head  = 64

embed
pos_embed
repeat 12 {
  layer { attn(heads = 12) }
}
unembed
