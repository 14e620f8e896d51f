//! A HuggingFace model folder (`config.json` beside `model.safetensors`, a sharded
//! `model.safetensors.index.json` and its shards, or `pytorch_model.bin`), presented under
//! TransformerLens's names and layouts, as `transformer_lens.pretrained.weight_conversions`
//! converts each family.
//!
//! Every TransformerLens tensor is a **view** of one HuggingFace tensor — a split (`c_attn` into
//! Q, K, V; NeoX's `query_key_value` interleaved per head), a head reshape, a transpose (`nn.Linear`
//! is `[out, in]`, TransformerLens `[in, out]`; `W_U` is `lm_head.weight` or, tied, the token
//! embedding transposed) — an offset and strides into the HF tensor's bytes, nothing copied at
//! load: a tensor left in its file stays there (a strided `At`) until asked for, so `stats`
//! still streams `W_E`/`W_U` (a column block of `W_U` is a row block of `lm_head.weight`, one
//! span). A view of a tensor already in memory (a format that converts at load) is gathered into
//! memory. Biases TransformerLens sets to zero where HF has none are zero rows here only where
//! the model language's `bias` needs all four (Qwen2's `b_O`).
//!
//! Every HF tensor's shape is checked against what `config.json` implies (named, expected and
//! found), a tensor the mapping needs and the folder lacks is `Missing` under its HF name, and a
//! tensor the folder holds that the mapping does not use is an error naming it — except the
//! buffers HF itself ignores when loading (GPT-2's and GPT-J's `attn.bias`/`attn.masked_bias`
//! causal masks, NeoX's `attention.bias`/`masked_bias`, `rotary_emb.inv_freq`, recomputed from the
//! config), and a tied `lm_head.weight` (HF ties it to the embedding at load, so it is the
//! embedding).

pub mod config;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use self::config::{Family, HfConfig, HfNorm};
use super::convert::{Float, FloatFormat};
use super::{check, format_error, view_span, Bytes, DType, Entry, Listed, Listing, Tensor, WeightError, Weights};

