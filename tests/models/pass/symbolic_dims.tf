# Every size symbolic: the expansion needs only the number of heads.
model symbolic
dim d_model
dim d_vocab
dim d_head
embed
layer { attn(heads = 2) }
unembed
