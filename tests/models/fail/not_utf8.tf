# A Latin-1 byte (0xE9) is not UTF-8: the diagnostic points at it, line and column.
model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4) }  # café
unembed
