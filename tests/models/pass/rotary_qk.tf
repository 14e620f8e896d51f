# expand: --qk --max-order 1
# Rotary positions: each score term's circuit is W_QK(Δ) = W_Qᵀ R_Δ W_K, a function of the offset
# Δ between the query and the key position; where a bias stands between W_Q and W_K the rotation
# R_Δ is written out. With grouped-query attention query heads share keys (the terms are per
# query head all the same).
model rotary_qk
dim d_model = 8
dim d_vocab = 11
dim d_head = 4
embed
repeat 2 {
  layer { attn(heads = 4, kv_heads = 2, bias, rotary = 2, rotary_base = 500, rotary_style = gptj) }
}
unembed
