# The file ends inside a three-byte character.
model m
dim d_model = 8
unembed
# â‚