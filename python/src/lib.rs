//! `pathc._pathc`: the library's jobs as Python calls (pyo3), numbers as numpy arrays. The Python
//! package (`python/pathc/__init__.py`) re-exports these and adds what needs Python objects only
//! (`from_hooked_transformer`, `to_pandas`).
//!
//! Errors are `pathc.PathcError` carrying the same text the command line prints (diagnostics with
//! `file:line:col` and a caret). The computations run with the GIL released.

use std::path::PathBuf;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use pathc::emit::notation::{Heads, Notation};
use pathc::eval::{Evaluation, Target, Targets};
use pathc::paths::{Grouping, Side};

create_exception!(_pathc, PathcError, PyException, "A pathc error, with the text the command line prints.");

fn error(text: impl Into<String>) -> PyErr {
    PathcError::new_err(text.into())
}

/// A compiled model file. Its long calls release the GIL and stop on Ctrl-C (KeyboardInterrupt).
#[pyclass(module = "pathc._pathc", frozen)]
struct Model {
    file: String,
    source: String,
    compiled: pathc::Compiled,
}

/// A library error rendered as the command line renders it.
fn render(file: &str, source: &str, e: &pathc::Error) -> PyErr {
    let diagnostics = e.diagnostics();
    if diagnostics.is_empty() {
        error(format!("error: {e}"))
    } else {
        error(pathc::diag::render(file, source, diagnostics))
    }
}

/// One logit path of an expansion.
#[pyclass(module = "pathc._pathc", frozen, get_all)]
#[derive(Clone)]
struct Path {
    name: String,
    order: usize,
    source: String,
    /// `(layer, head)` of each head it passes, earliest first.
    heads: Vec<(usize, usize)>,
    /// The term in the paper's notation (Unicode).
    formula: String,
    /// The same in LaTeX.
    latex: String,
}

#[pymethods]
impl Path {
    fn _repr_latex_(&self) -> String {
        format!("${}$", self.latex)
    }

    fn __repr__(&self) -> String {
        format!("Path({:?}, order={}, formula={:?})", self.name, self.order, self.formula)
    }
}

/// Tensors in TransformerLens's names: a file or folder the CLI reads, or numpy arrays.
#[pyclass(module = "pathc._pathc", frozen)]
struct Weights {
    inner: pathc::weights::Weights,
}

#[pymethods]
impl Weights {
    /// A safetensors, npz or torch.save file, or a HuggingFace model folder.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Weights> {
        let inner = pathc::weights::Weights::load(&path).map_err(|e| error(format!("error: {e}")))?;
        Ok(Weights { inner })
    }

    /// A dict of numpy arrays (float16/32/64) in TransformerLens's names and layouts.
    #[staticmethod]
    fn from_dict(arrays: &Bound<'_, PyDict>) -> PyResult<Weights> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, value) in arrays.iter() {
            let name: String = key.extract()?;
            let array = value.call_method1("astype", ("float64",))?;
            let array: PyReadonlyArrayDyn<'_, f64> = array.extract().map_err(|_| {
                error(format!("error: tensor {name}: expected a numpy array of floats, got {}", value.get_type()))
            })?;
            let shape = array.shape().to_vec();
            let bytes: Vec<u8> = array.as_array().iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.push((name, shape, bytes));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| error(format!("error: tensor {name}: {e}")))
            })
            .collect::<PyResult<_>>()?;
        let bytes = safetensors::tensor::serialize(views, None).map_err(|e| error(format!("error: {e}")))?;
        let inner = pathc::weights::Weights::from_bytes(&bytes, "the dict of arrays")
            .map_err(|e| error(format!("error: {e}")))?;
        Ok(Weights { inner })
    }

    /// The tensor names, sorted.
    fn names(&self) -> Vec<String> {
        self.inner.names().map(str::to_string).collect()
    }
}

/// A HuggingFace `tokenizer.json`, as `--tokenizer` reads it (its folder's
/// `tokenizer_config.json` and `config.json` say which token is the BOS).
#[pyclass(module = "pathc._pathc", frozen)]
struct Tokenizer {
    inner: pathc::text::Tokenizer,
}

#[pymethods]
impl Tokenizer {
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Tokenizer> {
        let inner = pathc::text::Tokenizer::load(&path).map_err(|e| error(format!("error: {e}")))?;
        Ok(Tokenizer { inner })
    }

    /// `text` as token ids, as TransformerLens's `to_tokens` (and `--text`) does; `prepend_bos`
    /// `None` is TransformerLens's default for the model.
    #[pyo3(signature = (text, prepend_bos = None))]
    fn to_tokens(&self, text: &str, prepend_bos: Option<bool>) -> PyResult<Vec<usize>> {
        Ok(self.inner.tokenize(text, prepend_bos).map_err(|e| error(format!("error: {e}")))?.ids)
    }

