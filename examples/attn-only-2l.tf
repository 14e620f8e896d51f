# The paper's two-layer attention-only model (Elhage et al. 2021): 12 heads a layer.
# Sizes are symbolic: expansion needs only the heads.
model attn_only_2l

dim d_model
dim d_vocab
dim d_head

embed
repeat 2 {
  layer { attn(heads = 12) }
}
unembed
