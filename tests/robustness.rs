//! No input makes pathc panic: every example and test model, mutated one character at a time
//! (deleted, or replaced by a character that tends to break things), goes through the whole
//! pipeline and comes back as a value or an error.

use std::panic;

use pathc::ExpandOptions;

const REPLACEMENTS: &[&str] = &["", "{", "}", "(", ")", "=", ",", "0", "9", "a", "_", "\n", "#", "é", "\u{0}", " "];

fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["examples", "tests/models/pass", "tests/models/fail"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("folder").map(|e| e.expect("entry").path()).collect();
        entries.sort();
        for path in entries {
            if path.extension().is_some_and(|e| e == "tf") {
                out.push((path.display().to_string(), std::fs::read_to_string(&path).expect("UTF-8")));
            }
        }
    }
    out
}

/// The pipeline on one input; the enumeration limit keeps mutated head counts cheap.
fn run(source: &str) {
    let options = ExpandOptions { limit: 500, qk: true, ..ExpandOptions::default() };
    if let Ok(expansion) = pathc::expand(source, &options) {
        let mut sink = Vec::new();
        pathc::emit::text::write(&expansion, false, &mut sink).expect("in memory");
        pathc::emit::json::write(&expansion, &mut sink).expect("in memory");
    }
}

#[test]
fn single_character_mutations_never_panic() {
    let mut inputs = 0;
    for (name, source) in sources() {
        let boundaries: Vec<usize> = source.char_indices().map(|(i, _)| i).collect();
        for (k, &at) in boundaries.iter().enumerate() {
            let next = boundaries.get(k + 1).copied().unwrap_or(source.len());
            // Deletion, and two replacements that rotate through the list with the position.
            let rotating = [
                REPLACEMENTS[1 + k % (REPLACEMENTS.len() - 1)],
                REPLACEMENTS[1 + (k * 7 + 3) % (REPLACEMENTS.len() - 1)],
            ];
            for replacement in [REPLACEMENTS[0]].iter().chain(&rotating) {
                let mutated = format!("{}{}{}", &source[..at], replacement, &source[next..]);
                inputs += 1;
                if panic::catch_unwind(|| run(&mutated)).is_err() {
                    panic!("{name}: replacing byte {at} by {replacement:?} panics on:\n{mutated}");
                }
            }
        }
    }
    assert!(inputs > 5_000, "only {inputs} inputs");
}

#[test]
fn truncated_files_never_panic() {
    for (name, source) in sources() {
        for (at, _) in source.char_indices() {
            if panic::catch_unwind(|| run(&source[..at])).is_err() {
                panic!("{name}: truncation at byte {at} panics");
            }
        }
    }
}

/// Issue 17 (1): weights of any magnitude give finite numbers or an error saying where a
/// non-finite value arose — never `inf` or `NaN` in a result, never a passing check on NaN. Every
/// weight matrix of each fixture is scaled by 10^k (f64 file), for k up to 300.
#[test]
fn weights_of_any_magnitude_give_numbers_or_an_error() {
    use pathc::eval::{self, NameMap, Target, Targets};
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};

    fn finite(values: impl IntoIterator<Item = f64>) -> bool {
        values.into_iter().all(f64::is_finite)
    }
    let (mut numbers, mut errors) = (0, 0);
    for fixture in ["attn1", "attn2", "full2"] {
        let source = std::fs::read_to_string(format!("examples/{fixture}.tf")).unwrap();
        let bytes = std::fs::read(format!("tests/fixtures/{fixture}/model.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        for exponent in [0, 10, 30, 38, 60, 100, 150, 300] {
            let scale = 10f64.powi(exponent);
            let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let k = if name.contains(".W_") { scale } else { 1.0 };
                    let data: Vec<f64> = match view.dtype() {
                        Dtype::F32 => {
                            view.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
                        }
                        Dtype::F64 => {
                            view.data().chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
                        }
                        // Buffers (`attn.mask`) stay as they are.
                        other => return (name, other, view.shape().to_vec(), view.data().to_vec()),
                    };
                    let data = data.iter().flat_map(|x| (x * k).to_le_bytes()).collect();
                    (name, Dtype::F64, view.shape().to_vec(), data)
                })
                .collect();
            let views: Vec<(String, TensorView<'_>)> =
                owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
            let scaled = safetensors::serialize(views, None).unwrap();
            let what = format!("{fixture} × 1e{exponent}");

            let compiled = pathc::compile(&source).unwrap();
            let weights = pathc::weights::Weights::from_bytes(&scaled, &what).unwrap();
            let params = eval::Params::from_weights(&compiled.model, &weights, &NameMap::default()).unwrap();
            match pathc::stats::stats(&params) {
                Ok(s) => {
                    let all = s.ov_copying.iter().chain(&s.qk_copying).chain(&s.ov_frobenius).chain(&s.qk_frobenius);
                    let pairs = s.comp_q.iter().chain(&s.comp_k).chain(&s.comp_v).flatten().flatten();
                    assert!(finite(all.flatten().copied().chain(pairs.flatten().copied())), "{what}: stats");
                    numbers += 1;
                }
                Err(e) => {
                    assert!(e.to_string().contains("arose in"), "{what}: {e}");
                    errors += 1;
                }
            }
            let tokens = [1, 2, 3, 4, 5, 1, 2, 3];
            let forward = match eval::forward(&params, &tokens) {
                Ok(forward) => forward,
                Err(e) => {
                    assert!(e.to_string().contains("arose in"), "{what}: {e}");
                    errors += 1;
                    continue;
                }
            };
            assert!(finite(forward.logits.iter().copied()), "{what}: forward");
            let expansion = pathc::expand_compiled(compiled, &pathc::ExpandOptions::default()).unwrap();
            match eval::check(&expansion, &params, &forward) {
                Ok(report) => assert!(report.max_abs_error.is_finite() && report.max_abs_logit.is_finite(), "{what}"),
                Err(e) => assert!(e.to_string().contains("arose in"), "{what}: {e}"),
            }
            let targets = Targets::resolve(Target::Next, &tokens, params.d_vocab(), None).unwrap();
            match eval::target_logits(&expansion, &params, &forward, &targets) {
                Ok(dla) => assert!(finite(dla.values.iter().copied()), "{what}: target"),
                Err(e) => assert!(e.to_string().contains("arose in"), "{what}: {e}"),
            }
            numbers += 1;
        }
    }
    // Both outcomes occur: small scales compute, large ones overflow.
    assert!(numbers > 10 && errors > 10, "{numbers} computed, {errors} refused");
}
