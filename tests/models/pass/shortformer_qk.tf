# expand: --qk
# Shortformer positions (TransformerLens `positional_embedding_type = "shortformer"`): W_P is
# added to every layer's query and key inputs, never to the residual stream. No P paths reach
# the logits; every score has P as one more order-0 term on its query side and its key side.
model shortformer_qk
dim d_model = 8
dim d_vocab = 11
dim n_ctx = 6
dim d_head = 4
embed
pos_embed(shortformer)
repeat 2 {
  layer {
    layernorm
    attn(heads = 2)
  }
}
layernorm
unembed
