//! The weights a model needs, read by TransformerLens's names and checked against the model.

use super::{EvalError, Matrix};
use crate::graph::Source;
use crate::model::{Model, Size};
use crate::weights::Weights;

/// One attention layer's weights, per head, in TransformerLens's layout.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[d_model, d_head]` per head.
    pub w_q: Vec<Matrix>,
    pub w_k: Vec<Matrix>,
    pub w_v: Vec<Matrix>,
    /// `[d_head, d_model]` per head.
    pub w_o: Vec<Matrix>,
    /// `sqrt(d_head)`, TransformerLens's `attn_scale`.
    pub attn_scale: f64,
}

/// The weights a model's expansion needs, checked against its dimensions.
#[derive(Debug, Clone)]
pub struct Params {
    /// `[d_vocab, d_model]`.
    pub w_e: Matrix,
    /// `[n_ctx, d_model]`, when the model has a positional embedding.
    pub w_pos: Option<Matrix>,
    pub layers: Vec<AttnWeights>,
    /// `[d_model, d_vocab]`.
    pub w_u: Matrix,
}

fn known(name: &str, size: &Size) -> Result<usize, EvalError> {
    match size {
        Size::Known(n) => usize::try_from(*n).map_err(|_| EvalError::Symbolic(name.to_string())),
        Size::Symbolic(_) => Err(EvalError::Symbolic(name.to_string())),
    }
}

/// Where each TransformerLens name is found in a weight file: under that name by default;
/// `TL=FILE` pairs rename, with `{l}` standing for the layer number on both sides
/// (`blocks.{l}.attn.W_Q=layers.{l}.wq`). Tensors keep TransformerLens's layout and shapes.
#[derive(Debug, Clone, Default)]
pub struct NameMap {
    renames: Vec<(String, String)>,
}

impl NameMap {
    pub fn parse(pairs: &[String]) -> Result<NameMap, EvalError> {
        let mut renames = Vec::new();
        for pair in pairs {
            let bad = |why: &str| EvalError::NameMap(format!("`{pair}`: {why}"));
            let (from, to) = pair.split_once('=').ok_or_else(|| bad("expected TL_NAME=FILE_NAME"))?;
            if from.is_empty() || to.is_empty() {
                return Err(bad("both names are needed"));
            }
            if from.matches("{l}").count() > 1 || from.contains("{l}") != to.contains("{l}") {
                return Err(bad("`{l}` must appear once on both sides or on neither"));
            }
            renames.push((from.to_string(), to.to_string()));
        }
        Ok(NameMap { renames })
    }

    /// The file's name for the TransformerLens tensor `tl`.
    pub fn resolve(&self, tl: &str) -> String {
        for (from, to) in &self.renames {
            match from.split_once("{l}") {
                None if from == tl => return to.clone(),
                None => {}
                Some((prefix, suffix)) => {
                    let layer = tl.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix));
                    if let Some(layer) = layer.filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())) {
                        return to.replace("{l}", layer);
                    }
                }
            }
        }
        tl.to_string()
    }
}

fn matrix(weights: &Weights, name: &str, rows: usize, cols: usize) -> Result<Matrix, EvalError> {
    let t = weights.get(name, &[rows, cols])?;
    Ok(Matrix::from_row_slice(rows, cols, &t.data))
}

/// `[n_heads, rows, cols]` as one matrix per head.
fn per_head(weights: &Weights, name: &str, n_heads: usize, rows: usize, cols: usize) -> Result<Vec<Matrix>, EvalError> {
    let t = weights.get(name, &[n_heads, rows, cols])?;
    Ok(t.data.chunks_exact(rows * cols).map(|chunk| Matrix::from_row_slice(rows, cols, chunk)).collect())
}

