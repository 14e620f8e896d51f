# Two attention-only layers: direct path, one term per head of either layer, and the
# virtual heads (A^{h2}·A^{h1}) ⊗ (W_U·W_OV^{h2}·W_OV^{h1}·W_E).
model two_layers
dim d_model = 8
dim d_vocab = 5
dim d_head = 2
embed
repeat 2 { layer { attn(heads = 2) } }
unembed
