# An escape character is named, never printed raw (it would drive the terminal).
model m
dim d_model = 8 [2J
embed
unembed
