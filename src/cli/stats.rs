//! `pathc stats`: per-head circuit statistics (copying scores, Frobenius norms, composition
//! scores) from the weights alone.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use pathc::emit::numbers;
use pathc::stats::{StatsError, StatsOptions};

use super::failure::{read_model, render, Failure};
use super::output::{self, TextOrJson};
use super::parse::{check_rotary_offset, PrecisionArg};
use super::progress::TerminalProgress;
use super::run::ProcessingArgs;

// (`//`, not `///`: see the module docs of `cli`.)
#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    /// A TransformerLens state_dict (f16, bf16, f32, f64): safetensors, npz, or a torch.save
    /// checkpoint (.pt/.pth/.bin, PyTorch >= 1.6; read without running its pickle); or a
    /// HuggingFace model folder (config.json with model.safetensors, shards or pytorch_model.bin).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Read a TransformerLens tensor under another name (see `check --help`).
    #[arg(long = "name", value_name = "TL=FILE")]
    names: Vec<String>,
    // TransformerLens's weight processing, before the statistics (by default the weights are
    // used as given; `--process-weights` gives the statistics of what from_pretrained loads).
    #[command(flatten)]
    processing: ProcessingArgs,
    /// Rotary models: the QK statistics (qk_copying, qk_frobenius, comp_q, comp_k) at offset N =
    /// query position − key position, of W_QK(N) = W_Q·Rot(N)·W_Kᵀ. Default 0 (Rot(0) = Id:
    /// TransformerLens's position-free numbers). An error on a model without rotary layers.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    rotary_offset: Option<i64>,
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    format: TextOrJson,
    /// The precision of the statistics' matrix products: f32 (twice the speed; within 1e-5
    /// relative of f64's numbers) or f64. Sums over the vocabulary, norms and eigenvalues are f64
    /// either way.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Args { model, weights, names, processing, rotary_offset, format, precision } = args;
    keep_freed_memory();
    let source = read_model(&model)?;
    let fail = |e: pathc::Error| render(&model, &source, &e);
    let compiled = pathc::compile(&source).map_err(fail)?;
    check_rotary_offset(&compiled.model, rotary_offset)?;
    let names = pathc::eval::NameMap::parse(&names).map_err(|e| fail(e.into()))?;
    let weights = pathc::load_weights(&weights).map_err(fail)?;
    // The plan depends on the sizes alone and is memoised per process: made on another thread
    // while the tensors are checked, `stats_streamed` finds it made (a model whose sizes are
    // symbolic is planned there, from the weights' sizes). The random baselines (also memoised,
    // also of the sizes alone, read only at the end) are computed on a thread of their own, on
    // the core the plan leaves free and then beside the statistics: waiting for both before the
    // statistics started left a core idle for about 20 ms.
    let options = StatsOptions { processing: processing.processing(), rotary_offset, precision: precision.into() };
    let stats = std::thread::scope(|scope| {
        let planned = scope.spawn(|| pathc::plan_stats(&compiled.model).ok());
        let params =
            pathc::eval::StatsParams::from_weights(&compiled.model, &weights, &names).map_err(|e| fail(e.into()))?;
        let d_heads: Vec<usize> = params.layer_shapes().into_iter().map(|(_, d_head)| d_head).collect();
        let d_model = params.d_model();
        scope.spawn(move || pathc::parallel::alone(|| pathc::stats::prepare_baselines(d_model, &d_heads)));
        // (A failed plan is made again, and its error reported, by `stats_streamed`.)
        let _ = planned.join();
        pathc::stats::stats_streamed(params, options, &TerminalProgress::new()).map_err(|e| match e {
            // A refused step, as `check` renders it.
            StatsError::Processing(e) => fail(e.into()),
            e => Failure::BadInput(format!("error: {e}")),
        })
    })?;
    let mut out = BufWriter::new(io::stdout().lock());
    match format {
        TextOrJson::Json => output::write_json(&mut out, &stats)?,
        TextOrJson::Text => numbers::write_stats_text(&mut out, &compiled.model.name, &stats)?,
    }
    Ok(out.flush()?)
}

/// glibc's malloc serves a block above its mmap threshold (128 KiB at first, raised as such
/// blocks are freed, to 32 MiB at most) with fresh pages from the kernel, and gives them back when
/// it is freed; the statistics allocate and free many weight-sized blocks (a layer's tensors,
/// each head's matrices, the products' buffers), so a run on GPT-2 small faulted in ~80,000
/// pages. Blocks up to 32 MiB taken from the heap, and up to 256 MiB kept free at its top: ~38,000
/// faults, 4 % less wall time (min of 8 alternating runs, 1.40 -> 1.34 s), the same peak RSS.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of malloc's parameters (under malloc's own lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
