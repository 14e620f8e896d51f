# expand: --qk
# The QK side of a two-layer model: each head's scores as (query path, key path) terms,
# direct, Q-composition, K-composition and both, with positional terms.
model two_layers_qk
dim d_model = 8
dim d_vocab = 5
dim n_ctx = 4
dim d_head = 2
embed
pos_embed
repeat 2 { layer { attn(heads = 2) } }
unembed
