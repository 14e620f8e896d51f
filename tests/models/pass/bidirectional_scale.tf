# Bidirectional attention (no causal mask) and attention scales other than sqrt(d_head): only the
# frozen patterns change, so the expansion is as for any attention-only model.
model bidirectional
dim d_model = 8
dim d_vocab = 11
dim d_head = 4
embed
layer { attn(heads = 2, causal = false, scale = 1) }
layer { attn(heads = 2, causal = false, scale = 2.5) }
unembed