    /// Each id's string (`None` for an id the tokenizer does not have), as `to_str_tokens`.
    fn to_str_tokens(&self, ids: Vec<usize>) -> Vec<Option<String>> {
        self.inner.str_tokens(&ids)
    }

    /// The one token `text` is (TransformerLens's `to_single_token`), or an error listing its
    /// tokens.
    fn to_single_token(&self, text: &str) -> PyResult<usize> {
        self.inner.single_token(text).map_err(|e| error(format!("error: {e}")))
    }
}

/// `None`, a token id, `"next"`.
fn target_of(target: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Target>> {
    let Some(target) = target else { return Ok(None) };
    if let Ok(id) = target.extract::<usize>() {
        return Ok(Some(Target::Token(id)));
    }
    match target.extract::<String>().as_deref() {
        Ok("next") => Ok(Some(Target::Next)),
        _ => Err(error(format!("error: target: expected a token id or \"next\", not {target}"))),
    }
}

/// `None` (the last), `"last"`, `"all"` or a position.
fn position_of(pos: Option<&Bound<'_, PyAny>>, n: usize, default_all: bool) -> PyResult<Option<usize>> {
    let Some(pos) = pos else { return Ok(if default_all { None } else { Some(n - 1) }) };
    if let Ok(p) = pos.extract::<usize>() {
        return if p < n {
            Ok(Some(p))
        } else {
            Err(error(format!("error: position {p} is out of range for {n} tokens")))
        };
    }
    match pos.extract::<String>().as_deref() {
        Ok("last") => Ok(Some(n - 1)),
        Ok("all") => Ok(None),
        _ => Err(error(format!("error: pos takes a number, \"last\" or \"all\", not {pos}"))),
    }
}

fn grouping_of(group: Option<&str>) -> PyResult<Option<Grouping>> {
    match group {
        None => Ok(None),
        Some("head") => Ok(Some(Grouping::Head)),
        Some("component") => Ok(Some(Grouping::Component)),
        Some("source") => Ok(Some(Grouping::Source)),
        Some("order") => Ok(Some(Grouping::Order)),
        Some(other) => {
            Err(error(format!("error: group is one of \"head\", \"component\", \"source\", \"order\", not {other:?}")))
        }
    }
}

fn counts(py: Python<'_>, counts: &pathc::paths::Counts) -> PyResult<PyObject> {
    let list = PyList::empty(py);
    for c in &counts.by_order {
        // Exact: a Python int from its decimal digits (counts exceed 64 bits).
        list.append(py.import("builtins")?.getattr("int")?.call1((c.to_string(),))?)?;
    }
    Ok(list.into_any().unbind())
}

impl Model {
    fn expansion(&self, max_order: Option<u32>, qk: bool, interrupt: &Interrupt) -> PyResult<pathc::Expansion> {
        let options = pathc::ExpandOptions { max_order, qk, ..pathc::ExpandOptions::default() };
        pathc::expand_with_progress(self.compiled.clone(), &options, interrupt)
            .map_err(|e| render(&self.file, &self.source, &e))
    }

    fn evaluate(
        &self,
        weights: &Weights,
        tokens: &[usize],
        max_order: Option<u32>,
        qk: bool,
        interrupt: &Interrupt,
    ) -> PyResult<Evaluation> {
        let fail = |e: pathc::Error| render(&self.file, &self.source, &e);
        let params =
            pathc::eval::Params::from_weights(&self.compiled.model, &weights.inner, &pathc::eval::NameMap::default())
                .map_err(|e| fail(e.into()))?;
        let forward = pathc::eval::forward(&params, tokens).map_err(|e| error(format!("error: {e}")))?;
        Ok(Evaluation { expansion: self.expansion(max_order, qk, interrupt)?, params, forward })
    }
}

/// A `pathc report` page: `.html` is the file `pathc report` writes; in a notebook it renders
/// inline (`_repr_html_`, in an iframe so its script and styles stay its own).
#[pyclass(module = "pathc._pathc", frozen)]
struct Report {
    html: String,
}

#[pymethods]
impl Report {
    /// The page, as `pathc report -o FILE` writes it.
    #[getter]
    fn html(&self) -> &str {
        &self.html
    }

    /// Writes the page to `path` (replaced only once written in full: a temporary file renamed).
    fn save(&self, path: PathBuf) -> PyResult<()> {
        let name = path.file_name().ok_or_else(|| error(format!("error: {}: not a file name", path.display())))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".pathc-{}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let cannot = |e: std::io::Error| error(format!("error: cannot write {}: {e}", path.display()));
        std::fs::write(&temp, self.html.as_bytes()).map_err(cannot)?;
        std::fs::rename(&temp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            cannot(e)
        })
    }

    /// The page inside an iframe (`srcdoc`), for Jupyter.
    fn _repr_html_(&self) -> String {
        let escaped = pathc::emit::report::escape_html(&self.html);
        format!(
            "<iframe class=\"pathc-report\" srcdoc=\"{escaped}\" style=\"width: 100%; height: 900px; border: 1px solid #ddd;\" sandbox=\"allow-scripts\"></iframe>"
        )
    }

    fn __repr__(&self) -> String {
        format!("Report({} bytes of HTML)", self.html.len())
    }
}

