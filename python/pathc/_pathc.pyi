"""Type stubs of pathc's native module (see python/src/lib.rs)."""

from os import PathLike
from typing import Dict, List, Literal, Optional, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

class PathcError(Exception):
    """A pathc error; its text is what the command line prints (diagnostics with file:line:col)."""

class Path:
    """One logit path of an expansion."""

    name: str
    order: int
    source: str
    heads: List[Tuple[int, int]]
    formula: str
    latex: str
    def _repr_latex_(self) -> str: ...

class Weights:
    """Tensors in TransformerLens's names."""

    @staticmethod
    def from_file(path: Union[str, PathLike]) -> "Weights":
        """A safetensors, npz or torch.save file, or a HuggingFace model folder."""
    @staticmethod
    def from_dict(arrays: Dict[str, npt.ArrayLike]) -> "Weights":
        """Numpy arrays of floats in TransformerLens's names and layouts."""
    def names(self) -> List[str]: ...

class Tokenizer:
    """A HuggingFace tokenizer.json, as `--tokenizer` reads it."""

    @staticmethod
    def from_file(path: Union[str, PathLike]) -> "Tokenizer": ...
    def to_tokens(self, text: str, prepend_bos: Optional[bool] = None) -> List[int]:
        """As TransformerLens's to_tokens (and `--text`)."""
    def to_str_tokens(self, ids: List[int]) -> List[Optional[str]]: ...
    def to_single_token(self, text: str) -> int: ...

class PathsTable(TypedDict):
    names: List[str]
    orders: List[Optional[int]]
    paths: List[int]
    positions: List[int]
    target_tokens: List[int]
    values: npt.NDArray[np.float64]
    forward_target_logits: npt.NDArray[np.float64]

class Report:
    """A `pathc report` page; renders inline in Jupyter (an iframe)."""
    @property
    def html(self) -> str:
        """The page, as `pathc report -o FILE` writes it."""
    def save(self, path: Union[str, PathLike]) -> None:
        """Writes the page to `path` (replaced only once written in full)."""
    def _repr_html_(self) -> str: ...

class Model:
    """A compiled model file. Its long calls release the GIL and stop on Ctrl-C
    (KeyboardInterrupt)."""

    @staticmethod
    def from_file(path: Union[str, PathLike]) -> "Model": ...
    @staticmethod
    def from_source(text: str, name: str = "<source>") -> "Model": ...
    @property
    def name(self) -> str: ...
    def count(self, max_order: Optional[int] = None, qk: bool = False) -> Dict[str, List[int]]:
        """Exact counts by order: {"logits": [...]} and with qk {"scores": [...]}."""
    def expand(self, max_order: Optional[int] = None) -> List[Path]:
        """Every logit path, in path order."""
    def paths(
        self,
        weights: Weights,
        tokens: List[int],
        target: Union[int, Literal["next"]],
        pos: Union[None, int, Literal["last", "all"]] = None,
        group: Optional[Literal["head", "component", "source", "order"]] = None,
        max_order: Optional[int] = None,
    ) -> PathsTable:
        """Each path's (or group's) contribution to the target logit(s), as `pathc paths --target`."""
    def report(
        self,
        weights: Weights,
        tokens: List[int],
        target: Union[None, int, Literal["next"]] = None,
        pos: Union[None, int, Literal["last"]] = None,
        max_order: Optional[int] = None,
        top: int = 40,
        top_terms: int = 8,
        stats: bool = True,
        max_bytes: int = 16_000_000,
        precision: Literal["f32", "f64"] = "f32",
    ) -> Report:
        """`pathc report`: the HTML page of the paths of the logit of `target` (default: the top
        prediction) at `pos`, each head's attention with its score terms, the statistics, the check."""
    def check(self, weights: Weights, tokens: List[int], max_order: Optional[int] = None) -> Dict[str, object]:
        """`pathc check`: Σ paths against the forward pass."""
    def scores(
        self,
        weights: Weights,
        tokens: List[int],
        head: str,
        pos: Union[None, int, Literal["last", "all"]] = None,
        max_order: Optional[int] = None,
    ) -> Dict[str, object]:
        """`pathc scores --format json`, each term's "scores" a numpy array."""
    def stats(
        self,
        weights: Weights,
        process_weights: bool = False,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        rotary_offset: Optional[int] = None,
        precision: Literal["f32", "f64"] = "f32",
    ) -> Dict[str, object]:
        """`pathc stats --format json`, each per-head statistic a numpy array; the matrix products
        in `precision` (f32: within 1e-5 of f64's numbers, twice as fast)."""
    def dataset_paths(
        self,
        weights: Weights,
        prompts: List[Union[List[int], Dict[str, object]]],
        target: Union[None, int, Literal["next"]] = None,
        against: Optional[int] = None,
        pos: Union[None, int, Literal["last", "all"]] = None,
        group: Optional[Literal["head", "component", "source", "order"]] = None,
        max_order: Optional[int] = None,
        per_prompt: bool = False,
        tokenizer: Optional[Tokenizer] = None,
        prepend_bos: Optional[bool] = None,
    ) -> Dict[str, object]:
        """`pathc paths --dataset` (prompts may be texts, or dicts with "text", with a tokenizer): mean, std, mean_abs per path (numpy); with per_prompt the
        [prompts × rows] values and each prompt's metric."""
    def dataset_scores(
        self,
        weights: Weights,
        prompts: List[Union[List[int], str, Dict[str, object]]],
        head: str,
        query: Optional[int] = None,
        key: Optional[int] = None,
        against_key: Optional[int] = None,
        max_order: Optional[int] = None,
        per_prompt: bool = False,
        tokenizer: Optional[Tokenizer] = None,
        prepend_bos: Optional[bool] = None,
    ) -> Dict[str, object]:
        """`pathc scores --dataset`: each score term's part in a score difference over the prompts."""