/// Whether `dir` is a HuggingFace model folder (it holds a `config.json`).
pub fn is_model_folder(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// A weights file of a folder and, for a shard, the tensors its index assigns it.
type WeightFile = (PathBuf, Option<Vec<String>>);

/// The weights files of a folder, in HF's order of preference: `model.safetensors`, the sharded
/// safetensors index, `pytorch_model.bin`, the sharded `.bin` index. Each file with the tensors
/// the index assigns it (all of them for a single file).
fn weight_files(dir: &Path, origin: &str) -> Result<Vec<WeightFile>, WeightError> {
    for single in ["model.safetensors", "pytorch_model.bin"] {
        if dir.join(single).is_file() {
            return Ok(vec![(dir.join(single), None)]);
        }
        let index = dir.join(format!("{single}.index.json"));
        if index.is_file() {
            return shards(dir, &index, origin);
        }
    }
    Err(format_error(
        origin,
        "the folder has a config.json but no weights: expected model.safetensors, model.safetensors.index.json \
         (with its shards), pytorch_model.bin or pytorch_model.bin.index.json",
    ))
}

/// The shards an index's `weight_map` names, each with its tensors.
fn shards(dir: &Path, index: &Path, origin: &str) -> Result<Vec<WeightFile>, WeightError> {
    let name = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bad = |detail: String| format_error(origin, format!("{name}: {detail}"));
    let meta =
        std::fs::metadata(index).map_err(|source| WeightError::Io { path: index.display().to_string(), source })?;
    if meta.len() > 64 << 20 {
        return Err(bad(format!("{} bytes is too large for an index", meta.len())));
    }
    let text = std::fs::read_to_string(index)
        .map_err(|source| WeightError::Io { path: index.display().to_string(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(bad("no `weight_map` object".to_string()));
    };
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else { return Err(bad(format!("`{tensor}` maps to {file}, not a file name"))) };
        // A shard is a file of this folder: no directories, no way out of it.
        if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
            return Err(bad(format!("`{tensor}` maps to `{file}`, which is not a file name in the folder")));
        }
        by_file.entry(file.to_string()).or_default().push(tensor.clone());
    }
    if by_file.is_empty() {
        return Err(bad("the weight_map is empty".to_string()));
    }
    Ok(by_file.into_iter().map(|(file, tensors)| (dir.join(file), Some(tensors))).collect())
}

/// Opens the folder: reads its config, lists its weights files' tensors, checks them against the
/// config, and presents them under TransformerLens's names.
pub fn load(dir: &Path) -> Result<Weights, WeightError> {
    let origin = dir.display().to_string();
    let config = config::read(dir)?;
    let mut source = Weights { origin: origin.clone(), entries: BTreeMap::new(), files: Vec::new(), archive: None };
    for (path, expected) in weight_files(dir, &origin)? {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut shard = Weights::load(&path)?;
        if let Some(expected) = &expected {
            let mapped: BTreeSet<&String> = expected.iter().collect();
            for tensor in expected {
                if !shard.entries.contains_key(tensor) {
                    return Err(format_error(
                        &origin,
                        format!("the index maps tensor `{tensor}` to {file_name}, which does not hold it"),
                    ));
                }
            }
            if let Some(extra) = shard.entries.keys().find(|k| !mapped.contains(k)) {
                return Err(format_error(
                    &origin,
                    format!("{file_name} holds tensor `{extra}`, which the index does not map to it"),
                ));
            }
        }
        let base = source.files.len();
        source.files.append(&mut shard.files);
        let entries = std::mem::take(&mut shard.entries);
        for (name, mut entry) in entries {
            if let Entry::Stored { at, .. } = &mut entry {
                at.file += base;
            }
            // `Weights::load` reads whatever it finds by content: an .npz under a HF file name is
            // not a HuggingFace checkpoint.
            if let Entry::Member { .. } = entry {
                return Err(format_error(
                    &origin,
                    format!("{file_name} is an .npz archive, not a HuggingFace checkpoint (safetensors or torch.save)"),
                ));
            }
            // Older checkpoints, saved from the base model, leave out its prefix.
            let name = canonical(&name, config.family);
            if source.entries.insert(name.clone(), entry).is_some() {
                return Err(format_error(
                    &origin,
                    format!(
                        "tensor `{name}` is in the folder twice (in two files, or with and without the `{}` prefix)",
                        config.family.prefix()
                    ),
                ));
            }
        }
    }
    let mapping = mapping(&config);
    check_tensors(&source, &mapping, &config, &origin)?;
    let mut listing = Listing::default();
    for view in &mapping.views {
        resolve(&source, view, &mut listing)?;
    }
    for (tl, shape) in &mapping.zeros {
        let n = shape.iter().product();
        listing.entries.insert(tl.clone(), float_entry(Float::little(FloatFormat::F32), shape.clone(), vec![0.0; n]));
    }
    Ok(Weights { origin, entries: listing.entries, files: source.files, archive: None })
}

/// Reads the folder's `config.json` (for `pathc import`).
pub fn read_config(dir: &Path) -> Result<HfConfig, config::ConfigError> {
    config::read(dir)
}

fn canonical(name: &str, family: Family) -> String {
    let prefix = family.prefix();
    if name.starts_with(prefix) || name.starts_with("lm_head.") || name.starts_with("embed_out.") {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

fn shape_of(entry: &Entry) -> &[usize] {
    match entry {
        Entry::Float { tensor, .. } => &tensor.shape,
        Entry::Stored { shape, .. } | Entry::Other { shape, .. } => shape,
        // Refused as a folder's files are listed: never in its tensors.
        Entry::Member { .. } => &[],
    }
}

fn float_entry(dtype: Float, shape: Vec<usize>, data: Vec<f64>) -> Entry {
    let non_finite = check::first_non_finite(&data);
    Entry::Float { dtype, tensor: Tensor { shape, data }, non_finite }
}

// ---------------------------------------------------------------------------------------------
// Views

/// One TransformerLens tensor as a view of the HF tensor `hf`: element `t` (a multi-index of the
/// TransformerLens shape) is the HF element `base + Σ_k t_k · steps[k]` (each a multi-index of
/// the HF shape).
#[derive(Debug, Clone)]
struct View {
    tl: String,
    hf: String,
    base: Vec<usize>,
    /// Per TransformerLens dimension: its length and its step in the HF multi-index.
    dims: Vec<(usize, Vec<usize>)>,
}

impl View {
    fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|(n, _)| *n).collect()
    }

    /// The HF tensor as it is (same shape, row-major).
    fn whole(tl: String, hf: String, shape: &[usize]) -> View {
        let r = shape.len();
        let dims = (0..r).map(|k| (shape[k], unit(r, k, 1))).collect();
        View { tl, hf, base: vec![0; r], dims }
    }

    /// A matrix `[r, c]` transposed: TransformerLens `[c, r]`.
    fn transposed(tl: String, hf: String, [r, c]: [usize; 2]) -> View {
        View { tl, hf, base: vec![0, 0], dims: vec![(c, vec![0, 1]), (r, vec![1, 0])] }
    }

    /// `[heads, d_model, d_head]` from an `nn.Linear` weight `[out, d_model]`: head `h`'s output
    /// `j` is row `row0 + h·head_stride + j`.
    fn heads_from_rows(
        tl: String,
        hf: String,
        heads: usize,
        d_model: usize,
        d_head: usize,
        row0: usize,
        head_stride: usize,
    ) -> View {
        View {
            tl,
            hf,
            base: vec![row0, 0],
            dims: vec![(heads, vec![head_stride, 0]), (d_model, vec![0, 1]), (d_head, vec![1, 0])],
        }
    }

    /// `[heads, d_model, d_head]` from a `Conv1D` weight `[d_model, out]`: head `h`'s output `j`
    /// is column `col0 + h·d_head + j`.
    fn heads_from_columns(tl: String, hf: String, heads: usize, d_model: usize, d_head: usize, col0: usize) -> View {
        View {
            tl,
            hf,
            base: vec![0, col0],
            dims: vec![(heads, vec![0, d_head]), (d_model, vec![1, 0]), (d_head, vec![0, 1])],
        }
    }

    /// `[heads, d_head]` from a bias `[out]`: head `h`'s `j` at `at0 + h·head_stride + j`.
    fn head_bias(tl: String, hf: String, heads: usize, d_head: usize, at0: usize, head_stride: usize) -> View {
        View { tl, hf, base: vec![at0], dims: vec![(heads, vec![head_stride]), (d_head, vec![1])] }
    }

    /// `W_O` `[heads, d_head, d_model]` from an `nn.Linear` weight `[d_model, heads·d_head]`.
    fn w_o_from_linear(tl: String, hf: String, heads: usize, d_head: usize, d_model: usize) -> View {
        View {
            tl,
            hf,
            base: vec![0, 0],
            dims: vec![(heads, vec![0, d_head]), (d_head, vec![0, 1]), (d_model, vec![1, 0])],
        }
    }

    /// `W_O` `[heads, d_head, d_model]` from a `Conv1D` weight `[heads·d_head, d_model]`: a reshape.
    fn w_o_from_conv(tl: String, hf: String, heads: usize, d_head: usize, d_model: usize) -> View {
        View {
            tl,
            hf,
            base: vec![0, 0],
            dims: vec![(heads, vec![d_head, 0]), (d_head, vec![1, 0]), (d_model, vec![0, 1])],
        }
    }

    /// Whether every element lies inside an HF tensor of `shape` (true by construction once the
    /// shapes are checked; checked again rather than trusted).
    fn inside(&self, shape: &[usize]) -> bool {
        if self.base.len() != shape.len() || self.dims.iter().any(|(_, s)| s.len() != shape.len()) {
            return false;
        }
        if self.dims.iter().any(|(n, _)| *n == 0) {
            return true;
        }
        (0..shape.len()).all(|m| {
            let last = self
                .dims
                .iter()
                .try_fold(self.base[m], |acc, (n, step)| acc.checked_add((n - 1).checked_mul(step[m])?));
            last.is_some_and(|last| last < shape[m])
        })
    }
}

fn unit(rank: usize, k: usize, value: usize) -> Vec<usize> {
    let mut v = vec![0; rank];
    v[k] = value;
    v
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    strides
}

/// Lists the TransformerLens tensor a view makes of its HF tensor: a strided `Bytes::Strided`
/// into the file for a tensor left there (through `Listing::add`, which reads a view that is
/// row-major after all as one), gathered for one in memory.
fn resolve(source: &Weights, view: &View, listing: &mut Listing) -> Result<(), WeightError> {
    let entry = source.entries.get(&view.hf).expect("check_tensors found every mapped tensor");
    let src_shape = shape_of(entry).to_vec();
    let shape = view.shape();
    let outside = || {
        format_error(
            &source.origin,
            format!("tensor `{}` of shape {src_shape:?} cannot hold `{}` of shape {shape:?}", view.hf, view.tl),
        )
    };
    if !view.inside(&src_shape) {
        return Err(outside());
    }
    let strides_in = |src_strides: &[usize]| -> (usize, Vec<usize>) {
        let first: usize = view.base.iter().zip(src_strides).map(|(b, s)| b * s).sum();
        let strides =
            view.dims.iter().map(|(_, step)| step.iter().zip(src_strides).map(|(a, s)| a * s).sum()).collect();
        (first, strides)
    };
    match entry {
        Entry::Stored { dtype, at, .. } => {
            let src_strides = at.strides.clone().unwrap_or_else(|| row_major_strides(&src_shape));
            let (first, strides) = strides_in(&src_strides);
            // Inside the HF tensor's elements, so inside the bytes its format module checked.
            let (Some(span), Some(src_span)) = (view_span(&shape, &strides), view_span(&src_shape, &src_strides))
            else {
                return Err(outside());
            };
            if first.checked_add(span).is_none_or(|end| end > src_span) {
                return Err(outside());
            }
            listing.file = at.file;
            let offset = at.offset + (first * dtype.size()) as u64;
            listing.add(Listed {
                name: view.tl.clone(),
                shape,
                dtype: DType::Float(*dtype),
                bytes: Bytes::Strided { offset, strides },
            });
        }
        Entry::Float { dtype, tensor, .. } => {
            let (first, strides) = strides_in(&row_major_strides(&src_shape));
            let data = gather_memory(&tensor.data, first, &strides, &shape);
            listing.entries.insert(view.tl.clone(), float_entry(*dtype, shape, data));
        }
        Entry::Member { .. } => return Err(outside()),
        Entry::Other { dtype, .. } => return Err(WeightError::DType { name: view.hf.clone(), found: dtype.clone() }),
    }
    Ok(())
}

fn gather_memory(data: &[f64], first: usize, strides: &[usize], shape: &[usize]) -> Vec<f64> {
    let count: usize = shape.iter().product();
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return out;
    }
    let mut index = vec![0usize; shape.len()];
    'odometer: loop {
        let e: usize = first + index.iter().zip(strides).map(|(i, t)| i * t).sum::<usize>();
        out.push(data[e]);
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                continue 'odometer;
            }
            index[k] = 0;
        }
        break;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The mapping, family by family

