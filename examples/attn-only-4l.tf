# Four attention-only layers of 12 heads: 13^4 = 28,561 paths from the token embedding.
model attn_only_4l

dim d_model = 768
dim d_vocab = 50257
dim d_head  = 64

embed
repeat 4 {
  layer { attn(heads = 12) }
}
unembed
