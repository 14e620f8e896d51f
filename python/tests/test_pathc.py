"""The Python package against the command line's JSON on the fixtures, bit for bit (JSON floats
round-trip exactly); weights from a dict of numpy arrays and from a duck-typed stand-in for a
TransformerLens HookedTransformer against the file; errors with the command line's text.

Run from the repository root with the package installed (`pip install ./python`) and
`PATHC_BIN` the built `pathc` binary (default `target/debug/pathc`)."""

import json
import os
import struct
import subprocess
import types

import numpy as np
import pytest

import pathc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PATHC_BIN", os.path.join(ROOT, "target", "debug", "pathc"))
ATTN2 = (os.path.join(ROOT, "examples", "attn2.tf"), os.path.join(ROOT, "tests", "fixtures", "attn2", "model.safetensors"))
FULL2 = (os.path.join(ROOT, "examples", "full2.tf"), os.path.join(ROOT, "tests", "fixtures", "full2", "model.safetensors"))
TOKENS = [5, 17, 42, 8, 5, 17, 42, 8, 30, 1, 5, 17]


def cli(*args):
    out = subprocess.run([BIN, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def read_safetensors(path):
    """A safetensors file's tensors as numpy arrays (the format is an 8-byte header length, a JSON
    header and the raw data): no safetensors package needed."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    dtypes = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BOOL": np.bool_}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = data[8 + n + start : 8 + n + end]
        out[name] = np.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def test_the_binary_and_the_package_are_there():
    assert os.path.exists(BIN), f"no pathc binary at {BIN}: build it (cargo build) or set PATHC_BIN"
    assert hasattr(pathc, "Model")


def test_count_and_expand_match_the_cli():
    model = pathc.Model.from_file(ATTN2[0])
    expected = cli("count", ATTN2[0], "--qk", "--format", "json")
    got = model.count(qk=True)
    assert [str(c) for c in got["logits"]] == expected["paths"]["by_order"]
    assert [str(c) for c in got["scores"]] == expected["qk"]["by_order"]
    paths = model.expand()
    assert len(paths) == int(expected["paths"]["total"])
    names = [p.name for p in paths]
    assert names[:3] == ["E", "P", "E/L0H0"]
    p = paths[names.index("E/L0H1/L1H2")]
    assert (p.order, p.source, p.heads) == (2, "E", [(0, 1), (1, 2)])
    assert p.formula == "(A^{1.2}·A^{0.1}) ⊗ (W_U·W_OV^{1.2}·W_OV^{0.1}·W_E)"
    assert p._repr_latex_().startswith("$") and "W_{OV}" in p.latex


def table_by_name(rows):
    return {r["name"]: r["target_logits"] for r in rows}


@pytest.mark.parametrize("fixture", [ATTN2, FULL2])
@pytest.mark.parametrize("target,group", [(42, None), ("next", None), (42, "head"), ("next", "component")])
def test_paths_match_the_cli_bit_for_bit(fixture, target, group):
    model_file, weights_file = fixture
    model = pathc.Model.from_file(model_file)
    weights = pathc.Weights.from_file(weights_file)
    got = model.paths(weights, TOKENS, target=target, group=group)
    args = ["paths", model_file, "--weights", weights_file, "--tokens", ",".join(map(str, TOKENS))]
    args += ["--target", str(target), "--format", "json"] + (["--group", group] if group else [])
    expected = cli(*args)
    assert got["positions"] == expected["positions"]
    assert got["target_tokens"] == expected["target_tokens"]
    assert got["forward_target_logits"].tolist() == expected["forward_target_logits"]
    rows = table_by_name(expected["paths"])
    assert sorted(got["names"]) == sorted(rows)
    for name, values in zip(got["names"], got["values"]):
        assert values.tolist() == rows[name], name


def test_check_matches_the_cli():
    model = pathc.Model.from_file(FULL2[0])
    got = model.check(pathc.Weights.from_file(FULL2[1]), TOKENS)
    expected = cli("check", FULL2[0], "--weights", FULL2[1], "--tokens", ",".join(map(str, TOKENS)), "--format", "json")
    assert got == expected
    assert got["max_abs_error"] < 1e-9


def test_a_dict_of_arrays_gives_the_numbers_of_the_file():
    model = pathc.Model.from_file(FULL2[0])
    arrays = {k: v for k, v in read_safetensors(FULL2[1]).items() if v.dtype != np.bool_}
    from_file = model.paths(pathc.Weights.from_file(FULL2[1]), TOKENS, target="next")
    from_dict = model.paths(pathc.Weights.from_dict(arrays), TOKENS, target="next")
    assert from_dict["names"] == from_file["names"]
    assert np.array_equal(from_dict["values"], from_file["values"])


class _Tensor:
    """What torch tensors offer that from_hooked_transformer uses."""

    def __init__(self, array):
        self.array = array

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


def test_a_duck_typed_hooked_transformer():
    meta = json.load(open(os.path.join(ROOT, "tests", "fixtures", "attn2", "meta.json")))
    cfg = types.SimpleNamespace(**meta["config"], eps=1e-5, d_vocab_out=-1, parallel_attn_mlp=False, gated_mlp=False)
    arrays = read_safetensors(ATTN2[1])
    stand_in = types.SimpleNamespace(cfg=cfg, state_dict=lambda: {k: _Tensor(v) for k, v in arrays.items()})
    model, weights = pathc.from_hooked_transformer(stand_in, name="attn2")
    assert "attn(heads = 4)" in pathc.model_source(cfg, "attn2", attn_bias=False)
    got = model.paths(weights, TOKENS, target=42)
    expected = pathc.Model.from_file(ATTN2[0]).paths(pathc.Weights.from_file(ATTN2[1]), TOKENS, target=42)
    assert got["names"] == expected["names"]  # zero biases are not declared: the same 50 paths
    assert np.array_equal(got["values"], expected["values"])


def test_errors_carry_the_cli_diagnostics():
    with pytest.raises(pathc.PathcError) as e:
        pathc.Model.from_source("model x\ndim d_model = 4\nembed\nunembd\n", "bad.tf")
    assert "bad.tf:4:1" in str(e.value) and "^^^^^^" in str(e.value)
    model = pathc.Model.from_file(ATTN2[0])
    weights = pathc.Weights.from_file(ATTN2[1])
    with pytest.raises(pathc.PathcError, match="token 99 at position 0 is out of range: d_vocab is 50"):
        model.paths(weights, [99], target=1)
    with pytest.raises(pathc.PathcError, match="no tensor|missing|not found"):
        pathc.Model.from_file(FULL2[0]).paths(weights, TOKENS, target=1)


def test_to_pandas():
    pd = pytest.importorskip("pandas")
    model = pathc.Model.from_file(ATTN2[0])
    frame = pathc.to_pandas(model.paths(pathc.Weights.from_file(ATTN2[1]), TOKENS, target=42))
    assert isinstance(frame, pd.DataFrame) and frame.shape == (50, 3)


@pytest.mark.parametrize("pos", [None, 3, "all"])
def test_scores_match_the_cli_bit_for_bit(pos):
    model = pathc.Model.from_file(FULL2[0])
    got = model.scores(pathc.Weights.from_file(FULL2[1]), TOKENS, "L1H2", pos=pos)
    args = ["scores", FULL2[0], "--weights", FULL2[1], "--tokens", ",".join(map(str, TOKENS)), "--head", "L1H2"]
    expected = cli(*args, "--format", "json", *(["--pos", str(pos)] if pos is not None else []))
    assert got["max_abs_error"] == expected["max_abs_error"] and got["max_abs_error"] < 1e-9
    rows = {t["name"]: t["scores"] for t in expected["terms"]}
    assert sorted(t["name"] for t in got["terms"]) == sorted(rows)
    for term in got["terms"]:
        assert isinstance(term["scores"], np.ndarray)
        assert term["scores"].tolist() == rows[term["name"]], term["name"]
    with pytest.raises(pathc.PathcError, match="L5H0 is not a head"):
        model.scores(pathc.Weights.from_file(FULL2[1]), TOKENS, "L5H0")


@pytest.mark.parametrize("flags", [{}, {"process_weights": True}, {"precision": "f64"}])
def test_stats_match_the_cli_bit_for_bit(flags):
    model = pathc.Model.from_file(FULL2[0])
    got = model.stats(pathc.Weights.from_file(FULL2[1]), **flags)
    args = [f"--{k.replace('_', '-')}" if v is True else f"--{k}={v}" for k, v in flags.items()]
    expected = cli("stats", FULL2[0], "--weights", FULL2[1], "--format", "json", *args)
    assert expected["precision"] == flags.get("precision", "f32")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, list):
            assert isinstance(got[key], np.ndarray), key
            assert got[key].tolist() == value, key
        else:
            assert got[key] == value, key


def test_a_dataset_matches_the_cli_bit_for_bit(tmp_path):
    model_file = os.path.join(ROOT, "tests", "fixtures", "induction", "model.tf")
    weights_file = os.path.join(ROOT, "tests", "fixtures", "induction", "model.safetensors")
    data = os.path.join(ROOT, "tests", "fixtures", "induction", "dataset.jsonl")
    prompts = [json.loads(line) for line in open(data)]
    model = pathc.Model.from_file(model_file)
    weights = pathc.Weights.from_file(weights_file)
    got = model.dataset_paths(weights, prompts, group="head", per_prompt=True)
    expected = cli("paths", model_file, "--weights", weights_file, "--dataset", data, "--group", "head", "--format", "json")
    assert got["prompts"] == expected["prompts"] == 100
    assert got["metric"] == expected["metric"]
    assert got["names"] == [r["name"] for r in expected["rows"]]
    for key in ("mean", "std", "mean_abs"):
        assert got[key].tolist() == [r[key] for r in expected["rows"]], key
    assert got["values"].shape == (100, len(got["names"]))
    assert np.allclose(got["values"].sum(axis=1), got["metrics"], rtol=0, atol=1e-9)
    # Token lists with the metric given as arguments: the next token's logit.
    plain = model.dataset_paths(weights, [p["tokens"] for p in prompts[:5]], target="next")
    assert plain["prompts"] == 5 and plain["complete"] and plain["max_abs_rest"] < 1e-9
    with pytest.raises(pathc.PathcError, match="prompts:2: token 99 at position 0"):
        model.dataset_paths(weights, [[1, 2], [99]], target=1)
    with pytest.raises(pathc.PathcError, match="has no prompt"):
        model.dataset_paths(weights, [], target=1)


def test_dataset_scores_match_the_cli():
    model_file = os.path.join(ROOT, "tests", "fixtures", "induction", "model.tf")
    weights_file = os.path.join(ROOT, "tests", "fixtures", "induction", "model.safetensors")
    data = os.path.join(ROOT, "tests", "fixtures", "induction", "dataset.jsonl")
    prompts = [json.loads(line) for line in open(data)]
    model = pathc.Model.from_file(model_file)
    got = model.dataset_scores(pathc.Weights.from_file(weights_file), prompts, "L1H1", per_prompt=True)
    expected = cli("scores", model_file, "--weights", weights_file, "--dataset", data, "--head", "L1H1", "--format", "json")
    assert got["names"] == [t["name"] for t in expected["terms"]]
    assert got["difference_mean"].tolist() == [t["difference"]["mean"] for t in expected["terms"]]
    assert got["prob_linear_mean"].tolist() == [t["prob_linear"]["mean"] for t in expected["terms"]]
    assert got["difference"] == expected["difference"]
    assert got["values"].shape == (100, len(got["names"]))
    assert got["max_sum_error"] < 1e-9


def test_a_long_dataset_run_stops_on_ctrl_c():
    import signal
    import threading
    import time

    model = pathc.Model.from_file(os.path.join(ROOT, "tests", "fixtures", "induction", "model.tf"))
    weights = pathc.Weights.from_file(os.path.join(ROOT, "tests", "fixtures", "induction", "model.safetensors"))
    prompts = [[0] + [(7 * i + p) % 63 + 1 for p in range(30)] for i in range(200_000)]  # about a minute
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        model.dataset_paths(weights, prompts, target="next")
    assert time.monotonic() - start < 20


def random_attn_only(layers, heads, d_model, d_vocab, d_head, n_ctx=64, seed=0):
    """An attention-only model of the given shape and random weights (a dict of numpy arrays)."""
    source = (
        f"model slow\ndim d_model = {d_model}\ndim d_vocab = {d_vocab}\ndim n_ctx = {n_ctx}\n"
        f"dim d_head = {d_head}\nembed\npos_embed\nrepeat {layers} {{\n  layer {{ attn(heads = {heads}) }}\n}}\nunembed\n"
    )
    rng = np.random.default_rng(seed)
    arrays = {
        "embed.W_E": rng.normal(0, 0.02, (d_vocab, d_model)),
        "pos_embed.W_pos": rng.normal(0, 0.02, (n_ctx, d_model)),
        "unembed.W_U": rng.normal(0, 0.02, (d_model, d_vocab)),
    }
    for layer in range(layers):
        for name, shape in [("W_Q", (heads, d_model, d_head)), ("W_K", (heads, d_model, d_head)),
                            ("W_V", (heads, d_model, d_head)), ("W_O", (heads, d_head, d_model))]:
            arrays[f"blocks.{layer}.attn.{name}"] = rng.normal(0, 0.1, shape)
    return pathc.Model.from_source(source), pathc.Weights.from_dict(arrays)


# Calls that run for a long time uninterrupted, with how long each took on the project's machine
# (2 cores) when these tests were written: Ctrl-C after 0.5 s must stop each within 5 s. A call
# that got fast enough to finish before the signal fails the test (the KeyboardInterrupt then
# arrives outside it): make its workload bigger.
LONG_CALLS = {
    # 14 s: 145,378 paths × 63 positions.
    "paths": ((6, 8, 384, 30000, 32), lambda m, w: m.paths(w, list(range(1, 64)), target="next", max_order=4)),
    # 77 s: 2,018 paths' [48, 30000] logits.
    "check": ((6, 8, 384, 30000, 32), lambda m, w: m.check(w, list(range(1, 49)), max_order=2)),
    # 9 s: 192 heads' statistics and their 16,896 composition pairs (three modes each).
    "stats": ((12, 16, 768, 2000, 64), lambda m, w: m.stats(w)),
    # 25 s: the statistics, 144 heads' score terms and the check.
    "report": ((12, 12, 768, 2000, 64), lambda m, w: m.report(w, list(range(1, 17)), max_order=1, top_terms=2)),
    # 9 s: the score terms up to order 2 (their expansion, then L8H0's).
    "scores": ((9, 8, 384, 2000, 32), lambda m, w: m.scores(w, list(range(1, 64)), "L8H0", max_order=2)),
}


@pytest.mark.parametrize("call", sorted(LONG_CALLS))
def test_a_long_call_stops_on_ctrl_c(call):
    import signal
    import threading
    import time

    shape, run = LONG_CALLS[call]
    model, weights = random_attn_only(*shape)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run(model, weights)
    elapsed = time.monotonic() - start
    timer.join()
    assert elapsed < 5, f"{call} stopped {elapsed:.1f} s after it started, Ctrl-C at 0.5 s"
    # The model and weights are whole: the next call works.
    assert model.check(weights, [1, 2, 3], max_order=0)["paths"] == 2


def test_text_through_the_tokenizer_matches_the_cli(tmp_path):
    fixture = os.path.join(ROOT, "tests", "fixtures", "text")
    model_file, weights_file = os.path.join(fixture, "model.tf"), os.path.join(fixture, "model.safetensors")
    tokenizer_file = os.path.join(fixture, "tokenizer.json")
    tokenizer = pathc.Tokenizer.from_file(tokenizer_file)
    text = "When Mary and John went to the store, John gave a drink to"
    tokens = tokenizer.to_tokens(text)
    mary = tokenizer.to_single_token(" Mary")
    expected = cli("paths", model_file, "--weights", weights_file, "--tokenizer", tokenizer_file, "--text", text,
                   "--target", " Mary", "--format", "json")
    assert tokens == expected["tokens"]
    assert tokenizer.to_str_tokens(tokens) == expected["str_tokens"]
    assert [mary] == expected["target_tokens"]
    model = pathc.Model.from_file(model_file)
    weights = pathc.Weights.from_file(weights_file)
    got = model.paths(weights, tokens, target=mary)
    rows = table_by_name(expected["paths"])
    for name, values in zip(got["names"], got["values"]):
        assert values.tolist() == rows[name], name
    with pytest.raises(pathc.PathcError, match="is not one token"):
        tokenizer.to_single_token(" Mary and John")
    # A dataset of texts, with text targets, as the CLI reads the same file.
    prompts = [{"text": text, "target": " Mary", "against": " John"}, {"text": "John and Mary", "target": " went"}]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    got = model.dataset_paths(weights, prompts, tokenizer=tokenizer, group="head")
    expected = cli("paths", model_file, "--weights", weights_file, "--tokenizer", tokenizer_file, "--dataset", str(data),
                   "--group", "head", "--format", "json")
    assert got["mean"].tolist() == [r["mean"] for r in expected["rows"]]
    assert got["metric"] == expected["metric"]
    with pytest.raises(pathc.PathcError, match="needs a tokenizer"):
        model.dataset_paths(weights, ["John and Mary"], target=5)


def test_the_report_is_the_cli_page_and_renders_inline(tmp_path):
    import html as html_module
    import re

    fixture = os.path.join(ROOT, "tests", "fixtures", "induction")
    model_file, weights_file = os.path.join(fixture, "model.tf"), os.path.join(fixture, "model.safetensors")
    tokens = [0, 5, 9, 3, 7, 12, 5, 9, 3, 7]
    out = tmp_path / "report.html"
    subprocess.run(
        [BIN, "report", model_file, "--weights", weights_file, "--tokens", ",".join(map(str, tokens)),
         "--pos", "7", "--target", "next", "-o", str(out)],
        check=True,
    )
    model = pathc.Model.from_file(model_file)
    report = model.report(pathc.Weights.from_file(weights_file), tokens, target="next", pos=7)
    assert report.html == out.read_text(encoding="utf-8")
    frame = report._repr_html_()
    srcdoc = re.fullmatch(r'<iframe class="pathc-report" srcdoc="([^"]*)" .*></iframe>', frame, re.S)
    assert srcdoc and html_module.unescape(srcdoc.group(1)) == report.html
    saved = tmp_path / "saved.html"
    report.save(saved)
    assert saved.read_text(encoding="utf-8") == report.html
    # The top prediction by default; the same page as the CLI's without --target.
    default = tmp_path / "default.html"
    subprocess.run(
        [BIN, "report", model_file, "--weights", weights_file, "--tokens", ",".join(map(str, tokens)), "-o", str(default)],
        check=True,
    )
    assert model.report(pathc.Weights.from_file(weights_file), tokens).html == default.read_text(encoding="utf-8")
    with pytest.raises(pathc.PathcError, match="a report explains one position"):
        model.report(pathc.Weights.from_file(weights_file), tokens, pos="all")
