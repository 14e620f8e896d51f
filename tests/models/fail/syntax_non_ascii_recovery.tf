# Recovery after an error on a line holding a two-byte character keeps later carets in place.
model m
dim d_model = 8 é @
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4, zz = ) }
unembed
