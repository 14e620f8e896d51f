# TransformerLens's `redwood_attn_2l` (ArthurConmy/redwood_attn_2l, the ACDC paper's induction
# model): two attention-only layers of 8 heads × 32 with shortformer positions.
model redwood_attn_2l

dim d_model = 256
dim d_vocab = 50259
dim n_ctx   = 2048
dim d_head  = 32

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
