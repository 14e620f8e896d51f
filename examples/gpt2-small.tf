# GPT-2 small (124M): 12 pre-LayerNorm blocks of 12 heads and a gelu_new MLP,
# biases everywhere, a final LayerNorm, learned positional embedding.
model gpt2_small

dim d_model = 768
dim d_vocab = 50257
dim n_ctx   = 1024
dim d_head  = 64
dim d_mlp   = 3072

embed
pos_embed
repeat 12 {
  layer {
    layernorm
    attn(heads = 12, bias)
    layernorm
    mlp(act = gelu_new, bias)
  }
}
layernorm
unembed
