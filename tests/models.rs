//! Data-driven tests over folders of model files, one helper each:
//! `tests/models/pass/*.tf` must expand (the text expansion is snapshotted), and
//! `tests/models/fail/*.tf` must fail with diagnostics (the rendered diagnostics are
//! snapshotted; a file that is not UTF-8 is read as the command line reads it, and its diagnostic
//! snapshotted). A first line `# expand: --qk --max-order K` sets the options.

use std::path::Path;

use pathc::{emit, ExpandOptions};

fn options(source: &str) -> ExpandOptions {
    let mut options = ExpandOptions::default();
    let Some(flags) = source.lines().next().and_then(|l| l.strip_prefix("# expand:")) else {
        return options;
    };
    let mut words = flags.split_whitespace();
    while let Some(word) = words.next() {
        match word {
            "--qk" => options.qk = true,
            "--max-order" => options.max_order = Some(words.next().expect("a number").parse().expect("a number")),
            other => panic!("unknown test directive {other}"),
        }
    }
    options
}

fn file_name(path: &Path) -> String {
    path.file_name().expect("a file").to_string_lossy().into_owned()
}

#[test]
fn passing_models_expand() {
    insta::glob!("models/pass/*.tf", |path| {
        let source = std::fs::read_to_string(path).expect("readable");
        let expansion = match pathc::expand(&source, &options(&source)) {
            Ok(e) => e,
            Err(e) => panic!(
                "{} should expand: {e}\n{}",
                path.display(),
                pathc::diag::render(&file_name(path), &source, e.diagnostics())
            ),
        };
        let mut text = Vec::new();
        emit::text::write(&expansion, false, &mut text).expect("writing to memory");
        insta::assert_snapshot!(String::from_utf8(text).expect("UTF-8"));
    });
}

#[test]
fn failing_models_report_diagnostics() {
    insta::glob!("models/fail/*.tf", |path| {
        // Read as the command line does: bytes that are not a model's text are a diagnostic too.
        let source = match pathc::syntax::decode_source(std::fs::read(path).expect("readable")) {
            Ok(source) => source,
            Err(e) => {
                insta::assert_snapshot!(e.render(&file_name(path)));
                return;
            }
        };
        let error = match pathc::expand(&source, &options(&source)) {
            Ok(_) => panic!("{} should fail", path.display()),
            Err(e) => e,
        };
        let rendered = if error.diagnostics().is_empty() {
            format!("error: {error}\n")
        } else {
            pathc::diag::render(&file_name(path), &source, error.diagnostics())
        };
        insta::assert_snapshot!(rendered);
    });
}
