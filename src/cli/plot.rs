//! `pathc plot`: statistics as heatmaps, or one token's largest path contributions as a bar
//! chart, in SVG.

use std::path::PathBuf;

use clap::ValueEnum;

use pathc::emit::plot::StatsPlot;
use pathc::stats::{StatsError, StatsOptions};

use super::failure::{read_model, render, Failure};
use super::output;
use super::parse::{check_rotary_offset, parse_position, parse_target, PrecisionArg, TargetArg};
use super::run::{
    dataset_failure, evaluate, input, load, logit_question, resolve_target, target_at, ProcessingArgs, RunArgs,
};

// (`//`, not `///`: see the module docs of `cli`.)
//
// `--weights`, `--tokens`, `--text`, `--tokenizer`, `--prepend-bos`, `--max-order`, `--limit` and
// `--name` repeat `RunArgs` rather than flatten it: here `--tokens` or `--text` is optional (the
// statistics plots take none), the help of most of them says they apply to `--what paths` only, and `--what`, `--pos`, `--target`, `--top` and
// the processing options stand between them in the help. Flattening would change the help text.
// The processing options are `stats`' (`ProcessingArgs`, flattened), for the statistics plots.
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    /// A TransformerLens state_dict (f16, bf16, f32, f64): safetensors, npz, or a torch.save
    /// checkpoint (.pt/.pth/.bin, PyTorch >= 1.6; read without running its pickle); or a
    /// HuggingFace model folder (config.json with model.safetensors, shards or pytorch_model.bin).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// What to plot.
    #[arg(long, value_enum)]
    what: PlotWhat,
    /// Token ids, comma-separated (`--what paths` only, where they or `--text` are required).
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "text")]
    tokens: Vec<usize>,
    /// A dataset of prompts (`--what paths`; see `paths --help`): the mean contribution of each path
    /// to the metric over the prompts, with the standard deviation as error bars.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tokens", "text", "attention_mask"])]
    dataset: Option<PathBuf>,
    /// With --dataset: subtract this token's logit (the logit difference; see `paths --help`).
    #[arg(long, value_name = "TOKEN", value_parser = parse_target, allow_hyphen_values = true)]
    against: Option<TargetArg>,
    /// The text to run the model on (`--what paths`; see `paths --help`).
    #[arg(long, value_name = "TEXT")]
    text: Option<String>,
    /// A HuggingFace tokenizer.json for `--text` and the token strings (`--what paths`; default:
    /// the tokenizer.json of a --weights folder).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Put the BOS token before `--text` (`--what paths`; see `paths --help`).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    prepend_bos: Option<bool>,
    /// Key mask, one 0 or 1 per token (`--what paths`; see `check --help`).
    #[arg(long, value_name = "0,1,...", value_delimiter = ',', num_args = 1.., value_parser = super::parse::parse_mask_bit)]
    attention_mask: Option<Vec<bool>>,
    /// The position (`--what paths`): a number or `last` (the default).
    #[arg(long)]
    pos: Option<String>,
    /// The token whose logit the paths are ranked by (`--what paths`): a token id, `next` for
    /// the token after the position, or a text that is one token (see `paths --help`; default:
    /// the model's top prediction at the position).
    #[arg(long, value_name = "TOKEN|next", value_parser = parse_target, allow_hyphen_values = true)]
    target: Option<TargetArg>,
    /// How many paths (`--what paths`; default 20).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    // TransformerLens's weight processing before the statistics (statistics plots; as `stats`).
    #[command(flatten)]
    processing: ProcessingArgs,
    /// Rotary models: the QK circuits at this offset (statistics plots; see `stats --help`).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    rotary_offset: Option<i64>,
    /// The precision of the statistics' matrix products (statistics plots; see `stats --help`).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Keep only paths through at most K heads (`--what paths`).
    #[arg(long, value_name = "K")]
    max_order: Option<u32>,
    /// Refuse to enumerate more paths than this (`--what paths`).
    #[arg(long, value_name = "N", default_value_t = pathc::DEFAULT_ENUMERATION_LIMIT)]
    limit: u64,
    /// Read a TransformerLens tensor under another name (see `check --help`).
    #[arg(long = "name", value_name = "TL=FILE")]
    names: Vec<String>,
    /// The SVG file to write (replaced only once the plot is complete).
    #[arg(short, long, value_name = "FILE", required = true)]
    output: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlotWhat {
    /// Q-composition scores, (layers·heads) × (layers·heads).
    CompQ,
    /// K-composition scores.
    CompK,
    /// V-composition scores.
    CompV,
    /// OV copying scores, layers × heads.
    OvCopying,
    /// QK copying scores, layers × heads.
    QkCopying,
    /// The largest path contributions to one token's logit (needs --tokens).
    Paths,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args {
        model,
        weights,
        what,
        tokens,
        dataset,
        against,
        text,
        tokenizer,
        prepend_bos,
        attention_mask,
        pos,
        target,
        top,
        precision,
        processing,
        rotary_offset,
        max_order,
        limit,
        names,
        output,
    } = args;
    let stats_plot = match what {
        PlotWhat::CompQ => Some(StatsPlot::CompQ),
        PlotWhat::CompK => Some(StatsPlot::CompK),
        PlotWhat::CompV => Some(StatsPlot::CompV),
        PlotWhat::OvCopying => Some(StatsPlot::OvCopying),
        PlotWhat::QkCopying => Some(StatsPlot::QkCopying),
        PlotWhat::Paths => None,
    };
    let svg = if let Some(plot) = stats_plot {
        let misplaced = [
            (!tokens.is_empty(), "--tokens"),
            (dataset.is_some(), "--dataset"),
            (against.is_some(), "--against"),
            (text.is_some(), "--text"),
            (tokenizer.is_some(), "--tokenizer"),
            (prepend_bos.is_some(), "--prepend-bos"),
            (attention_mask.is_some(), "--attention-mask"),
            (pos.is_some(), "--pos"),
            (target.is_some(), "--target"),
            (top.is_some(), "--top"),
            (max_order.is_some(), "--max-order"),
        ];
        if let Some((_, flag)) = misplaced.iter().find(|(given, _)| *given) {
            return Err(Failure::BadInput(format!(
                "error: {flag} applies only to --what paths (statistics come from the weights alone)"
            )));
        }
        let source = read_model(&model)?;
        let fail = |e: pathc::Error| render(&model, &source, &e);
        let compiled = pathc::compile(&source).map_err(fail)?;
        check_rotary_offset(&compiled.model, rotary_offset)?;
        let names = pathc::eval::NameMap::parse(&names).map_err(|e| fail(e.into()))?;
        let params = pathc::load_params(&compiled, &weights, &names).map_err(fail)?;
        let options = StatsOptions { processing: processing.processing(), rotary_offset, precision: precision.into() };
        let stats = pathc::stats::stats_processed(&params, options).map_err(|e| match e {
            // A refused step, as `stats` and `check` render it.
            StatsError::Processing(e) => fail(e.into()),
            e => Failure::BadInput(format!("error: {e}")),
        })?;
        pathc::emit::plot::stats_heatmap(&compiled.model.name, &stats, plot)
    } else {
        if tokens.is_empty() && text.is_none() && dataset.is_none() {
            return Err(Failure::BadInput(
                "error: --what paths needs --tokens (the token ids to run the model on, e.g. --tokens 3,7,1), --text or --dataset"
                    .to_string(),
            ));
        }
        if against.is_some() && dataset.is_none() {
            return Err(Failure::BadInput("error: --against applies to --dataset".to_string()));
        }
        if processing.fold_ln {
            return Err(Failure::BadInput(
                "error: --fold-ln applies to the statistics plots; path contributions always use the folded weights with the LayerNorm scales frozen".to_string(),
            ));
        }
        let steps = [
            (processing.center_writing_weights, "--center-writing-weights"),
            (processing.center_unembed, "--center-unembed"),
            (processing.fold_value_biases, "--fold-value-biases"),
            (processing.process_weights, "--process-weights"),
        ];
        if let Some((_, flag)) = steps.iter().find(|(given, _)| *given) {
            return Err(Failure::BadInput(format!(
                "error: {flag} applies to the statistics plots here; for the path contributions of processed weights, see `pathc paths {flag}`"
            )));
        }
        if rotary_offset.is_some() {
            return Err(Failure::BadInput(
                "error: --rotary-offset applies to the statistics plots; path contributions use every score at its own positions".to_string(),
            ));
        }
        if let Some(dataset) = dataset {
            let run = RunArgs {
                weights,
                tokens,
                text,
                dataset: Some(dataset),
                tokenizer,
                prepend_bos,
                attention_mask,
                max_order,
                limit,
                names,
                processing: Default::default(),
            };
            let svg = dataset_chart(&model, &run, pos.as_deref(), target.as_ref(), against.as_ref(), top)?;
            return output::write(Some(&output), svg.as_bytes());
        }
        let input = input(&tokens, text.as_deref(), tokenizer.as_deref(), prepend_bos, &weights)?;
        let target = target.map(|t| resolve_target(&t, &input)).transpose()?;
        let run = RunArgs {
            weights,
            tokens,
            text,
            dataset: None,
            tokenizer,
            prepend_bos,
            attention_mask,
            max_order,
            limit,
            names,
            processing: Default::default(),
        };
        let evaluation = evaluate(&model, &run, input.ids(), false)?;
        let position = match parse_position(pos.as_deref().unwrap_or("last"), input.ids().len())? {
            Some(p) => p,
            None => {
                return Err(Failure::BadInput(
                    "error: --what paths plots one position: give a number or `last`, not `all`".to_string(),
                ))
            }
        };
        let (target, chosen) = target_at(&evaluation, target, position)?;
        pathc::emit::plot::paths_chart(&evaluation, position, target, chosen, top.unwrap_or(20), input.labels())
    };
    let svg = svg.map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    output::write(Some(&output), svg.as_bytes())
}

/// `--what paths --dataset`: the largest mean contributions with their standard deviations.
fn dataset_chart(
    model: &std::path::Path,
    run: &RunArgs,
    pos: Option<&str>,
    target: Option<&TargetArg>,
    against: Option<&TargetArg>,
    top: Option<usize>,
) -> Result<String, Failure> {
    let dataset = run.dataset_input()?.expect("a dataset");
    let question = logit_question(target, against, pos, dataset.tokenizer.as_ref())?;
    let (expansion, params) = load(model, run, false)?;
    let result = pathc::aggregate::dataset_paths(
        &expansion,
        &params,
        &dataset.path,
        dataset.inputs(),
        question,
        None,
        &super::progress::TerminalProgress::new(),
        |_| Ok(()),
    )
    .map_err(dataset_failure)?;
    let metric = pathc::emit::dataset::describe_logit_question(&question);
    let metric = metric.split(';').next().unwrap_or_default();
    pathc::emit::plot::dataset_paths_chart(&expansion.model.name, &dataset.path, metric, &result, top.unwrap_or(20))
        .map_err(|e| Failure::BadInput(format!("error: {e}")))
}
