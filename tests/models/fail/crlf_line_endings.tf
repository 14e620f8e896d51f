# CRLF line endings: the same lines and columns as with LF.
model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4, zz = 1) }
layer { attn(heads = 0, d_head = 4) }
unembed