#[pymethods]
impl Model {
    /// Reads and compiles a model file (`.tf`).
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Model> {
        let file = path.display().to_string();
        let source = pathc::syntax::read_source(&path).map_err(|e| error(e.render(&file)))?;
        Model::compile(source, file)
    }

    /// Compiles a model from its text (`name` is the file name its diagnostics show).
    #[staticmethod]
    #[pyo3(signature = (text, name = "<source>".to_string()))]
    fn from_source(text: String, name: String) -> PyResult<Model> {
        Model::compile(text, name)
    }

    #[getter]
    fn name(&self) -> String {
        self.compiled.model.name.clone()
    }

    /// Exact counts by order: `{"logits": [...], "scores": [...] (with qk)}`, Python ints.
    #[pyo3(signature = (max_order = None, qk = false))]
    fn count(&self, py: Python<'_>, max_order: Option<u32>, qk: bool) -> PyResult<PyObject> {
        let all = self.compiled.counts(max_order, qk);
        let out = PyDict::new(py);
        out.set_item("logits", counts(py, &all.logits)?)?;
        if let Some(scores) = &all.scores {
            out.set_item("scores", counts(py, scores)?)?;
        }
        Ok(out.into_any().unbind())
    }

    /// Every logit path, in path order.
    #[pyo3(signature = (max_order = None))]
    fn expand(&self, py: Python<'_>, max_order: Option<u32>) -> PyResult<Vec<Path>> {
        let expansion = interruptible(py, |interrupt| self.expansion(max_order, false, interrupt))?;
        let mut out = Vec::new();
        // The GIL is held here (the list is of Python objects): signals are asked for directly.
        let mut raised = None;
        pathc::paths::for_each_path(&expansion.logits, &expansion.heads_per_layer(), None, |p| {
            if raised.is_some() {
                return;
            }
            if out.len() % 4096 == 4095 {
                raised = py.check_signals().err();
            }
            let term =
                |notation: Notation| notation.term(&p.template.position, &p.template.weights, Heads::Concrete(&p));
            out.push(Path {
                name: p.name(),
                order: p.template.order(),
                source: p.template.source().map(|s| s.name()).unwrap_or_default(),
                heads: p.heads(Side::Head).iter().map(|h| (h.layer, h.head)).collect(),
                formula: term(Notation::Text),
                latex: term(Notation::Latex),
            })
        });
        match raised {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Each path's (or group's) contribution to the logit of `target` (a token id, or `"next"`)
    /// at `pos` (a position, `"last"` or `"all"`; default the last, every position for `"next"`),
    /// as `pathc paths --target` computes it: `{"names", "orders", "paths", "positions",
    /// "target_tokens", "values" [rows × targets], "forward_target_logits"}`, rows in path (or
    /// group) order.
    #[pyo3(signature = (weights, tokens, target, pos = None, group = None, max_order = None))]
    #[allow(clippy::too_many_arguments)]
    fn paths(
        &self,
        py: Python<'_>,
        weights: &Weights,
        tokens: Vec<usize>,
        target: &Bound<'_, PyAny>,
        pos: Option<&Bound<'_, PyAny>>,
        group: Option<&str>,
        max_order: Option<u32>,
    ) -> PyResult<PyObject> {
        let target = target_of(Some(target))?.expect("given");
        if tokens.is_empty() {
            return Err(error("error: no tokens given"));
        }
        let position = position_of(pos, tokens.len(), target == Target::Next)?;
        let grouping = grouping_of(group)?;
        let (targets, rows, forward_logits) = interruptible(py, |interrupt| -> PyResult<_> {
            let evaluation = self.evaluate(weights, &tokens, max_order, false, interrupt)?;
            let targets = Targets::for_params(target, &tokens, &evaluation.params, position)
                .map_err(|e| error(format!("error: --target {target}: {e}")))?;
            let rows = pathc::emit::numbers::target_table(&evaluation, &targets, grouping, None, false, interrupt)
                .map_err(|e| error(format!("error: {e}")))?;
            let forward_logits = targets.forward_logits(&evaluation.forward);
            Ok((targets, rows, forward_logits))
        })?;
        let out = PyDict::new(py);
        out.set_item("names", rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>())?;
        out.set_item("orders", rows.iter().map(|r| r.order).collect::<Vec<_>>())?;
        out.set_item("paths", rows.iter().map(|r| r.paths).collect::<Vec<_>>())?;
        out.set_item("positions", targets.positions.clone())?;
        out.set_item("target_tokens", targets.tokens.clone())?;
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.values.iter().copied()).collect();
        let values = PyArray1::from_vec(py, flat).reshape([rows.len(), targets.len()])?;
        out.set_item("values", values)?;
        out.set_item("forward_target_logits", PyArray1::from_vec(py, forward_logits))?;
        Ok(out.into_any().unbind())
    }

