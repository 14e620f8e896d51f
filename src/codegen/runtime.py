NORM_EPS = 1e-5  # TransformerLens's default norm epsilon (cfg.eps), the model file's default

# The norms by the model file's names: whether each centres (LayerNorm) and which of a weight `w`
# and a bias `b` it has (TransformerLens's LN, LNPre, RMS, RMSPre).
NORM_KINDS = {
    "layernorm": {"centres": True, "w": True, "b": True},
    "layernorm(pre)": {"centres": True, "w": False, "b": False},
    "rmsnorm": {"centres": False, "w": True, "b": False},
    "rmsnorm(pre)": {"centres": False, "w": False, "b": False},
}


def centres(norm):
    """Whether a norm of MODEL (None: no norm) subtracts the mean (a LayerNorm of either kind)."""
    return norm is not None and NORM_KINDS[norm["kind"]]["centres"]


def mlp_norm(layer):
    """The norm a layer's MLP reads through: its own `ln2`, or `ln1` when shared (GPT-J)."""
    return layer["ln1"] if layer["shared_norm"] else layer["mlp"]["ln2"]


class WeightError(Exception):
    """The weight file does not fit the model (a missing tensor, a wrong shape, an undeclared one)."""


# ---------------------------------------------------------------------------------------------
# Weights: a small safetensors reader, the model's tensors by TransformerLens's names, fold_ln
# ---------------------------------------------------------------------------------------------

