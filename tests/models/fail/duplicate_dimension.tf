model m
dim d_model = 8
dim d_vocab = 5
dim d_model = 16
embed
unembed