    /// Every (query path, key path) term's contribution to head `head`'s (`"L1H2"`) attention
    /// scores at query `pos` (a position, `"last"` (default) or `"all"`), as `pathc scores --format
    /// json` gives them: `{"head", "tokens", "position", "max_abs_error", "terms": [{"name",
    /// "order", "scores"}]}`, each `scores` a numpy array (the keys' row, or queries × keys).
    #[pyo3(signature = (weights, tokens, head, pos = None, max_order = None))]
    fn scores(
        &self,
        py: Python<'_>,
        weights: &Weights,
        tokens: Vec<usize>,
        head: &str,
        pos: Option<&Bound<'_, PyAny>>,
        max_order: Option<u32>,
    ) -> PyResult<PyObject> {
        if tokens.is_empty() {
            return Err(error("error: no tokens given"));
        }
        let position = position_of(pos, tokens.len(), false)?;
        let heads = self.compiled.model.heads_per_layer();
        let (layer, index) = parse_head(head, &heads)?;
        let json = interruptible(py, |interrupt| -> PyResult<Vec<u8>> {
            let evaluation = self.evaluate(weights, &tokens, max_order, true, interrupt)?;
            let report = pathc::emit::numbers::score_table(&evaluation, layer, index, position, None, interrupt)
                .map_err(|e| error(format!("error: {e}")))?;
            let mut out = Vec::new();
            pathc::emit::numbers::write_scores_json(&mut out, &evaluation, (layer, index), position, &report, None)
                .expect("writes to memory");
            Ok(out)
        })?;
        let value = loads(py, &json)?;
        let asarray = py.import("numpy")?.getattr("asarray")?;
        for term in value.get_item("terms")?.try_iter()? {
            let term = term?;
            term.set_item("scores", asarray.call1((term.get_item("scores")?,))?)?;
        }
        Ok(value.unbind())
    }

