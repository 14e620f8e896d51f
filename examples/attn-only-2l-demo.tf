# TransformerLens's `attn-only-2l-demo` (NeelNanda/Attn-Only-2L512W-Shortformer-6B-big-lr): two
# attention-only layers of 8 heads with shortformer positions, the model of the induction-head
# demos. W_P is added to every layer's query and key inputs, never to the residual stream: the
# logits have no P paths, the scores have P on both sides (`pathc expand --qk`).
model attn_only_2l_demo

dim d_model = 512
dim d_vocab = 48262
dim n_ctx   = 1024
dim d_head  = 64

embed
pos_embed(shortformer)
repeat 2 {
  layer {
    layernorm
    attn(heads = 8, bias)
  }
}
layernorm
unembed(bias)
