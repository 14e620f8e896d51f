# expand: --qk --max-order 2
# Layers with different numbers of heads, truncated at order 2 on both sides.
model uneven_heads
dim d_model = 8
dim d_vocab = 5
dim d_head = 2
embed
layer { attn(heads = 1) }
layer { attn(heads = 3) }
layer { attn(heads = 2) }
unembed
