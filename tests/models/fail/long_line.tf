# One error far into a long line: the line is shown as a window around the caret.
model m
dim d_model = 8
dim d_vocab = 5
embed
layer { attn(heads = 2, d_head = 4) } layer { attn(heads = 2, d_head = 4) } layer { attn(heads = 2, d_head = 4) } layer { attn(heads = 2, d_head = 4) } layer { attn(heads = 2, d_head = d_hed) } layer { attn(heads = 2, d_head = 4) } layer { attn(heads = 2, d_head = 4) } layer { attn(heads = 2, d_head = 4) } 
unembed