    /// The circuit statistics (`pathc stats --format json`: copying scores, norms, composition
    /// scores with their baseline) of the weights, processed as asked (TransformerLens's steps;
    /// `process_weights` is all four), each per-head statistic a numpy array. `precision` is
    /// that of the matrix products, `"f32"` (as the command line; within 1e-5 of f64's numbers)
    /// or `"f64"`.
    #[pyo3(signature = (weights, process_weights = false, fold_ln = false, center_writing_weights = false,
        center_unembed = false, fold_value_biases = false, rotary_offset = None, precision = "f32"))]
    #[allow(clippy::too_many_arguments)]
    fn stats(
        &self,
        py: Python<'_>,
        weights: &Weights,
        process_weights: bool,
        fold_ln: bool,
        center_writing_weights: bool,
        center_unembed: bool,
        fold_value_biases: bool,
        rotary_offset: Option<i64>,
        precision: &str,
    ) -> PyResult<PyObject> {
        let precision = precision_of(precision)?;
        let processing = pathc::eval::Processing {
            fold_ln: process_weights || fold_ln,
            center_writing_weights: process_weights || center_writing_weights,
            center_unembed: process_weights || center_unembed,
            fold_value_biases: process_weights || fold_value_biases,
        };
        let json = interruptible(py, |interrupt| -> PyResult<String> {
            let fail = |e: pathc::Error| render(&self.file, &self.source, &e);
            let params = pathc::eval::StatsParams::from_weights(
                &self.compiled.model,
                &weights.inner,
                &pathc::eval::NameMap::default(),
            )
            .map_err(|e| fail(e.into()))?;
            let options = pathc::stats::StatsOptions { processing, rotary_offset, precision };
            let stats = pathc::stats::stats_streamed(params, options, interrupt).map_err(|e| match e {
                pathc::stats::StatsError::Processing(e) => fail(e.into()),
                e => error(format!("error: {e}")),
            })?;
            Ok(serde_json::to_string(&stats).expect("plain data"))
        })?;
        let value = loads(py, json.as_bytes())?;
        let asarray = py.import("numpy")?.getattr("asarray")?;
        let dict = value.downcast::<PyDict>()?;
        for (key, item) in dict.iter() {
            if item.is_instance_of::<PyList>() {
                dict.set_item(key, asarray.call1((item,))?)?;
            }
        }
        Ok(value.unbind())
    }

    /// Each path's (or group's) contribution to a logit metric over a dataset, as `pathc paths
    /// --dataset` computes it: `prompts` is a list of token lists, or of dicts with `"tokens"` and
    /// the optional per-prompt `"target"`, `"against"` (token ids, or `"next"` for the target) and
    /// `"position"`, which override `target`, `against` and `pos`. Returns `{"prompts", "names",
    /// "orders", "paths", "mean", "std", "mean_abs"` (numpy, rows in path or group order),
    /// `"metric"`, `"complete"`, `"max_abs_rest"}`, and with `per_prompt` also `"values"`
    /// ([prompts × rows]) and `"metrics"`. An error names the prompt by its 1-based index.
    #[pyo3(signature = (weights, prompts, target = None, against = None, pos = None, group = None,
        max_order = None, per_prompt = false, tokenizer = None, prepend_bos = None))]
    #[allow(clippy::too_many_arguments)]
    fn dataset_paths(
        &self,
        py: Python<'_>,
        weights: &Weights,
        prompts: &Bound<'_, PyList>,
        target: Option<&Bound<'_, PyAny>>,
        against: Option<&Bound<'_, PyAny>>,
        pos: Option<&Bound<'_, PyAny>>,
        group: Option<&str>,
        max_order: Option<u32>,
        per_prompt: bool,
        tokenizer: Option<&Tokenizer>,
        prepend_bos: Option<bool>,
    ) -> PyResult<PyObject> {
        use pathc::aggregate::{self, Dataset, LogitQuestion, Position};
        let prompts = prompts_of(prompts)?;
        let position = match pos {
            None => None,
            Some(p) => Some(match p.extract::<usize>() {
                Ok(n) => Position::At(n),
                Err(_) => match p.extract::<String>().as_deref() {
                    Ok("last") => Position::Last,
                    Ok("all") => Position::All,
                    _ => return Err(error(format!("error: pos takes a number, \"last\" or \"all\", not {p}"))),
                },
            }),
        };
        let question = LogitQuestion { target: target_of(target)?, against: target_of(against)?, position };
        let grouping = grouping_of(group)?;
        let (result, values, metrics) = interruptible(py, |interrupt| -> PyResult<_> {
            let fail = |e: pathc::Error| render(&self.file, &self.source, &e);
            let params = pathc::eval::Params::from_weights(
                &self.compiled.model,
                &weights.inner,
                &pathc::eval::NameMap::default(),
            )
            .map_err(|e| fail(e.into()))?;
            let expansion = self.expansion(max_order, false, interrupt)?;
            let (mut values, mut metrics) = (Vec::new(), Vec::new());
            let dataset = Dataset::Prompts { name: "prompts", prompts: &prompts };
            let inputs = aggregate::Inputs { tokenizer: tokenizer.map(|t| &t.inner), prepend_bos };
            let result =
                aggregate::dataset_paths(&expansion, &params, dataset, inputs, question, grouping, interrupt, |p| {
                    if per_prompt {
                        values.extend_from_slice(p.values);
                        metrics.push(p.metric);
                    }
                    Ok(())
                })
                .map_err(|e| error(format!("error: {e}")))?;
            Ok((result, values, metrics))
        })?;
        let out = PyDict::new(py);
        let rows = &result.rows;
        out.set_item("prompts", result.prompts)?;
        out.set_item("names", rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>())?;
        out.set_item("orders", rows.iter().map(|r| r.order).collect::<Vec<_>>())?;
        out.set_item("paths", rows.iter().map(|r| r.paths).collect::<Vec<_>>())?;
        out.set_item("mean", PyArray1::from_vec(py, rows.iter().map(|r| r.contribution.mean).collect()))?;
        out.set_item("std", PyArray1::from_vec(py, rows.iter().map(|r| r.contribution.std).collect()))?;
        out.set_item("mean_abs", PyArray1::from_vec(py, rows.iter().map(|r| r.contribution.mean_abs).collect()))?;
        out.set_item("metric", summary(py, &result.metric)?)?;
        out.set_item("complete", result.complete)?;
        out.set_item("max_abs_rest", result.max_abs_rest)?;
        if per_prompt {
            out.set_item("values", PyArray1::from_vec(py, values).reshape([result.prompts, rows.len()])?)?;
            out.set_item("metrics", PyArray1::from_vec(py, metrics))?;
        }
        Ok(out.into_any().unbind())
    }

    /// Each score term's part in head `head`'s score difference `s[q, key] − s[q, against_key]`
    /// over a dataset, as `pathc scores --dataset` computes it: `prompts` as for
    /// `dataset_paths`, a dict's `"position"` (the query), `"key"` and `"against_key"` overriding
    /// `query`, `key` and `against_key`. Returns `{"prompts", "names", "orders", "difference_mean",
    /// "difference_std", "difference_mean_abs", "prob_linear_mean" (first order: a
    /// linearisation), "prob_removed_mean" (the real change), "difference", "prob_key",
    /// "prob_against_key" (summaries), "max_sum_error", "max_linear_error"}` and with
    /// `per_prompt` the [prompts × terms] arrays `"values"`, `"prob_linear"`, `"prob_removed"`.
    #[pyo3(signature = (weights, prompts, head, query = None, key = None, against_key = None, max_order = None,
        per_prompt = false, tokenizer = None, prepend_bos = None))]
    #[allow(clippy::too_many_arguments)]
    fn dataset_scores(
        &self,
        py: Python<'_>,
        weights: &Weights,
        prompts: &Bound<'_, PyList>,
        head: &str,
        query: Option<usize>,
        key: Option<usize>,
        against_key: Option<usize>,
        max_order: Option<u32>,
        per_prompt: bool,
        tokenizer: Option<&Tokenizer>,
        prepend_bos: Option<bool>,
    ) -> PyResult<PyObject> {
        use pathc::aggregate::{self, Dataset, ScoreQuestion};
        let prompts = prompts_of(prompts)?;
        let (layer, index) = parse_head(head, &self.compiled.model.heads_per_layer())?;
        let question = ScoreQuestion { head: pathc::paths::HeadRef { layer, head: index }, query, key, against_key };
        let (result, per) = interruptible(py, |interrupt| -> PyResult<_> {
            let fail = |e: pathc::Error| render(&self.file, &self.source, &e);
            let params = pathc::eval::Params::from_weights(
                &self.compiled.model,
                &weights.inner,
                &pathc::eval::NameMap::default(),
            )
            .map_err(|e| fail(e.into()))?;
            let expansion = self.expansion(max_order, true, interrupt)?;
            let mut per: [Vec<f64>; 3] = Default::default();
            let result = aggregate::dataset_scores(
                &expansion,
                &params,
                Dataset::Prompts { name: "prompts", prompts: &prompts },
                aggregate::Inputs { tokenizer: tokenizer.map(|t| &t.inner), prepend_bos },
                question,
                interrupt,
                |p| {
                    if per_prompt {
                        per[0].extend(p.terms.iter().map(|t| t.difference));
                        per[1].extend(p.terms.iter().map(|t| t.prob_linear));
                        per[2].extend(p.terms.iter().map(|t| t.prob_removed));
                    }
                    Ok(())
                },
            )
            .map_err(|e| error(format!("error: {e}")))?;
            Ok((result, per))
        })?;
        let out = PyDict::new(py);
        let terms = &result.terms;
        out.set_item("prompts", result.prompts)?;
        out.set_item("head", result.head.to_string())?;
        out.set_item("names", terms.iter().map(|t| t.name.clone()).collect::<Vec<_>>())?;
        out.set_item("orders", terms.iter().map(|t| t.order).collect::<Vec<_>>())?;
        let column =
            |f: &dyn Fn(&pathc::aggregate::TermSummary) -> f64| PyArray1::from_vec(py, terms.iter().map(f).collect());
        out.set_item("difference_mean", column(&|t| t.difference.mean))?;
        out.set_item("difference_std", column(&|t| t.difference.std))?;
        out.set_item("difference_mean_abs", column(&|t| t.difference.mean_abs))?;
        out.set_item("prob_linear_mean", column(&|t| t.prob_linear.mean))?;
        out.set_item("prob_removed_mean", column(&|t| t.prob_removed.mean))?;
        for (name, s) in [
            ("difference", &result.difference),
            ("prob_key", &result.prob_key),
            ("prob_against_key", &result.prob_against_key),
        ] {
            out.set_item(name, summary(py, s)?)?;
        }
        out.set_item("max_sum_error", result.max_sum_error)?;
        out.set_item("max_linear_error", result.max_linear_error)?;
        if per_prompt {
            let [values, linear, removed] = per;
            let shape = [result.prompts, terms.len()];
            out.set_item("values", PyArray1::from_vec(py, values).reshape(shape)?)?;
            out.set_item("prob_linear", PyArray1::from_vec(py, linear).reshape(shape)?)?;
            out.set_item("prob_removed", PyArray1::from_vec(py, removed).reshape(shape)?)?;
        }
        Ok(out.into_any().unbind())
    }

    /// `pathc check`: the sum of every path against the forward pass, as a dict.
    #[pyo3(signature = (weights, tokens, max_order = None))]
    fn check(
        &self,
        py: Python<'_>,
        weights: &Weights,
        tokens: Vec<usize>,
        max_order: Option<u32>,
    ) -> PyResult<PyObject> {
        let report = interruptible(py, |interrupt| -> PyResult<_> {
            let evaluation = self.evaluate(weights, &tokens, max_order, false, interrupt)?;
            pathc::eval::check(&evaluation.expansion, &evaluation.params, &evaluation.forward, interrupt)
                .map_err(|e| error(format!("error: {e}")))
        })?;
        let json = serde_json::to_string(&report).expect("plain data");
        Ok(py.import("json")?.call_method1("loads", (json,))?.unbind())
    }

    /// `pathc report`: the self-contained HTML page of `tokens` (paths of the logit of `target`
    /// at `pos` as a tree, each head's attention with its score terms, the circuit statistics,
    /// the check). `target` is a token id, `"next"`, or `None` for the top prediction; `precision`
    /// that of the statistics' products, as in `stats`.
    #[pyo3(signature = (weights, tokens, target = None, pos = None, max_order = None, top = 40, top_terms = 8, stats = true, max_bytes = 16_000_000, precision = "f32"))]
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        py: Python<'_>,
        weights: &Weights,
        tokens: Vec<usize>,
        target: Option<&Bound<'_, PyAny>>,
        pos: Option<&Bound<'_, PyAny>>,
        max_order: Option<u32>,
        top: usize,
        top_terms: usize,
        stats: bool,
        max_bytes: usize,
        precision: &str,
    ) -> PyResult<Report> {
        use pathc::emit::report::{self, ReportOptions};
        let precision = precision_of(precision)?;
        if tokens.is_empty() {
            return Err(error("error: no tokens given"));
        }
        let target = target_of(target)?;
        let position = position_of(pos, tokens.len(), false)?
            .ok_or_else(|| error("error: pos \"all\": a report explains one position (a number or \"last\")"))?;
        let html = interruptible(py, |interrupt| -> PyResult<String> {
            let fail = |e: report::ReportError| error(format!("error: {e}"));
            let evaluation = self.evaluate(weights, &tokens, max_order, true, interrupt)?;
            let (target, why) = report::target_token(&evaluation, target, position)
                .map_err(|e| error(format!("error: target: {e}")))?;
            let stats = if stats {
                Ok(pathc::stats::stats_processed_with_progress(
                    &evaluation.params,
                    pathc::stats::StatsOptions { precision, ..pathc::eval::Processing::NONE.into() },
                    interrupt,
                )
                .map_err(|e| error(format!("error: {e}")))?)
            } else {
                Err("left out (--no-stats)".to_string())
            };
            let options =
                ReportOptions { position, target, target_why: why.to_string(), top_paths: top, top_terms, max_bytes };
            let data = report::report(&evaluation, stats, None, &options, interrupt).map_err(fail)?;
            report::html(&data, max_bytes, top_terms).map_err(fail)
        })?;
        Ok(Report { html })
    }
}

