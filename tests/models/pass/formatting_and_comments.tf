// Comments in both styles, free layout, trailing commas, explicit booleans.
model   formatting   # the name
dim d_model=8 dim d_vocab = 5    // two declarations on one line
dim d_head
embed()
repeat 2 {
  layer {
    attn(
      heads = 2,
      d_head = d_head,
      bias = false,
    )
  }
}
unembed(bias = false)
