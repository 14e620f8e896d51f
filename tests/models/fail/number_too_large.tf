model m
dim d_model = 99999999999999999999999
dim d_vocab = 5
embed
unembed
