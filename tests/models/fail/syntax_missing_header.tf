dim d_model = 8
embed
unembed
