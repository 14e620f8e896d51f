# One attention-only layer: T = Id⊗W_U·W_E + Σ_h A^h ⊗ W_U·W_OV^h·W_E.
model one_layer
dim d_model = 8
dim d_vocab = 5
dim d_head = 2
embed
layer { attn(heads = 3) }
unembed