_FLOAT_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def read_safetensors(path):
    """Every floating-point tensor of a safetensors file, as float64 arrays by name.

    The format: an 8-byte little-endian header length, a JSON header mapping each tensor's name
    to its dtype, shape and byte range (`data_offsets`, counted from the end of the header), then
    the data, little-endian and row-major. BF16 is the upper half of an F32. Tensors of other
    dtypes (integer or boolean buffers such as attention masks) are skipped.
    """
    with open(path, "rb") as file:
        data = file.read()
    if len(data) < 8:
        raise WeightError(f"{path}: not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as e:
        raise WeightError(f"{path}: not a safetensors file ({e})") from None
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        if info["dtype"] in _FLOAT_DTYPES:
            array = np.frombuffer(raw, dtype=_FLOAT_DTYPES[info["dtype"]])
        elif info["dtype"] == "BF16":
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        tensors[name] = array.astype(np.float64).reshape(tuple(info["shape"]))
    return tensors


def read_weights(path):
    """A TransformerLens state_dict: safetensors, or an .npz of the same arrays."""
    if str(path).endswith(".npz"):
        with np.load(path) as npz:
            return {k: npz[k].astype(np.float64) for k in npz.files if npz[k].dtype.kind == "f"}
    return read_safetensors(path)


def load_weights(path):
    """The tensors the model needs, by TransformerLens's names, every shape checked.

    Sizes the model file leaves symbolic are read from the weights (`d_model` and `d_vocab` from
    `embed.W_E`, `d_head` from `W_Q`, `d_mlp` from `W_in`, `d_vocab_out` from `W_U`); declared
    sizes must match. A bias the model does not declare is zero: absent, or present as zeros (a
    nonzero one is refused, as pathc refuses it).

    A norm `{prefix}` (`blocks.{l}.ln1`, `blocks.{l}.ln2`, `ln_final`, solu_ln's `blocks.{l}.mlp.ln`)
    reads `{prefix}.w` when its kind has a weight (layernorm, rmsnorm) and `{prefix}.b` when it has
    a bias (layernorm); a tensor its kind has not (an `ln1.b` for an rmsnorm, an `ln1.w` for a
    layernorm(pre)) is refused, as is a `{prefix}.w` where the model declares no norm, since
    ignoring it would compute another model. A gated MLP reads `W_gate` [d_model, d_mlp] (refused
    on an MLP that is not gated) and gets `b_gate`, `b_lin`, zeros: the constants of its gate and
    linear inputs, which hold a norm's bias once folded (TransformerLens's `b_in` is added after
    the product).

    With grouped-query attention (kv_heads < heads) the file holds TransformerLens's `_W_K`,
    `_W_V` [kv_heads, d_model, d_head] and `_b_K`, `_b_V` [kv_heads, d_head]; they are kept once
    per key/value head under `W_K`, `W_V`, `b_K`, `b_V` (query head h reads `kv_group(l, h)`).
    With shortformer positions `W_Q_pos`, `W_K_pos` are `W_Q`, `W_K` as stored: what reads
    `W_pos` (added after the LayerNorm), which `fold_layer_norm` leaves alone.
    """
    tensors = read_weights(path)

    def need(name, shape):
        if name not in tensors:
            raise WeightError(f"the weights have no `{name}`")
        array = tensors[name]
        if len(array.shape) != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
            want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
            raise WeightError(f"`{name}` has shape {list(array.shape)}, the model needs {want}")
        return array

    def bias(name, shape, declared):
        if declared:
            return need(name, shape)
        if name in tensors and np.any(tensors[name] != 0):
            raise WeightError(f"the weights have a nonzero `{name}` but the model declares no such bias")
        return np.zeros(shape)

    def norm(prefix, declared, width, undeclared):
        """Reads norm `prefix` as declared (None: none, and no `{prefix}.w` in the file)."""
        if declared is None:
            if prefix + ".w" in tensors:
                raise WeightError(f"the weights have `{prefix}.w` but {undeclared}")
            return
        kind = NORM_KINDS[declared["kind"]]
        for part, what in (("w", "weight"), ("b", "bias")):
            name = f"{prefix}.{part}"
            if kind[part]:
                w[name] = need(name, [width])
            elif name in tensors:
                raise WeightError(f"the weights have `{name}` but this norm is `{declared['kind']}`, which has no {what}")

    d_vocab, d_model = need("embed.W_E", [MODEL["d_vocab"], MODEL["d_model"]]).shape
    w = {"embed.W_E": tensors["embed.W_E"]}
    if MODEL["pos_embed"]:
        w["pos_embed.W_pos"] = need("pos_embed.W_pos", [MODEL["n_ctx"], d_model])
    for l, layer in enumerate(MODEL["layers"]):
        h, kv, name = layer["heads"], layer["kv_heads"], f"blocks.{l}.attn."
        stored = (lambda m: "_" + m) if kv != h else (lambda m: m)
        d_head = need(name + "W_Q", [h, d_model, layer["d_head"]]).shape[2]
        w[name + "W_Q"] = tensors[name + "W_Q"]
        for m in ("W_K", "W_V"):
            w[name + m] = need(name + stored(m), [kv, d_model, d_head])
        w[name + "W_O"] = need(name + "W_O", [h, d_head, d_model])
        w[name + "b_Q"] = bias(name + "b_Q", [h, d_head], layer["attn_bias"])
        for b in ("b_K", "b_V"):
            w[name + b] = bias(name + stored(b), [kv, d_head], layer["attn_bias"])
        w[name + "b_O"] = bias(name + "b_O", [d_model], layer["attn_bias"])
        if MODEL["pos_embed"] == "shortformer":
            w[name + "W_Q_pos"], w[name + "W_K_pos"] = w[name + "W_Q"], w[name + "W_K"]
        norm(f"blocks.{l}.ln1", layer["ln1"], d_model, f"layer {l} declares no norm before attention")
        mlp = layer["mlp"]
        if mlp is None:
            for extra in (f"blocks.{l}.mlp.W_in", f"blocks.{l}.ln2.w"):
                if extra in tensors:
                    raise WeightError(f"the weights have `{extra}` but layer {l} declares no MLP")
            continue
        norm(f"blocks.{l}.ln2", mlp["ln2"], d_model, f"layer {l} declares no norm before the MLP")
        name = f"blocks.{l}.mlp."
        d_mlp = need(name + "W_in", [d_model, mlp["d_mlp"]]).shape[1]
        w[name + "W_in"] = tensors[name + "W_in"]
        if mlp["gated"]:
            w[name + "W_gate"] = need(name + "W_gate", [d_model, d_mlp])
            w[name + "b_gate"], w[name + "b_lin"] = np.zeros(d_mlp), np.zeros(d_mlp)
        elif name + "W_gate" in tensors:
            raise WeightError(f"the weights have `{name}W_gate` but layer {l}'s MLP is not gated")
        w[name + "W_out"] = need(name + "W_out", [d_mlp, d_model])
        w[name + "b_in"] = bias(name + "b_in", [d_mlp], mlp["bias"])
        w[name + "b_out"] = bias(name + "b_out", [d_model], mlp["bias"])
        norm(name + "ln", mlp["inner_norm"], d_mlp, f"layer {l}'s MLP has no norm inside")
    norm("ln_final", MODEL["ln_final"], d_model, "the model declares no final norm")
    d_vocab_out = d_vocab if MODEL["d_vocab_out"] == "d_vocab" else MODEL["d_vocab_out"]
    d_vocab_out = need("unembed.W_U", [d_model, d_vocab_out]).shape[1]
    w["unembed.W_U"] = tensors["unembed.W_U"]
    w["unembed.b_U"] = bias("unembed.b_U", [d_vocab_out], MODEL["unembed_bias"])
    for name, array in w.items():
        if not np.all(np.isfinite(array)):
            raise WeightError(f"`{name}` holds a value that is not finite")
    return w


def kv_group(layer, head):
    """The key/value head query head `head` of `layer` reads: head // (heads // kv_heads)."""
    spec = MODEL["layers"][layer]
    return head // (spec["heads"] // spec["kv_heads"])


def _fold_into_reader(norm, ln_w, ln_b, weight, bias):
    """Folds a norm's weight and bias (None where its kind has none) into a reader `x ↦ x·W + b`
    ([..., width, k] and [..., k]): `b += ln_b·W`, then `W ← diag(ln_w)·W`, then, for a norm that
    centres (a LayerNorm of either kind), W centred over its `width` rows."""
    if ln_b is not None:
        bias = bias + np.einsum("m,...mk->...k", ln_b, weight)
    if ln_w is not None:
        weight = ln_w[:, None] * weight
    if centres(norm):
        weight = weight - weight.mean(axis=-2, keepdims=True)
    return weight, bias


def _mlp_readers(l, layer):
    """The (matrix, constant) pairs that read an MLP's input: `W_in` with `b_in`; gated, `W_in`
    with `b_lin` (TransformerLens's `b_in` comes after the product) and `W_gate` with `b_gate`."""
    name = f"blocks.{l}.mlp."
    if layer["mlp"]["gated"]:
        return [(name + "W_in", name + "b_lin"), (name + "W_gate", name + "b_gate")]
    return [(name + "W_in", name + "b_in")]


def fold_layer_norm(w):
    """TransformerLens's `fold_layer_norm(fold_biases=True, center_weights=True)`, exact, for every
    kind of norm (pathc's `Params::fold_layer_norm`).

    Each norm's weight and bias move into the matrices that read its output and their biases
    (`W_Q`, `W_K`, `W_V` after ln1; `W_in`, or a gated MLP's `W_in` and `W_gate` with `b_lin` and
    `b_gate`, after ln2, or after ln1 when the layer's MLP shares it; `W_U` after ln_final); a
    LayerNorm's readers (layernorm and layernorm(pre)) are then centred, an RMSNorm's are not. The
    norm keeps only its centring (a LayerNorm) and its scale `N = diag(1/σ)`, frozen per position
    in a path: its `.w`, `.b` are gone (layernorm → layernorm(pre), rmsnorm → rmsnorm(pre)).
    solu_ln's norm inside the MLP reads no stream and is not folded. Folding twice is folding once.
    """
    w = dict(w)
    readers = []
    for l, layer in enumerate(MODEL["layers"]):
        ln1 = [(f"blocks.{l}.attn.W_{m}", f"blocks.{l}.attn.b_{m}") for m in "QKV"]
        if layer["mlp"] is not None and layer["shared_norm"]:
            ln1 += _mlp_readers(l, layer)
        readers.append((f"blocks.{l}.ln1", layer["ln1"], ln1))
        if layer["mlp"] is not None:
            readers.append((f"blocks.{l}.ln2", layer["mlp"]["ln2"], _mlp_readers(l, layer)))
    readers.append(("ln_final", MODEL["ln_final"], [("unembed.W_U", "unembed.b_U")]))
    for ln, norm, matrices in readers:
        if norm is None:
            continue
        ln_w, ln_b = w.pop(ln + ".w", None), w.pop(ln + ".b", None)
        for weight, bias in matrices:
            w[weight], w[bias] = _fold_into_reader(norm, ln_w, ln_b, w[weight], w[bias])
    return w


# ---------------------------------------------------------------------------------------------
# TransformerLens's weight processing (--fold-ln, --center-writing-weights, --center-unembed,
# --fold-value-biases; --process-weights for all four, as from_pretrained)
# ---------------------------------------------------------------------------------------------

PROCESSING_STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


class ProcessingError(Exception):
    """A processing step that would compute another model here (said as pathc says it)."""


def center_writing_weights(w):
    """TransformerLens's `center_writing_weights`: everything that writes the residual stream
    (`W_E`, `W_pos`, `W_O`, `b_O`, `W_out`, `b_out`) loses its mean over d_model. Exact only when
    every reader centres the stream first: refused unless a LayerNorm (layernorm or
    layernorm(pre)) stands before every attention, every MLP and the unembedding, and refused for
    shortformer positions, which join the queries and keys after the norm."""
    layers = MODEL["layers"]
    every_reader = centres(MODEL["ln_final"]) and all(
        centres(layer["ln1"]) and (layer["mlp"] is None or centres(mlp_norm(layer))) for layer in layers
    )
    if not every_reader:
        raise ProcessingError(
            "center_writing_weights: it needs a LayerNorm (layernorm or layernorm(pre)) before every attention, "
            "every MLP and the unembedding; only then does the mean of what is written cancel"
        )
    if MODEL["pos_embed"] == "shortformer":
        raise ProcessingError(
            "center_writing_weights: it would centre a shortformer's W_pos, which joins the queries and keys after "
            "the LayerNorm, and so change the attention scores (TransformerLens does it; ACDC loads redwood_attn_2l "
            "with center_writing_weights=False)"
        )
    w = dict(w)
    writers = ["embed.W_E"] + (["pos_embed.W_pos"] if MODEL["pos_embed"] else [])
    for l, layer in enumerate(layers):
        writers += [f"blocks.{l}.attn.W_O", f"blocks.{l}.attn.b_O"]
        if layer["mlp"] is not None:
            writers += [f"blocks.{l}.mlp.W_out", f"blocks.{l}.mlp.b_out"]
    for name in writers:
        w[name] = w[name] - w[name].mean(axis=-1, keepdims=True)
    return w


def center_unembed(w):
    """TransformerLens's `center_unembed`: `W_U` and `b_U` lose their mean over the outputs, which
    shifts every position's logits by a constant (their mean) and changes no softmax."""
    w = dict(w)
    w["unembed.W_U"] = w["unembed.W_U"] - w["unembed.W_U"].mean(axis=1, keepdims=True)
    w["unembed.b_U"] = w["unembed.b_U"] - w["unembed.b_U"].mean()
    return w


def fold_value_biases(w):
    """TransformerLens's `fold_value_biases`: each head's `b_V·W_O` (its key/value group's `b_V`)
    moves into `b_O`, exact because every attention row sums to 1; `b_V` becomes 0."""
    w = dict(w)
    for l, layer in enumerate(MODEL["layers"]):
        attn = f"blocks.{l}.attn."
        folded = np.zeros(w[attn + "b_O"].shape)
        for h in range(layer["heads"]):
            folded = folded + w[attn + "b_V"][kv_group(l, h)] @ w[attn + "W_O"][h]
        w[attn + "b_O"] = w[attn + "b_O"] + folded
        w[attn + "b_V"] = np.zeros(w[attn + "b_V"].shape)
    return w


def process_weights(w, steps):
    """The weights after the processing `steps` (names from PROCESSING_STEPS), in TransformerLens's
    order (`load_and_process_state_dict`: fold_ln, center_writing_weights, center_unembed,
    fold_value_biases), each exact for the model it makes (pathc's `Params::process`); raises
    ProcessingError where a step would compute another model."""
    if "fold_ln" in steps:
        w = fold_layer_norm(w)
    if "center_writing_weights" in steps:
        w = center_writing_weights(w)
    if "center_unembed" in steps:
        w = center_unembed(w)
    if "fold_value_biases" in steps:
        # pathc gives such a layer a b_O path (`pathc paths --fold-value-biases`); this module's
        # paths were generated without one, so the folded value biases would be in no path.
        for l, layer in enumerate(MODEL["layers"]):
            value_biases = layer["attn_bias"] or (layer["ln1"] is not None and layer["ln1"]["kind"] == "layernorm")
            if value_biases and not layer["attn_bias"]:
                raise ProcessingError(
                    f"cannot apply fold_value_biases: layer {l}'s value biases would move into a b_O this module has no path for (its attention declares no bias); use pathc paths --fold-value-biases, or leave this step out"
                )
        w = fold_value_biases(w)
    return w


# ---------------------------------------------------------------------------------------------
# The forward pass, recording what a path expansion freezes
# ---------------------------------------------------------------------------------------------


def normalise(x, norm, ln_w=None, ln_b=None):
    """A norm of MODEL (`{"kind", "eps"}`) on every row of x, as TransformerLens computes it, and
    each row's scale σ (what a path freezes): a LayerNorm centres the row, every kind divides it
    by σ = sqrt(mean of its squares + eps) (the variance for a LayerNorm, the mean square for an
    RMSNorm), then `· ln_w` and `+ ln_b` where the norm has them (None: it has not, or they are
    folded). x itself, and no scale, without a norm (None)."""
    if norm is None:
        return x, None
    if centres(norm):
        x = x - x.mean(axis=1, keepdims=True)
    scale = np.sqrt((x * x).sum(axis=1) / x.shape[1] + norm["eps"])
    out = x / scale[:, None]
    if ln_w is not None:
        out = out * ln_w
    if ln_b is not None:
        out = out + ln_b
    return out, scale


def apply_norm(w, prefix, norm, x):
    """`normalise` with the norm's own tensors `{prefix}.w`, `{prefix}.b` from `w`, where present."""
    return normalise(x, norm, w.get(prefix + ".w"), w.get(prefix + ".b"))


class InputError(Exception):
    """Tokens or an attention mask the model cannot run on (said as pathc says it)."""


def attended(n, causal, mask):
    """[n, n] booleans (query, key): the keys each query may attend to, every key with a 1 in
    `mask` (all without one) and, in a causal layer, only keys up to the query."""
    keep = np.tril(np.ones((n, n), dtype=bool)) if causal else np.ones((n, n), dtype=bool)
    return keep if mask is None else keep & np.asarray(mask, dtype=bool)[None, :]


def check_attention_mask(mask, n):
    """An attention mask fits the tokens: one 0 or 1 per token, and every query of every layer
    (causal ones first) keeps a key to attend to; else pathc's error."""
    if len(mask) != n:
        raise InputError(f"the attention mask has {len(mask)} entries for {n} tokens: give one 0 or 1 per token")
    for causal in (True, False):
        if not any(layer["causal"] == causal for layer in MODEL["layers"]):
            continue
        empty = np.flatnonzero(~attended(n, causal, mask).any(axis=1))
        if len(empty):
            seen = " (keys 0 to the query itself, causal)" if causal else ""
            raise InputError(f"query position {empty[0]} attends to no key: the attention mask masks every key it may see{seen}")


def masked_softmax(scores, keep):
    """Softmax over each query's row of `scores` over the keys `keep` allows; the others get 0."""
    masked = np.where(keep, scores, -np.inf)
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rotate(x, rotary):
    """Rotary positions as TransformerLens applies them: row p of x [n, d_head] (the query or key
    at position p) has pair i of its first `dim` dimensions rotated by p / base^(i / (dim/2)):
    (a, b) ↦ (a cos − b sin, b cos + a sin), the pair (i, i + dim/2) for "neox", (2i, 2i + 1) for
    "gptj"; dimensions past `dim` unchanged."""
    half = rotary["dim"] // 2
    i = np.arange(half)
    angles = np.arange(x.shape[0], dtype=np.float64)[:, None] / np.float64(rotary["base"]) ** (i / half)
    a, b = (i, i + half) if rotary["style"] == "neox" else (2 * i, 2 * i + 1)
    cos, sin = np.cos(angles), np.sin(angles)
    out = x.copy()
    out[:, a] = x[:, a] * cos - x[:, b] * sin
    out[:, b] = x[:, b] * cos + x[:, a] * sin
    return out


def attn_scale(layer, d_head):
    """What a layer's q·k is divided by: its declared `scale`, else sqrt(d_head)."""
    scale = MODEL["layers"][layer]["scale"]
    return math.sqrt(d_head) if scale is None else scale


def activation(name, x):
    """An elementwise MLP nonlinearity as TransformerLens computes it: `gelu` exact
    (0.5·x·(1 + erf(x/√2))), `gelu_new` and `gelu_pytorch_tanh` the tanh approximation
    0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), `gelu_fast` 0.5·x·(1 + tanh(0.7978845608·x·(1 +
    0.044715·x²))), `silu` x·sigmoid(x)."""
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "gelu_fast":
        return 0.5 * x * (1.0 + np.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown activation {name}")


def mlp_activation(w, l, mlp, pre):
    """MLP l's activation on its pre-activation rows [n, d_mlp]: elementwise (`activation`), or
    for `solu_ln` x ⊙ softmax(x) over each row's neurons, then the MLP's inner norm (weights
    `blocks.{l}.mlp.ln.w`, `.b`; none for `ln = pre`)."""
    if mlp["act"] != "solu_ln":
        return activation(mlp["act"], pre)
    e = np.exp(pre - pre.max(axis=1, keepdims=True))
    solu = pre * (e / e.sum(axis=1, keepdims=True))
    return apply_norm(w, f"blocks.{l}.mlp.ln", mlp["inner_norm"], solu)[0]


def run_mlp(w, l, mlp, y):
    """MLP l on its (normalised) input rows y: act(y·W_in + b_in)·W_out, or gated (TransformerLens's
    GatedMLP) (act(y·W_gate + b_gate) ⊙ (y·W_in + b_lin) + b_in)·W_out; without b_out."""
    name = f"blocks.{l}.mlp."
    if not mlp["gated"]:
        pre = y @ w[name + "W_in"] + w[name + "b_in"]
        return mlp_activation(w, l, mlp, pre) @ w[name + "W_out"]
    pre = y @ w[name + "W_gate"] + w[name + "b_gate"]
    linear = y @ w[name + "W_in"] + w[name + "b_lin"]
    return (mlp_activation(w, l, mlp, pre) * linear + w[name + "b_in"]) @ w[name + "W_out"]


class Forward:
    """What a forward pass records: `tokens`, `attention_mask` (None without one), `logits`
    [n, d_vocab_out], `patterns[l]` [heads, n, n] (the frozen `A`), `scores[l]` [heads, n, n]
    (q·kᵀ/scale before any mask), the norm scales σ per position (`scale_attn[l]` of ln1,
    `scale_mlp[l]` of the norm the MLP reads, ln2 or the shared ln1, `scale_final`; None without
    that norm) and `mlp_out[l]` [n, d_model] (the MLP's output without b_out, the source `M^{l}`;
    None without an MLP)."""

    def __init__(self, tokens, attention_mask=None):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.attention_mask = None if attention_mask is None else [bool(m) for m in attention_mask]
        self.patterns, self.scores, self.scale_attn, self.scale_mlp, self.mlp_out = [], [], [], [], []
        self.scale_final = None
        self.logits = None


def forward(w, tokens, attention_mask=None):
    """Runs the model on `tokens` as TransformerLens does (weights `w` as loaded, or folded).

    resid = W_E[tokens] + W_pos[:n] (no W_pos with shortformer positions); per layer
    x = N1(resid) (`normalise`: the norm's kind), q = x·W_Q + b_Q (k, v alike, by the head's
    key/value group; shortformer: q += W_pos[:n]·W_Q as stored, k alike; rotary: q, k rotated by
    position), A = softmax of q·kᵀ/scale over the keys each query may see (`attended`: causal or
    not, the attention mask), resid += Σ_h A·v·W_O + b_O; with an MLP y = N2(resid) (a parallel
    layer: N2 of the layer's input, or x itself when the MLP shares ln1), resid += MLP(y) + b_out
    (`run_mlp`: gated or not, solu_ln's inner norm); logits = N_final(resid)·W_U + b_U.
    `attention_mask`: one 0 or 1 per token, a 0 key attended to by no query (TransformerLens's
    attention_mask on the keys, positions unchanged).
    """
    f = Forward(tokens, attention_mask)
    n = len(f.tokens)
    if attention_mask is not None:
        check_attention_mask(f.attention_mask, n)
    resid = w["embed.W_E"][f.tokens]
    positions = w["pos_embed.W_pos"][:n] if MODEL["pos_embed"] else None
    if MODEL["pos_embed"] == "standard":
        resid = resid + positions
    for l, layer in enumerate(MODEL["layers"]):
        resid_pre = resid
        x, scale = apply_norm(w, f"blocks.{l}.ln1", layer["ln1"], resid)
        f.scale_attn.append(scale)
        attn = f"blocks.{l}.attn."
        keep = attended(n, layer["causal"], f.attention_mask)
        patterns, scores = [], []
        for h in range(layer["heads"]):
            g = kv_group(l, h)
            q = x @ w[attn + "W_Q"][h] + w[attn + "b_Q"][h]
            k = x @ w[attn + "W_K"][g] + w[attn + "b_K"][g]
            v = x @ w[attn + "W_V"][g] + w[attn + "b_V"][g]
            if MODEL["pos_embed"] == "shortformer":
                q = q + positions @ w[attn + "W_Q_pos"][h]
                k = k + positions @ w[attn + "W_K_pos"][g]
            if layer["rotary"] is not None:
                q, k = rotate(q, layer["rotary"]), rotate(k, layer["rotary"])
            s = (q @ k.T) / attn_scale(l, q.shape[1])
            pattern = masked_softmax(s, keep)
            scores.append(s)
            patterns.append(pattern)
            resid = resid + (pattern @ v) @ w[attn + "W_O"][h]
        f.patterns.append(np.array(patterns))
        f.scores.append(np.array(scores))
        resid = resid + w[attn + "b_O"]
        mlp, scale, out = layer["mlp"], None, None
        if mlp is not None:
            if layer["shared_norm"]:
                y, scale = x, f.scale_attn[l]
            else:
                y, scale = apply_norm(w, f"blocks.{l}.ln2", mlp["ln2"], resid_pre if layer["parallel"] else resid)
            out = run_mlp(w, l, mlp, y)
            resid = resid + out + w[f"blocks.{l}.mlp.b_out"]
        f.scale_mlp.append(scale)
        f.mlp_out.append(out)
    resid, f.scale_final = apply_norm(w, "ln_final", MODEL["ln_final"], resid)
    f.logits = resid @ w["unembed.W_U"] + w["unembed.b_U"]
    return f


# ---------------------------------------------------------------------------------------------
# The steps a path is made of (row layout: a term P ⊗ M contributes P · X_s · Mᵀ; `w` folded)
# ---------------------------------------------------------------------------------------------


def scaled(x, scale):
    """diag(1/σ)·x: a norm's frozen scale N on the position side (x itself without one); σ of a
    LayerNorm, the RMS of an RMSNorm."""
    return x if scale is None else x / scale[:, None]


def constant_rows(f, row):
    """A constant source (a bias) at every position, [n, len(row)]."""
    return np.tile(row, (len(f.tokens), 1))


def token_rows(w, f):
    """W_E: the tokens' embedding rows, [n, d_model]."""
    return w["embed.W_E"][f.tokens]


def position_rows(w, f):
    """W_P: the positional embedding's first n rows, [n, d_model]."""
    return w["pos_embed.W_pos"][: len(f.tokens)]


def mlp_output(f, layer):
    """M^{layer}: the MLP's recorded output (without b_out), [n, d_model]: an opaque source, gated
    or not, in sequence or parallel (a parallel layer's MLP output enters after its heads, as a
    sequential one's does)."""
    return f.mlp_out[layer]


def through_head(w, f, x, layer, head):
    """(A^{l.h}·N^{ln1.l}) ⊗ W_OV^{l.h}: x ↦ A · diag(1/σ_ln1) · x · W_V'·W_O (no N without ln1),
    W_V' the head's key/value group's."""
    read = scaled(x, f.scale_attn[layer])
    attn = f"blocks.{layer}.attn."
    w_v = w[attn + "W_V"][kv_group(layer, head)]
    return f.patterns[layer][head] @ ((read @ w_v) @ w[attn + "W_O"][head])


def value_bias(w, f, layer, head):
    """A^{l.h} ⊗ W_O^{l.h}·b_V^{l.h}: the (folded) value bias of the head's key/value group,
    moved by the head's own pattern."""
    attn = f"blocks.{layer}.attn."
    b_v = w[attn + "b_V"][kv_group(layer, head)]
    return f.patterns[layer][head] @ constant_rows(f, b_v @ w[attn + "W_O"][head])


def unembed(w, f, x):
    """N^{final} ⊗ W_U: x ↦ diag(1/σ_final) · x · W_U' (no N without a final norm)."""
    return scaled(x, f.scale_final) @ w["unembed.W_U"]


def unembed_bias(w, f):
    """Id ⊗ b_U: the (folded) unembedding bias at every position, the constant part of the logits."""
    return constant_rows(f, w["unembed.b_U"])


# ---------------------------------------------------------------------------------------------
# Statistics of the weights (no vocab × vocab matrix; TransformerLens's definitions)
# ---------------------------------------------------------------------------------------------

BASELINE_SAMPLES = 64
BASELINE_SEED = 0x7061_7468_635F_6261  # "pathc_ba"
_MASK64 = (1 << 64) - 1


def _heads(w):
    """Every query head's W_Q, W_K, W_V, W_O (W_K and W_V its key/value group's), in layer then
    head order."""
    for l, layer in enumerate(MODEL["layers"]):
        attn = f"blocks.{l}.attn."
        for h in range(layer["heads"]):
            g = kv_group(l, h)
            yield l, h, {"W_Q": w[attn + "W_Q"][h], "W_K": w[attn + "W_K"][g], "W_V": w[attn + "W_V"][g], "W_O": w[attn + "W_O"][h]}


def shared_products(w):
    """G_E = W_Eᵀ·W_E, G_U = W_U·W_Uᵀ, P = W_U·W_E (d_model × d_model; only when W_U has d_vocab
    outputs): the only products whose cost grows with d_vocab, shared by every head."""
    w_e, w_u = w["embed.W_E"], w["unembed.W_U"]
    shared = {"G_E": w_e.T @ w_e, "G_U": w_u @ w_u.T}
    if w_u.shape[1] == w_e.shape[0]:
        shared["P"] = w_u @ w_e
    return shared


def ov_copying_undefined(w):
    """Why the OV copying score is not defined for these weights (None when it is): with
    d_vocab_out ≠ d_vocab the full OV circuit is not square, so it has no eigenvalues."""
    d_vocab, d_vocab_out = w["embed.W_E"].shape[0], w["unembed.W_U"].shape[1]
    if d_vocab_out == d_vocab:
        return None
    return (
        f"the full OV circuit W_E·W_OV·W_U is d_vocab × d_vocab_out = {d_vocab} × {d_vocab_out}, "
        f"not square, so it has no eigenvalues (set by unembed(d_vocab_out = {d_vocab_out}))"
    )


def copying_score(m):
    """Σ Re λ / Σ |λ| over the eigenvalues of m; 0 when every eigenvalue is 0."""
    eig = np.linalg.eigvals(m)
    total = np.abs(eig).sum()
    return 0.0 if total == 0.0 else float(eig.real.sum() / total)


def ov_copying(head, shared):
    """Copying score of the full OV circuit W_E·W_V·W_O·W_U (vocab × vocab): Σ Re λ / Σ |λ|.

    Its nonzero eigenvalues are those of the d_head × d_head matrix W_O·(W_U·W_E)·W_V.
    """
    return copying_score(head["W_O"] @ (shared["P"] @ head["W_V"]))


def qk_copying(head, shared):
    """Copying score of the full QK circuit W_E·W_Q·W_Kᵀ·W_Eᵀ (without 1/√d_head), from the
    eigenvalues of the d_head × d_head matrix W_Kᵀ·(W_Eᵀ·W_E)·W_Q."""
    return copying_score(head["W_K"].T @ (shared["G_E"] @ head["W_Q"]))


def ov_frobenius(head, shared):
    """‖W_E·W_V·W_O·W_U‖_F, as sqrt tr(W_Vᵀ·G_E·W_V · W_O·G_U·W_Oᵀ) (‖AB‖² = tr(AᵀA·BBᵀ))."""
    gram_v = head["W_V"].T @ (shared["G_E"] @ head["W_V"])
    gram_o = head["W_O"] @ (shared["G_U"] @ head["W_O"].T)
    return math.sqrt(max(float((gram_v * gram_o).sum()), 0.0))


def qk_frobenius(head, shared):
    """‖W_E·W_Q·W_Kᵀ·W_Eᵀ‖_F (without 1/√d_head), as sqrt tr(W_Qᵀ·G_E·W_Q · W_Kᵀ·G_E·W_K)."""
    gram_q = head["W_Q"].T @ (shared["G_E"] @ head["W_Q"])
    gram_k = head["W_K"].T @ (shared["G_E"] @ head["W_K"])
    return math.sqrt(max(float((gram_q * gram_k).sum()), 0.0))


def r_factor(x):
    """R of a thin QR factorisation x = Q·R: xᵀx = RᵀR, so ‖x·y‖_F = ‖R·y‖_F, ‖y·xᵀ‖_F = ‖y·Rᵀ‖_F."""
    return np.linalg.qr(x, mode="r")


def _score(left, right):
    """‖left·right‖_F / (‖left‖_F ‖right‖_F), 0 when the denominator is 0."""
    denominator = np.linalg.norm(left) * np.linalg.norm(right)
    return 0.0 if denominator == 0.0 else float(np.linalg.norm(left @ right) / denominator)


def composition_scores(w, mode):
    """TransformerLens's all_composition_scores(mode), [layer_left][head_left][layer_right][head_right]:

        ‖W_V W_O^{left} · R^{right}‖_F / (‖W_V W_O^{left}‖_F ‖R^{right}‖_F)

    with R = W_Q·W_Kᵀ (mode "Q"), W_K·W_Qᵀ ("K") or W_V·W_O ("V") of the right head; zero unless
    layer_left < layer_right. In factored form: the left matrix as R(W_V)·W_O (d_head × d_model),
    the right one as W_Q·R(W_K)ᵀ, W_K·R(W_Q)ᵀ or W_V·R(W_Oᵀ)ᵀ (d_model × d_head).
    """
    heads = list(_heads(w))
    left = {(l, h): r_factor(m["W_V"]) @ m["W_O"] for l, h, m in heads}
    second = {"Q": ("W_Q", "W_K"), "K": ("W_K", "W_Q"), "V": ("W_V", None)}[mode]
    right = {}
    for l, h, m in heads:
        other = m["W_O"].T if second[1] is None else m[second[1]]
        right[(l, h)] = m[second[0]] @ r_factor(other).T
    sizes = [layer["heads"] for layer in MODEL["layers"]]
    out = [[[[0.0] * n2 for n2 in sizes] for _ in range(n1)] for n1 in sizes]
    for (l1, h1), a in left.items():
        for (l2, h2), b in right.items():
            if l1 < l2:
                out[l1][h1][l2][h2] = _score(a, b)
    return out


def _splitmix64(seed, count, start):
    """Outputs start+1 .. start+count of SplitMix64 seeded with `seed` (the k-th output mixes
    seed + k·0x9E3779B97F4A7C15), as uint64."""
    k = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    z = np.uint64(seed) + k * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def deterministic_ln(x):
    """ln x for positive normal x from + − × / and bits only (pathc's `deterministic_ln`):
    x = m·2^e, m ∈ [√½, √2), ln m = 2 atanh z = 2(z + z³/3 + …), z = (m − 1)/(m + 1), 13 terms."""
    bits = x.view(np.uint64)
    e = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    m = ((bits & np.uint64((1 << 52) - 1)) | np.uint64(1023 << 52)).view(np.float64)
    big = m >= math.sqrt(2.0)
    m = np.where(big, m * 0.5, m)
    e = e + big
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    series = np.zeros_like(z)
    for k in range(12, -1, -1):
        series = series * z2 + 1.0 / (2 * k + 1)
    return 2.0 * z * series + e.astype(np.float64) * math.log(2.0)


def standard_normals(count, seed=BASELINE_SEED):
    """The first `count` normals of pathc's generator: Marsaglia's polar method on SplitMix64
    uniforms (x >> 11)·2⁻⁵² − 1 ∈ [−1, 1); a pair (u, v) with 0 < s = u² + v² < 1 gives
    u·f, v·f with f = sqrt(−2 ln s / s), in that order; other pairs are skipped."""
    parts, have, used = [], 0, 0
    while have < count:
        pairs = max(1024, int((count - have) * 0.65) + 64)
        uniforms = (_splitmix64(seed, 2 * pairs, used) >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0
        used += 2 * pairs
        u, v = uniforms[0::2], uniforms[1::2]
        s = u * u + v * v
        keep = (s > 0.0) & (s < 1.0)
        u, v, s = u[keep], v[keep], s[keep]
        factor = np.sqrt(-2.0 * deterministic_ln(s) / s)
        parts.append(np.column_stack([u * factor, v * factor]).ravel())
        have += 2 * len(s)
    return np.concatenate(parts)[:count]


def composition_baseline(d_model, d_left, d_right, samples=BASELINE_SAMPLES):
    """The mean composition score of `samples` pairs of random matrices (the paper's baseline):

        mean ‖V·O · A·B‖_F / (‖V·O‖_F ‖A·B‖_F)

    V [d_model, d_left], O [d_left, d_model], A [d_model, d_right], B [d_right, d_model] standard
    normal, filled row by row in that order per sample from `standard_normals` (pathc's fixed-seed
    draws, so the same number as `pathc stats`).
    """
    if samples == 0:
        return 0.0
    shapes = [(d_model, d_left), (d_left, d_model), (d_model, d_right), (d_right, d_model)]
    sizes = [rows * cols for rows, cols in shapes]
    draws = standard_normals(samples * sum(sizes))
    total, at = 0.0, 0
    for _ in range(samples):
        v, o, a, b = [], [], [], []
        for matrix, size, shape in zip((v, o, a, b), sizes, shapes):
            matrix.append(draws[at : at + size].reshape(shape))
            at += size
        total += _score(r_factor(v[0]) @ o[0], a[0] @ r_factor(b[0].T).T)
    return total / samples


def statistics(w, weight_processing):
    """Every statistic, as `pathc stats --format json` prints them.

    The statistics are of the weights alone, position-free: a rotary head's QK circuit is the one
    at offset 0 (the rotation is the identity there), TransformerLens's. A grouped-query head
    reads its key/value group's W_K and W_V. `--fold-ln` folds as `fold_layer_norm` does, for
    every kind of norm (an RMSNorm's readers are scaled, not centred). A statistic that is not
    defined for these weights is left out and its reason given under `not_defined` (`ov_copying`
    when d_vocab_out ≠ d_vocab).
    """
    shared = shared_products(w)
    sizes = [layer["heads"] for layer in MODEL["layers"]]
    not_defined = {}
    reason = ov_copying_undefined(w)
    if reason is not None:
        not_defined["ov_copying"] = reason
    names = [s for s in ("ov_copying", "qk_copying", "ov_frobenius", "qk_frobenius") if s not in not_defined]
    per_head = {name: [[0.0] * n for n in sizes] for name in names}
    for l, h, head in _heads(w):
        if "ov_copying" in per_head:
            per_head["ov_copying"][l][h] = ov_copying(head, shared)
        per_head["qk_copying"][l][h] = qk_copying(head, shared)
        per_head["ov_frobenius"][l][h] = ov_frobenius(head, shared)
        per_head["qk_frobenius"][l][h] = qk_frobenius(head, shared)
    comp = {mode: composition_scores(w, mode) for mode in "QKV"}
    d_model = w["embed.W_E"].shape[1]
    d_heads = [w[f"blocks.{l}.attn.W_Q"].shape[2] for l in range(len(sizes))]
    baselines = {}

    def baseline(d_left, d_right):
        if (d_left, d_right) not in baselines:
            baselines[(d_left, d_right)] = composition_baseline(d_model, d_left, d_right)
        return baselines[(d_left, d_right)]

    reference = baseline(d_heads[0], d_heads[0]) if d_heads else 0.0

    def minus_baseline(scores):
        return [
            [[[x - baseline(d_heads[l1], d_heads[l2]) if l1 < l2 else x for x in row] for l2, row in enumerate(rights)] for rights in per_left]
            for l1, per_left in enumerate(scores)
        ]

    out = {
        "weight_processing": weight_processing,
        # NumPy's float64 products throughout: `pathc stats --precision f64`.
        "precision": "f64",
        **per_head,
        "comp_q": comp["Q"],
        "comp_k": comp["K"],
        "comp_v": comp["V"],
        "comp_baseline": {"q": reference, "k": reference, "v": reference, "samples": BASELINE_SAMPLES},
        "comp_q_minus_baseline": minus_baseline(comp["Q"]),
        "comp_k_minus_baseline": minus_baseline(comp["K"]),
        "comp_v_minus_baseline": minus_baseline(comp["V"]),
    }
    if not_defined:
        out["not_defined"] = not_defined
    if any(layer["rotary"] is not None for layer in MODEL["layers"]):
        # As `pathc stats` says it: the QK statistics of a rotary model are at offset 0 (R = Id).
        out["rotary_offset"] = 0
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def all_paths(w, f):
    """Every selected path, in pathc's path order: (name, order, logits [n, d_vocab_out])."""
    for family in FAMILIES:
        yield from family(w, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a TransformerLens state_dict (safetensors, or npz)")
    parser.add_argument("--tokens", help="token ids, comma-separated: 3,7,1")
    parser.add_argument("--pos", default="last", help="a position, `last` (default) or `all`")
    parser.add_argument(
        "--attention-mask",
        nargs="+",
        metavar="0,1,...",
        help="key mask, one 0 or 1 per token: no query attends to a 0 key; queries and positions are unchanged",
    )
    parser.add_argument("--stats", action="store_true", help="print the weights' statistics instead")
    parser.add_argument(
        "--fold-ln",
        action="store_true",
        help="fold every norm's weight and bias into what reads it (TransformerLens fold_ln); with --stats, before the statistics",
    )
    parser.add_argument(
        "--center-writing-weights",
        action="store_true",
        help="subtract the mean over d_model from everything that writes the residual stream (TransformerLens center_writing_weights; needs LayerNorms everywhere)",
    )
    parser.add_argument(
        "--center-unembed",
        action="store_true",
        help="subtract the mean over the outputs from W_U and b_U (TransformerLens center_unembed: every position's logits shift by a constant)",
    )
    parser.add_argument(
        "--fold-value-biases", action="store_true", help="move every head's b_V·W_O into b_O (TransformerLens fold_value_biases)"
    )
    parser.add_argument(
        "--process-weights", action="store_true", help="all four, as TransformerLens's from_pretrained does by default"
    )
    args = parser.parse_args(argv)
    steps = [step for step in PROCESSING_STEPS if args.process_weights or getattr(args, step)]
    if args.stats and [step for step in steps if step != "fold_ln"]:
        flag = "--process-weights" if args.process_weights else "--" + [s for s in steps if s != "fold_ln"][0].replace("_", "-")
        sys.exit(f"error: {flag} processes the weights of the paths; --stats takes only --fold-ln (`pathc stats` takes every step)")
    try:
        raw = load_weights(args.weights)
    except (OSError, WeightError) as e:
        sys.exit(f"error: {e}")
    if args.stats:
        weights, processing = (fold_layer_norm(raw), "fold_ln") if args.fold_ln else (raw, "as_given")
        json.dump(statistics(weights, processing), sys.stdout, indent=2)
        print()
        return
    if args.tokens is None:
        sys.exit("error: --tokens is needed (or --stats)")
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        sys.exit(f"error: --tokens takes comma-separated token ids, not `{args.tokens}`")
    d_vocab = raw["embed.W_E"].shape[0]
    bad = [(i, t) for i, t in enumerate(tokens) if not 0 <= t < d_vocab]
    if bad:
        sys.exit(f"error: token {bad[0][1]} at position {bad[0][0]} is out of range: d_vocab is {d_vocab}")
    if MODEL["pos_embed"] and len(tokens) > raw["pos_embed.W_pos"].shape[0]:
        sys.exit(f"error: {len(tokens)} tokens are more than the context length n_ctx = {raw['pos_embed.W_pos'].shape[0]}")
    n = len(tokens)
    mask = None
    if args.attention_mask is not None:
        mask = [m for part in args.attention_mask for m in part.split(",")]
        bad = [m for m in mask if m not in ("0", "1")]
        if bad:
            sys.exit(f"error: --attention-mask: an attention mask entry is 0 or 1, not `{bad[0]}`")
        mask = [m == "1" for m in mask]
    if args.pos == "all":
        position = None
    elif args.pos == "last":
        position = n - 1
    elif args.pos.isdigit() and int(args.pos) < n:
        position = int(args.pos)
    else:
        sys.exit(f"error: --pos takes a position below {n}, `last` or `all`, not `{args.pos}`")
    try:
        processed = process_weights(raw, steps)
    except ProcessingError as e:
        sys.exit(f"error: cannot apply {e}")
    try:
        f = forward(processed, tokens, mask)
    except InputError as e:
        sys.exit(f"error: {e}")
    w = fold_layer_norm(processed)
    paths = []
    for name, order, logits in all_paths(w, f):
        rows = logits if position is None else logits[position]
        paths.append({"logits": rows.tolist(), "name": name, "order": order})
    out = {
        "max_order": MAX_ORDER,
        "model": MODEL["name"],
        "paths": paths,
        "position": "all" if position is None else position,
        "tokens": tokens,
    }
    json.dump(out, sys.stdout, separators=(",", ":"))
    print()
