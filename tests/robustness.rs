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
