# EleutherAI's GPT-J-6B: 28 parallel layers with ONE LayerNorm shared by attention and MLP, 16
# heads × 256 with rotary positions on the first 64 dimensions (adjacent pairs, GPT-J style), no
# attention biases, a gelu_new MLP of 16384, an unembedding with a bias. (TransformerLens's
# conversion stores the one norm twice, as ln1 and ln2: with such weights, declare a second
# `layernorm` before the MLP.)
model gpt_j_6b

dim d_model = 4096
dim d_vocab = 50400
dim n_ctx   = 2048
dim d_head  = 256
dim d_mlp   = 16384

embed
repeat 28 {
  layer(parallel) {
    layernorm
    attn(heads = 16, rotary = 64, rotary_base = 10000, rotary_style = gptj)
    mlp(act = gelu_new, bias)
  }
}
layernorm
unembed(bias)
