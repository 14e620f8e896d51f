# expand: --max-order 1
# Truncated to paths through at most one head: 1 + 3·2 paths.
model three_layers_order_one
dim d_model = 8
dim d_vocab = 5
dim d_head = 2
embed
repeat 3 { layer { attn(heads = 2) } }
unembed
