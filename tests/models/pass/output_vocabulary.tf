# A classifier: 2 outputs over a 33-token vocabulary (TransformerLens `d_vocab_out`). The
# unembedding is `[d_model, d_vocab_out]`; the paths are the same.
model classifier
dim d_model = 16
dim d_vocab = 33
dim n_ctx = 10
embed
pos_embed
layer { attn(heads = 2, d_head = 8, causal = false) }
unembed(bias, d_vocab_out = 2)
