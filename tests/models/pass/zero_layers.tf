# Zero layers: T = Id ⊗ W_U·W_E, the bigram statistics.
model zero_layers
dim d_model = 8
dim d_vocab = 5
embed
unembed
