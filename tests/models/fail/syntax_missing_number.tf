model m
dim d_model =
dim d_vocab = 5
embed
unembed