/// What a family's folder must hold and how TransformerLens's tensors are made of it.
struct Mapping {
    /// Every HF tensor the mapping reads, with the shape the config implies.
    expected: BTreeMap<String, Vec<usize>>,
    /// HF tensors that may be present and are not read: a tied `lm_head.weight` (checked against
    /// its shape), with why.
    tolerated: BTreeMap<String, (Vec<usize>, &'static str)>,
    views: Vec<View>,
    /// TransformerLens tensors that are zero (the model language's `bias` reads all four).
    zeros: Vec<(String, Vec<usize>)>,
}

impl Mapping {
    fn new() -> Mapping {
        Mapping { expected: BTreeMap::new(), tolerated: BTreeMap::new(), views: Vec::new(), zeros: Vec::new() }
    }

    /// Expects HF tensor `hf` with `shape`.
    fn expect(&mut self, hf: &str, shape: &[usize]) {
        self.expected.insert(hf.to_string(), shape.to_vec());
    }

    fn whole(&mut self, tl: &str, hf: &str, shape: &[usize]) {
        self.expect(hf, shape);
        self.views.push(View::whole(tl.to_string(), hf.to_string(), shape));
    }

    /// TL `tl` is the HF matrix `hf` (`[r, c]`) transposed.
    fn transposed(&mut self, tl: &str, hf: &str, shape: [usize; 2]) {
        self.expect(hf, &shape);
        self.views.push(View::transposed(tl.to_string(), hf.to_string(), shape));
    }

