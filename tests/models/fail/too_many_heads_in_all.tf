# 4096 layers of 4096 heads: each within its own limit, 16.8 million heads in all.
model m
dim d_model = 8
dim d_vocab = 5
embed
repeat 4096 {
  layer { attn(heads = 4096, d_head = 4) }
}
unembed