/// A Python list of prompts (token lists, or dicts with "tokens" and per-prompt fields), each
/// `line` its 1-based index.
fn prompts_of(list: &Bound<'_, PyList>) -> PyResult<Vec<pathc::dataset::Prompt>> {
    use pathc::dataset::{Prompt, PromptInput, TokenField};
    let token_field = |d: &Bound<'_, PyDict>, key: &str, i: usize| -> PyResult<Option<TokenField>> {
        match d.get_item(key)? {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) => match v.extract::<usize>() {
                Ok(id) => Ok(Some(TokenField::Id(id))),
                Err(_) => v
                    .extract::<String>()
                    .map(|t| Some(TokenField::Text(t)))
                    .map_err(|_| error(format!("error: prompts:{i}: \"{key}\" is a token id or a text, not {v}"))),
            },
        }
    };
    let position = |d: &Bound<'_, PyDict>, key: &str| -> PyResult<Option<usize>> {
        d.get_item(key)?.filter(|v| !v.is_none()).map(|v| v.extract::<usize>()).transpose()
    };
    let mut prompts = Vec::new();
    for (index, item) in list.iter().enumerate() {
        let line = index + 1;
        let prompt = if let Ok(d) = item.downcast::<PyDict>() {
            let input = match (d.get_item("tokens")?, d.get_item("text")?) {
                (Some(tokens), None) => PromptInput::Tokens(tokens.extract()?),
                (None, Some(text)) => PromptInput::Text(text.extract()?),
                (Some(_), Some(_)) => {
                    return Err(error(format!("error: prompts:{line}: give \"tokens\" or \"text\", not both")))
                }
                (None, None) => {
                    return Err(error(format!("error: prompts:{line}: the prompt has neither \"tokens\" nor \"text\"")))
                }
            };
            Prompt {
                line,
                input,
                target: token_field(d, "target", line)?,
                against: token_field(d, "against", line)?,
                position: position(d, "position")?,
                key: position(d, "key")?,
                against_key: position(d, "against_key")?,
            }
        } else if let Ok(text) = item.extract::<String>() {
            Prompt {
                line,
                input: PromptInput::Text(text),
                target: None,
                against: None,
                position: None,
                key: None,
                against_key: None,
            }
        } else {
            let tokens: Vec<usize> = item.extract().map_err(|_| {
                error(format!("error: prompts:{line}: a prompt is a list of token ids, a text or a dict, not {item}"))
            })?;
            Prompt {
                line,
                input: PromptInput::Tokens(tokens),
                target: None,
                against: None,
                position: None,
                key: None,
                against_key: None,
            }
        };
        if matches!(&prompt.input, PromptInput::Tokens(t) if t.is_empty()) {
            return Err(error(format!("error: prompts:{line}: a prompt needs at least one token")));
        }
        prompts.push(prompt);
    }
    Ok(prompts)
}