    fn norm(&mut self, tl: &str, hf: &str, c: &HfConfig) {
        self.whole(&format!("{tl}.w"), &format!("{hf}.weight"), &[c.d_model]);
        if c.norm == HfNorm::LayerNorm {
            self.whole(&format!("{tl}.b"), &format!("{hf}.bias"), &[c.d_model]);
        }
    }
}

/// The HF buffers HF's own loading ignores (causal masks and rotary frequencies, recomputed from
/// the config; older checkpoints saved them): never read, never an error.
fn ignorable(name: &str, family: Family) -> bool {
    let buffers: &[&str] = match family {
        Family::Gpt2 | Family::Gptj => &[".attn.bias", ".attn.masked_bias"],
        Family::GptNeox => &[".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq"],
        Family::Llama | Family::Mistral | Family::Qwen2 => &["rotary_emb.inv_freq"],
    };
    buffers.iter().any(|suffix| name.ends_with(suffix))
}

fn mapping(c: &HfConfig) -> Mapping {
    let mut m = Mapping::new();
    let p = c.family.prefix();
    let (d, v, h, kv, dh, f) = (c.d_model, c.d_vocab, c.n_heads, c.kv_heads, c.d_head, c.d_mlp);
    let embed = match c.family {
        Family::Gpt2 | Family::Gptj => format!("{p}wte.weight"),
        Family::GptNeox => format!("{p}embed_in.weight"),
        _ => format!("{p}embed_tokens.weight"),
    };
    let lm_head = if c.family == Family::GptNeox { "embed_out.weight" } else { "lm_head.weight" };
    m.whole("embed.W_E", &embed, &[v, d]);
    if c.learned_positions {
        m.whole("pos_embed.W_pos", &format!("{p}wpe.weight"), &[c.n_ctx, d]);
    }
    if c.tied {
        m.views.push(View::transposed("unembed.W_U".to_string(), embed.clone(), [v, d]));
        m.tolerated.insert(lm_head.to_string(), (vec![v, d], "tied to the embedding (HF ties it at load)"));
    } else {
        m.transposed("unembed.W_U", lm_head, [v, d]);
    }
    if c.unembed_bias {
        m.whole("unembed.b_U", "lm_head.bias", &[v]);
    }
    let final_norm = match c.family {
        Family::Gpt2 | Family::Gptj => format!("{p}ln_f"),
        Family::GptNeox => format!("{p}final_layer_norm"),
        _ => format!("{p}norm"),
    };
    m.norm("ln_final", &final_norm, c);
    let qkv = ["Q", "K", "V"];
    for l in 0..c.n_layers {
        let tl = |name: &str| format!("blocks.{l}.{name}");
        match c.family {
            Family::Gpt2 => {
                let b = format!("{p}h.{l}.");
                m.norm(&tl("ln1"), &format!("{b}ln_1"), c);
                m.norm(&tl("ln2"), &format!("{b}ln_2"), c);
                let (w, bias) = (format!("{b}attn.c_attn.weight"), format!("{b}attn.c_attn.bias"));
                m.expect(&w, &[d, 3 * h * dh]);
                m.expect(&bias, &[3 * h * dh]);
                for (part, x) in qkv.iter().enumerate() {
                    m.views.push(View::heads_from_columns(
                        tl(&format!("attn.W_{x}")),
                        w.clone(),
                        h,
                        d,
                        dh,
                        part * h * dh,
                    ));
                    m.views.push(View::head_bias(tl(&format!("attn.b_{x}")), bias.clone(), h, dh, part * h * dh, dh));
                }
                let o = format!("{b}attn.c_proj.weight");
                m.expect(&o, &[h * dh, d]);
                m.views.push(View::w_o_from_conv(tl("attn.W_O"), o, h, dh, d));
                m.whole(&tl("attn.b_O"), &format!("{b}attn.c_proj.bias"), &[d]);
                m.whole(&tl("mlp.W_in"), &format!("{b}mlp.c_fc.weight"), &[d, f]);
                m.whole(&tl("mlp.b_in"), &format!("{b}mlp.c_fc.bias"), &[f]);
                m.whole(&tl("mlp.W_out"), &format!("{b}mlp.c_proj.weight"), &[f, d]);
                m.whole(&tl("mlp.b_out"), &format!("{b}mlp.c_proj.bias"), &[d]);
            }
            Family::GptNeox => {
                let b = format!("{p}layers.{l}.");
                m.norm(&tl("ln1"), &format!("{b}input_layernorm"), c);
                m.norm(&tl("ln2"), &format!("{b}post_attention_layernorm"), c);
                let w = format!("{b}attention.query_key_value.weight");
                m.expect(&w, &[3 * h * dh, d]);
                for (part, x) in qkv.iter().enumerate() {
                    m.views.push(View::heads_from_rows(
                        tl(&format!("attn.W_{x}")),
                        w.clone(),
                        h,
                        d,
                        dh,
                        part * dh,
                        3 * dh,
                    ));
                }
                let o = format!("{b}attention.dense.weight");
                m.expect(&o, &[d, h * dh]);
                m.views.push(View::w_o_from_linear(tl("attn.W_O"), o, h, dh, d));
                if c.qkv_bias {
                    let bias = format!("{b}attention.query_key_value.bias");
                    m.expect(&bias, &[3 * h * dh]);
                    for (part, x) in qkv.iter().enumerate() {
                        m.views.push(View::head_bias(
                            tl(&format!("attn.b_{x}")),
                            bias.clone(),
                            h,
                            dh,
                            part * dh,
                            3 * dh,
                        ));
                    }
                    m.whole(&tl("attn.b_O"), &format!("{b}attention.dense.bias"), &[d]);
                }
                m.transposed(&tl("mlp.W_in"), &format!("{b}mlp.dense_h_to_4h.weight"), [f, d]);
                m.whole(&tl("mlp.b_in"), &format!("{b}mlp.dense_h_to_4h.bias"), &[f]);
                m.transposed(&tl("mlp.W_out"), &format!("{b}mlp.dense_4h_to_h.weight"), [d, f]);
                m.whole(&tl("mlp.b_out"), &format!("{b}mlp.dense_4h_to_h.bias"), &[d]);
            }
            Family::Gptj => {
                let b = format!("{p}h.{l}.");
                m.norm(&tl("ln1"), &format!("{b}ln_1"), c);
                for x in qkv {
                    let w = format!("{b}attn.{}_proj.weight", x.to_ascii_lowercase());
                    m.expect(&w, &[h * dh, d]);
                    m.views.push(View::heads_from_rows(tl(&format!("attn.W_{x}")), w, h, d, dh, 0, dh));
                }
                let o = format!("{b}attn.out_proj.weight");
                m.expect(&o, &[d, h * dh]);
                m.views.push(View::w_o_from_linear(tl("attn.W_O"), o, h, dh, d));
                m.transposed(&tl("mlp.W_in"), &format!("{b}mlp.fc_in.weight"), [f, d]);
                m.whole(&tl("mlp.b_in"), &format!("{b}mlp.fc_in.bias"), &[f]);
                m.transposed(&tl("mlp.W_out"), &format!("{b}mlp.fc_out.weight"), [d, f]);
                m.whole(&tl("mlp.b_out"), &format!("{b}mlp.fc_out.bias"), &[d]);
            }
            Family::Llama | Family::Mistral | Family::Qwen2 => {
                let b = format!("{p}layers.{l}.");
                m.norm(&tl("ln1"), &format!("{b}input_layernorm"), c);
                m.norm(&tl("ln2"), &format!("{b}post_attention_layernorm"), c);
                let g = if c.grouped() { "_" } else { "" };
                for (x, heads) in [("Q", h), ("K", kv), ("V", kv)] {
                    let name = if x == "Q" { "attn.W_Q".to_string() } else { format!("attn.{g}W_{x}") };
                    let w = format!("{b}self_attn.{}_proj.weight", x.to_ascii_lowercase());
                    m.expect(&w, &[heads * dh, d]);
                    m.views.push(View::heads_from_rows(tl(&name), w, heads, d, dh, 0, dh));
                    if c.qkv_bias {
                        let name = if x == "Q" { "attn.b_Q".to_string() } else { format!("attn.{g}b_{x}") };
                        let bias = format!("{b}self_attn.{}_proj.bias", x.to_ascii_lowercase());
                        m.expect(&bias, &[heads * dh]);
                        m.views.push(View::head_bias(tl(&name), bias, heads, dh, 0, dh));
                    }
                }
                let o = format!("{b}self_attn.o_proj.weight");
                m.expect(&o, &[d, h * dh]);
                m.views.push(View::w_o_from_linear(tl("attn.W_O"), o, h, dh, d));
                if c.o_bias {
                    m.whole(&tl("attn.b_O"), &format!("{b}self_attn.o_proj.bias"), &[d]);
                } else if c.qkv_bias {
                    m.zeros.push((tl("attn.b_O"), vec![d]));
                }
                m.transposed(&tl("mlp.W_gate"), &format!("{b}mlp.gate_proj.weight"), [f, d]);
                m.transposed(&tl("mlp.W_in"), &format!("{b}mlp.up_proj.weight"), [f, d]);
                m.transposed(&tl("mlp.W_out"), &format!("{b}mlp.down_proj.weight"), [d, f]);
            }
        }
    }
    m
}

/// Every tensor the mapping reads is there with the shape the config implies; every other
/// tensor is one HF ignores too.
fn check_tensors(source: &Weights, m: &Mapping, c: &HfConfig, origin: &str) -> Result<(), WeightError> {
    for (name, expected) in &m.expected {
        let Some(entry) = source.entries.get(name) else {
            return Err(WeightError::Missing {
                name: name.clone(),
                origin: origin.to_string(),
                similar: check::similar_names(name, source.names()),
            });
        };
        let found = shape_of(entry);
        if found != expected.as_slice() {
            return Err(WeightError::Shape { name: name.clone(), expected: expected.clone(), found: found.to_vec() });
        }
    }
    for (name, entry) in &source.entries {
        if m.expected.contains_key(name) {
            continue;
        }
        if let Some((expected, _)) = m.tolerated.get(name) {
            let found = shape_of(entry);
            if found != expected.as_slice() {
                return Err(WeightError::Shape {
                    name: name.clone(),
                    expected: expected.clone(),
                    found: found.to_vec(),
                });
            }
            continue;
        }
        if ignorable(name, c.family) {
            continue;
        }
        return Err(WeightError::Unexpected {
            name: name.clone(),
            origin: origin.to_string(),
            family: c.family.model_type(),
        });
    }
    Ok(())
}
