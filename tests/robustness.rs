//! No input makes pathc panic, and what it says about any input is bounded and printable: every
//! example and test model, mutated one character at a time (deleted, or replaced by a character
//! that tends to break things), truncated, with other line endings, with bytes that are not
//! UTF-8 and with very long lines, goes through the whole pipeline and comes back as a value or
//! as diagnostics, which render without a raw control character and within a bounded size.

use std::panic;

use pathc::diag::{self, LINE_WINDOW, MAX_RENDERED};
use pathc::syntax::{decode_source, SourceError};
use pathc::ExpandOptions;

const REPLACEMENTS: &[&str] =
    &["", "{", "}", "(", ")", "=", ",", "0", "9", "a", "_", "\n", "#", "é", "\u{0}", " ", "\r"];

/// Every model file of the repository that is UTF-8 (`tests/models/fail` also holds files that
/// are not; [`invalid_utf8_is_located_at_the_first_bad_byte`] covers them).
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["examples", "tests/models/pass", "tests/models/fail"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("folder").map(|e| e.expect("entry").path()).collect();
        entries.sort();
        for path in entries {
            if path.extension().is_some_and(|e| e == "tf") {
                if let Ok(source) = String::from_utf8(std::fs::read(&path).expect("readable")) {
                    out.push((path.display().to_string(), source));
                }
            }
        }
    }
    out
}

/// The pipeline on one input; the enumeration limit keeps mutated head counts cheap. Returns the
/// rendered diagnostics (empty when there are none), checked to be printable and bounded.
fn run(source: &str) -> String {
    let options = ExpandOptions { limit: 500, qk: true, ..ExpandOptions::default() };
    match pathc::expand(source, &options) {
        Ok(expansion) => {
            let mut sink = Vec::new();
            pathc::emit::text::write(&expansion, false, &mut sink).expect("in memory");
            pathc::emit::json::write(&expansion, &mut sink).expect("in memory");
            String::new()
        }
        Err(e) => {
            let rendered = diag::render("m.tf", source, e.diagnostics());
            check_rendered(&rendered);
            rendered
        }
    }
}

/// Rendered diagnostics hold no raw control character, no line much longer than the window,
/// and no more than [`MAX_RENDERED`] errors.
fn check_rendered(rendered: &str) {
    assert!(!rendered.chars().any(|c| c.is_control() && c != '\n'), "a raw control character in:\n{rendered:?}");
    for line in rendered.lines() {
        // The gutter, a window of the source line (with `…` at both ends) or a message.
        assert!(line.chars().count() <= 2 * LINE_WINDOW + 400, "a line of {} characters", line.chars().count());
    }
    assert!(rendered.matches("\nerror: ").count() < MAX_RENDERED, "{rendered}");
}

/// The sources with `\n` line endings only, to derive the other endings and locations from.
fn lf_sources() -> Vec<(String, String)> {
    sources().into_iter().filter(|(_, source)| !source.contains('\r')).collect()
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
            match eval::check(&expansion, &params, &forward, &pathc::progress::Silent) {
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

/// `\r\n` and a lone `\r` end lines exactly as `\n` does: every file gives the same result and
/// the same rendered diagnostics (lines, columns, shown lines) with any of the three.
#[test]
fn line_endings_do_not_change_what_is_reported() {
    for (name, source) in lf_sources() {
        let lf = run(&source);
        for (ending, variant) in [("CR", source.replace('\n', "\r")), ("CRLF", source.replace('\n', "\r\n"))] {
            assert_eq!(run(&variant), lf, "{name} with {ending} line endings");
        }
    }
}

/// A byte that is not UTF-8, anywhere in any file: the diagnostic is at its line and column.
#[test]
fn invalid_utf8_is_located_at_the_first_bad_byte() {
    for (name, source) in lf_sources() {
        let bytes = source.as_bytes();
        let lines: Vec<&str> = source.split('\n').collect();
        let mut checked = 0;
        for (line, text) in lines.iter().enumerate().step_by(3) {
            let line_start: usize = lines[..line].iter().map(|l| l.len() + 1).sum();
            for bad in [&b"\xFF"[..], b"\xE9", b"\xC3(", b"\xE2\x82"] {
                let at =
                    (0..=line_start + text.len() / 2).rev().find(|&i| source.is_char_boundary(i)).expect("0 is one");
                let mut mutated = bytes[..at].to_vec();
                mutated.extend_from_slice(bad);
                mutated.extend_from_slice(&bytes[at..]);
                let rendered = match decode_source(mutated) {
                    Err(e @ SourceError::Invalid { .. }) => e.render("m.tf"),
                    other => panic!("{name}: {bad:?} at byte {at}: {other:?}"),
                };
                check_rendered(&rendered);
                let col = source[line_start..at].chars().count() + 1;
                let location = format!(" --> m.tf:{}:{col}\n", line + 1);
                assert!(
                    rendered.contains(&location),
                    "{name}: {bad:?} at byte {at}: expected {location} in\n{rendered}"
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "{name}");
    }
}

/// Every line indented by thousands of spaces: diagnostics show a window of each line, at most
/// [`LINE_WINDOW`] characters and the `…` marks.
#[test]
fn very_long_lines_are_windowed() {
    let indent = " ".repeat(5_000);
    let mut windowed = 0;
    for (name, source) in lf_sources() {
        let indented: String = source.lines().map(|l| format!("{indent}{l}\n")).collect();
        let rendered = run(&indented);
        let shown_lines =
            rendered.lines().filter_map(|l| l.split_once(" | ")).filter(|(g, _)| g.trim().parse::<usize>().is_ok());
        for (_, shown) in shown_lines {
            assert!(shown.chars().count() <= LINE_WINDOW + 2, "{name}:\n{rendered}");
            windowed += usize::from(shown.starts_with('…'));
        }
    }
    assert!(windowed > 20, "only {windowed} windowed lines");
}
