"""pathc from Python: compile a model file, expand it into its sum of paths, and evaluate every
path against real weights, with the numbers pathc's command line prints.

    >>> import pathc
    >>> model = pathc.Model.from_file("examples/attn2.tf")
    >>> weights = pathc.Weights.from_file("tests/fixtures/attn2/model.safetensors")
    >>> table = model.paths(weights, [5, 17, 42, 8], target=42)
    >>> pathc.to_pandas(table).head()

Errors raise :class:`PathcError` with the command line's text (``file:line:col`` and a caret);
long calls release the GIL and stop on Ctrl-C (``KeyboardInterrupt``).
"""

from ._pathc import Model, Path, PathcError, Report, Tokenizer, Weights

__all__ = ["Model", "Path", "PathcError", "Report", "Tokenizer", "Weights", "from_hooked_transformer", "to_pandas", "model_source"]


def to_pandas(table):
    """A ``model.paths(...)`` result as a pandas DataFrame: one row per path (or group), one column
    per target position (``logit[p]``), plus ``order`` and ``paths``. Needs pandas."""
    import pandas as pd

    columns = [f"logit[{p}]" for p in table["positions"]]
    frame = pd.DataFrame(table["values"], index=table["names"], columns=columns)
    frame.insert(0, "order", table["orders"])
    frame.insert(1, "paths", table["paths"])
    frame.index.name = "path"
    return frame


def _cfg(cfg, key, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def model_source(cfg, name="model", attn_bias=True, mlp_bias=True, unembed_bias=True):
    """The model file of a TransformerLens ``HookedTransformerConfig`` (or a dict of its fields):
    standard or no positions, LayerNorm/RMS kinds TransformerLens names, attention-only or MLPs,
    biases declared where asked (TransformerLens always stores them; :func:`from_hooked_transformer`
    declares those that are not all zero). Raises :class:`PathcError` for what it does not
    model here (rotary, shortformer, parallel, gated MLPs: write the file by hand or use
    ``pathc import`` on a HuggingFace folder)."""
    positional = _cfg(cfg, "positional_embedding_type", "standard")
    if positional not in ("standard",):
        raise PathcError(f"from_hooked_transformer: positional_embedding_type {positional!r} is not supported here")
    for key in ("parallel_attn_mlp", "gated_mlp"):
        if _cfg(cfg, key, False):
            raise PathcError(f"from_hooked_transformer: {key} is not supported here")
    norms = {"LN": "layernorm", "LNPre": "layernorm(pre)", "RMS": "rmsnorm", "RMSPre": "rmsnorm(pre)", None: None}
    kind = _cfg(cfg, "normalization_type", "LN")
    if kind not in norms:
        raise PathcError(f"from_hooked_transformer: normalization_type {kind!r} is not supported")
    norm = norms[kind]
    eps = _cfg(cfg, "eps", 1e-5)
    if norm is not None and eps != 1e-5:
        norm = norm.replace("(pre)", "") + (f"(pre, eps = {eps!r})" if "(pre)" in norm else f"(eps = {eps!r})")
    lines = [
        f"# Written by pathc.model_source from a TransformerLens config.",
        f"model {name}",
        f"dim d_model = {_cfg(cfg, 'd_model')}",
        f"dim d_vocab = {_cfg(cfg, 'd_vocab')}",
        f"dim n_ctx = {_cfg(cfg, 'n_ctx')}",
        f"dim d_head = {_cfg(cfg, 'd_head')}",
    ]
    attn_only = _cfg(cfg, "attn_only", False)
    if not attn_only:
        lines.append(f"dim d_mlp = {_cfg(cfg, 'd_mlp')}")
    lines += ["embed", "pos_embed", f"repeat {_cfg(cfg, 'n_layers')} {{", "  layer {"]
    if norm:
        lines.append(f"    {norm}")
    lines.append(f"    attn(heads = {_cfg(cfg, 'n_heads')}{', bias' if attn_bias else ''})")
    if not attn_only:
        if norm:
            lines.append(f"    {norm}")
        lines.append(f"    mlp(act = {_cfg(cfg, 'act_fn')}{', bias' if mlp_bias else ''})")
    lines += ["  }", "}"]
    if norm:
        lines.append(norm)
    d_vocab_out = _cfg(cfg, "d_vocab_out", -1)
    out = f", d_vocab_out = {d_vocab_out}" if d_vocab_out not in (-1, None, _cfg(cfg, "d_vocab")) else ""
    args = ", ".join(a for a in ["bias" if unembed_bias else "", out.lstrip(", ")] if a)
    lines.append(f"unembed({args})" if args else "unembed")
    return "\n".join(lines) + "\n"


def from_hooked_transformer(model, name="model"):
    """A live TransformerLens ``HookedTransformer`` (anything with ``cfg`` and ``state_dict()``,
    duck-typed: neither torch nor transformer_lens is imported here) as ``(Model, Weights)``: the
    model file written from ``cfg`` (:func:`model_source`), the tensors converted with
    ``.detach().cpu().numpy()``."""
    arrays = {}
    for key, tensor in model.state_dict().items():
        if hasattr(tensor, "detach"):
            tensor = tensor.detach().cpu().numpy()
        if key.endswith(".IGNORE") or key.endswith(".mask") or "hook_" in key:
            continue  # TransformerLens's causal-mask buffers, not weights
        arrays[key] = tensor

    def nonzero(suffixes):
        return any(k.endswith(suffixes) and (v != 0).any() for k, v in arrays.items())

    source = model_source(
        model.cfg,
        name,
        attn_bias=nonzero((".attn.b_Q", ".attn.b_K", ".attn.b_V", ".attn.b_O")),
        mlp_bias=nonzero((".mlp.b_in", ".mlp.b_out")),
        unembed_bias=nonzero(("unembed.b_U",)),
    )
    return Model.from_source(source, f"<{name} from cfg>"), Weights.from_dict(arrays)
