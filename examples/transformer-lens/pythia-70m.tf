# EleutherAI's Pythia-70M (GPT-NeoX) as TransformerLens converts it: 6 parallel layers (attention
# and MLP read the same stream, each through its own LayerNorm) of 8 heads × 64 with rotary
# positions on the first 16 dimensions of each head (rotary_pct 0.25, NeoX halves, base 10000), a
# GELU MLP of 2048, an untied unembedding without bias.
model pythia_70m

dim d_model = 512
dim d_vocab = 50304
dim n_ctx   = 2048
dim d_head  = 64
dim d_mlp   = 2048

embed
repeat 6 {
  layer(parallel) {
    layernorm
    attn(heads = 8, bias, rotary = 16, rotary_base = 10000, rotary_style = neox)
    layernorm
    mlp(act = gelu, bias)
  }
}
layernorm
unembed