/// Whether Ctrl-C was pressed during a call: the progress the library's long jobs ask between
/// their units of work (a saturation run, a path, a chunk of the vocabulary, a head, a prompt).
/// [`interruptible`] sets it.
#[derive(Default)]
struct Interrupt {
    raised: std::sync::Mutex<Option<PyErr>>,
    cancelled: std::sync::atomic::AtomicBool,
}

impl pathc::progress::Progress for Interrupt {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs `work` on a worker thread, the GIL released, while the calling thread (Python's main
/// thread, where signal handlers run) asks Python for pending signals every 50 ms. A handler
/// that raises (Ctrl-C: KeyboardInterrupt) sets the [`Interrupt`] the worker's jobs ask; once
/// the worker has stopped, the call raises that error, whatever the worker returned. A panic
/// in the worker goes on as a panic (pyo3's PanicException).
fn interruptible<T: Send>(py: Python<'_>, work: impl FnOnce(&Interrupt) -> PyResult<T> + Send) -> PyResult<T> {
    use std::sync::mpsc::{channel, RecvTimeoutError};
    let interrupt = Interrupt::default();
    let joined = py.allow_threads(|| {
        std::thread::scope(|scope| {
            let (done, finished) = channel::<()>();
            let interrupt = &interrupt;
            let worker = scope.spawn(move || {
                let result = work(interrupt);
                let _ = done.send(());
                result
            });
            while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(std::time::Duration::from_millis(50)) {
                if pathc::progress::Progress::cancelled(interrupt) {
                    continue;
                }
                if let Err(e) = Python::with_gil(|py| py.check_signals()) {
                    interrupt.raised.lock().expect("not poisoned").get_or_insert(e);
                    interrupt.cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            worker.join()
        })
    });
    let result = joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let raised = interrupt.raised.lock().expect("not poisoned").take();
    match raised {
        Some(e) => Err(e),
        None => result,
    }
}

/// A dataset summary as `{"mean", "std", "mean_abs"}`, as the CLI's JSON writes it.
fn summary<'py>(py: Python<'py>, s: &pathc::aggregate::Summary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("mean", s.mean)?;
    d.set_item("std", s.std)?;
    d.set_item("mean_abs", s.mean_abs)?;
    Ok(d)
}

/// `json.loads` of bytes the library wrote.
fn loads<'py>(py: Python<'py>, json: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (std::str::from_utf8(json).expect("JSON is UTF-8"),))
}

/// `"f32"` or `"f64"`: the precision of the statistics' products.
fn precision_of(text: &str) -> PyResult<pathc::stats::Precision> {
    match text {
        "f32" => Ok(pathc::stats::Precision::F32),
        "f64" => Ok(pathc::stats::Precision::F64),
        other => Err(error(format!("error: precision is \"f32\" or \"f64\", not {other:?}"))),
    }
}

/// `"L1H2"` → `(1, 2)`, checked against the model's heads.
fn parse_head(text: &str, heads: &[usize]) -> PyResult<(usize, usize)> {
    let parsed = text
        .strip_prefix('L')
        .and_then(|rest| rest.split_once('H'))
        .and_then(|(l, h)| Some((l.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
    match parsed {
        Some((l, h)) if l < heads.len() && h < heads[l] => Ok((l, h)),
        Some(_) => Err(error(format!("error: {text} is not a head of this model (heads per layer: {heads:?})"))),
        None => Err(error(format!("error: a head is written L<layer>H<head>, as L1H2, not {text:?}"))),
    }
}

impl Model {
    fn compile(source: String, file: String) -> PyResult<Model> {
        let compiled = pathc::compile(&source).map_err(|e| render(&file, &source, &e))?;
        Ok(Model { file, source, compiled })
    }
}

#[pymodule]
fn _pathc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Path>()?;
    m.add_class::<Weights>()?;
    m.add_class::<Tokenizer>()?;
    m.add_class::<Report>()?;
    m.add("PathcError", m.py().get_type::<PathcError>())?;
    Ok(())
}
