# Mistral-7B (v0.1), a Llama-family model with grouped-query attention: 32 layers of 32 query
# heads × 128 sharing 8 key/value heads, rotary positions on every dimension (NeoX halves, base
# 10000), RMSNorm (eps 1e-5) before attention, the MLP and the unembedding, a SwiGLU MLP of
# 14336 (gated, silu), no biases.
model mistral_7b

dim d_model = 4096
dim d_vocab = 32000
dim n_ctx   = 32768
dim d_head  = 128
dim d_mlp   = 14336

embed
repeat 32 {
  layer {
    rmsnorm(eps = 1e-5)
    attn(heads = 32, kv_heads = 8, rotary = 128, rotary_base = 10000, rotary_style = neox)
    rmsnorm(eps = 1e-5)
    mlp(act = silu, gated)
  }
}
rmsnorm(eps = 1e-5)
unembed
