# 30 unknown arguments on one long line: a window of the line around each caret, the first 20
# errors, then a count of the rest.
model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4, w0 = 1, w1 = 1, w2 = 1, w3 = 1, w4 = 1, w5 = 1, w6 = 1, w7 = 1, w8 = 1, w9 = 1, w10 = 1, w11 = 1, w12 = 1, w13 = 1, w14 = 1, w15 = 1, w16 = 1, w17 = 1, w18 = 1, w19 = 1, w20 = 1, w21 = 1, w22 = 1, w23 = 1, w24 = 1, w25 = 1, w26 = 1, w27 = 1, w28 = 1, w29 = 1) }
unembed