impl Params {
    /// Reads TransformerLens's names (`embed.W_E`, `blocks.{l}.attn.W_Q`, ...), renamed by
    /// `names`, and checks every shape against the model before any computation. Other tensors
    /// in the file (buffers such as `attn.mask`) are ignored.
    pub fn from_weights(model: &Model, weights: &Weights, names: &NameMap) -> Result<Params, EvalError> {
        let d_model = known("d_model", &model.d_model)?;
        let d_vocab = known("d_vocab", &model.d_vocab)?;
        let matrix = |name: &str, rows, cols| matrix(weights, &names.resolve(name), rows, cols);
        let per_head = |name: &str, h, rows, cols| per_head(weights, &names.resolve(name), h, rows, cols);
        let w_e = matrix("embed.W_E", d_vocab, d_model)?;
        let w_pos = match model.pos_embed {
            Some(_) => {
                let n_ctx = model.dims.get("n_ctx").ok_or_else(|| EvalError::Symbolic("n_ctx".to_string()))?;
                let n_ctx = known("n_ctx", n_ctx)?;
                Some(matrix("pos_embed.W_pos", n_ctx, d_model)?)
            }
            None => None,
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for (l, layer) in model.layers.iter().enumerate() {
            let h = layer.attn.n_heads;
            let d_head = known("d_head", &layer.attn.d_head)?;
            let name = |w: &str| format!("blocks.{l}.attn.{w}");
            layers.push(AttnWeights {
                w_q: per_head(&name("W_Q"), h, d_model, d_head)?,
                w_k: per_head(&name("W_K"), h, d_model, d_head)?,
                w_v: per_head(&name("W_V"), h, d_model, d_head)?,
                w_o: per_head(&name("W_O"), h, d_head, d_model)?,
                attn_scale: (d_head as f64).sqrt(),
            });
        }
        let w_u = matrix("unembed.W_U", d_model, d_vocab)?;
        Ok(Params { w_e, w_pos, layers, w_u })
    }

    pub fn d_vocab(&self) -> usize {
        self.w_e.nrows()
    }

    /// Checks a token sequence against the vocabulary and the context length.
    pub fn check_tokens(&self, tokens: &[usize]) -> Result<(), EvalError> {
        if tokens.is_empty() {
            return Err(EvalError::NoTokens);
        }
        if let Some(w_pos) = &self.w_pos {
            if tokens.len() > w_pos.nrows() {
                return Err(EvalError::TooManyTokens { n_tokens: tokens.len(), n_ctx: w_pos.nrows() });
            }
        }
        let d_vocab = self.d_vocab();
        match tokens.iter().enumerate().find(|(_, &t)| t >= d_vocab) {
            Some((position, &token)) => Err(EvalError::TokenOutOfRange { token, position, d_vocab }),
            None => Ok(()),
        }
    }

    /// The source's rows: `W_E[tokens]` or `W_pos[..n]`, `[n, d_model]`.
    pub fn source_rows(&self, source: Source, tokens: &[usize]) -> Matrix {
        match source {
            Source::E => Matrix::from_fn(tokens.len(), self.w_e.ncols(), |i, j| self.w_e[(tokens[i], j)]),
            Source::P => {
                let w_pos = self.w_pos.as_ref().expect("a P path exists only with a positional embedding");
                w_pos.rows(0, tokens.len()).into_owned()
            }
            other => unreachable!("{other:?} has no embedding rows"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NameMap;

    #[test]
    fn names_map_with_layer_placeholders() {
        let map = NameMap::parse(&["blocks.{l}.attn.W_Q=layers.{l}.wq".into(), "embed.W_E=tok".into()]).unwrap();
        assert_eq!(map.resolve("blocks.11.attn.W_Q"), "layers.11.wq");
        assert_eq!(map.resolve("blocks.x.attn.W_Q"), "blocks.x.attn.W_Q");
        assert_eq!(map.resolve("embed.W_E"), "tok");
        assert_eq!(map.resolve("unembed.W_U"), "unembed.W_U");
        for bad in ["nothing", "=x", "a{l}=b", "a{l}{l}=b{l}"] {
            assert!(NameMap::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
