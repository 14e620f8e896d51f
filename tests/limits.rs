//! Bounded output, time and memory on huge or hostile model files (issue 17): the inputs are
//! generated here, and the checks are on sizes and counts, never on wall time. The work they
//! pin is linear in the file: before, these inputs took minutes or gigabytes.

use pathc::diag::{self, Diagnostic, MAX_RENDERED};
use pathc::syntax::{decode_source, parse_model, SourceError, MAX_LAYERS, MAX_SOURCE_BYTES};

const HEADER: &str = "model m\ndim d_model = 8\ndim d_vocab = 5\nembed\n";

fn diagnostics(source: &str) -> Vec<Diagnostic> {
    match parse_model(source) {
        Ok(_) => panic!("should fail"),
        Err(d) => d,
    }
}

/// One `attn(...)` line with 10,000 unknown arguments (a 130 kB line) used to print the whole
/// line once per error: 1.8 GB on stderr.
#[test]
fn ten_thousand_unknown_arguments_render_the_first_twenty_and_count_the_rest() {
    let args: Vec<String> = (0..10_000).map(|i| format!("zz{i} = 1")).collect();
    let source = format!("{HEADER}layer {{ attn(heads = 1, d_head = 4, {}) }}\nunembed\n", args.join(", "));
    let ds = diagnostics(&source);
    assert_eq!(ds.len(), 10_000);
    let rendered = diag::render("m.tf", &source, &ds);
    assert!(rendered.len() < 8_000, "{} bytes", rendered.len());
    assert_eq!(rendered.matches("error: unknown argument").count(), MAX_RENDERED);
    assert!(rendered.ends_with("\n… and 9980 more errors (only the first 20 are shown)\n"), "{rendered}");
    for line in rendered.lines() {
        assert!(line.chars().count() < 200, "{line}");
    }
    // The last error, alone, still points at its own place on the long line.
    let last = diag::render("m.tf", &source, &ds[ds.len() - 1..]);
    let col = source.lines().nth(4).unwrap().find("zz9999").unwrap() + 1;
    assert!(last.contains(&format!("--> m.tf:5:{col}\n")), "{last}");
    assert!(last.contains("zz9999 = 1) }") && last.contains("^^^^^^ not an argument"), "{last}");
}

/// 100,000 duplicate `dim` lines took 43 s (a scan from the top of the file for each "first
/// declared on line N"); a file at the size limit holds 170,000.
#[test]
fn a_file_of_duplicate_dimensions_reports_each_with_the_first_line() {
    let n = (MAX_SOURCE_BYTES - HEADER.len() - 100) / "dim x\n".len();
    let source =
        format!("{HEADER}dim x = 1\n{}layer {{ attn(heads = 1, d_head = 4) }}\nunembed\n", "dim x\n".repeat(n - 1));
    assert!(source.len() <= MAX_SOURCE_BYTES);
    let ds = diagnostics(&source);
    assert_eq!(ds.len(), n - 1);
    assert!(ds.iter().all(|d| d.help.as_deref() == Some("`x` is first declared on line 5")));
    let rendered = diag::render("m.tf", &source, &ds);
    assert!(rendered.len() < 4_000, "{} bytes", rendered.len());
    assert!(rendered.contains(&format!("… and {} more errors", n - 1 - MAX_RENDERED)), "{rendered}");
}

/// 2 million layers (50 MB) took 15 s and 2.9 GB to say "too many layers": the file is refused
/// by its size before anything is parsed, from bytes or from text.
#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_parsed() {
    let source = format!("{HEADER}{}unembed\n", "layer { attn(heads = 1, d_head = 4) }\n".repeat(2_000_000 / 16));
    assert!(source.len() > 4 * MAX_SOURCE_BYTES);
    let ds = diagnostics(&source);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].message, "the model file is larger than 1048576 bytes (1 MiB)");
    assert_eq!(ds[0].span.start, MAX_SOURCE_BYTES);
    let rendered = diag::render("m.tf", &source, &ds);
    assert!(rendered.len() < 1_000 && rendered.contains("^ the limit is reached here"), "{rendered}");
    match decode_source(source.into_bytes()) {
        Err(e @ SourceError::Invalid { .. }) => {
            let rendered = e.render("m.tf");
            assert!(rendered.starts_with("error: the model file is larger than 1048576 bytes"), "{rendered}");
        }
        other => panic!("{other:?}"),
    }
}

/// Under the size limit, too many layers are one diagnostic at the layer past the limit, and
/// the layers past it are never built.
#[test]
fn too_many_layers_under_the_size_limit_is_one_diagnostic() {
    let layer = "layer{attn(heads=1,d_head=4)}\n";
    let n = (MAX_SOURCE_BYTES - HEADER.len() - 10) / layer.len();
    assert!(n as u64 > 8 * MAX_LAYERS);
    let source = format!("{HEADER}{}unembed\n", layer.repeat(n));
    let ds = diagnostics(&source);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0].message, format!("too many layers (more than {MAX_LAYERS})"));
    assert_eq!(diag::line_col(&source, ds[0].span.start), (MAX_LAYERS as usize + 5, 1));
    let repeated =
        format!("{HEADER}{}unembed\n", "repeat 4096 { layer { attn(heads = 1, d_head = 4) } }\n".repeat(1000));
    assert_eq!(diagnostics(&repeated).len(), 1);
}

/// Messages do not grow with what was written: a 500 kB name is cut, and a help that lists the
/// declared dimensions names a few of them, however many there are.
#[test]
fn messages_stay_short_on_long_names_and_many_dimensions() {
    let long = "a".repeat(500_000);
    let source = format!("{HEADER}layer {{ attn(heads = 1, d_head = 4, {long} = 1) }}\nunembed\n");
    let ds = diagnostics(&source);
    assert_eq!(ds.len(), 1);
    assert!(ds[0].message.len() < 100, "{}", ds[0].message);
    let rendered = diag::render("m.tf", &source, &ds);
    assert!(rendered.len() < 1_000, "{} bytes", rendered.len());
    let source = format!("model {long}\n");
    let ds = diagnostics(&source);
    let rendered = diag::render("m.tf", &source, &ds);
    assert!(rendered.len() < 500 * ds.len(), "{} bytes", rendered.len());

    let dims: String = (0..20_000).map(|i| format!("dim d{i} = 1\n")).collect();
    let uses = "layer { attn(heads = 1, d_head = nope) }\n".repeat(4_000);
    let source = format!("{HEADER}{dims}{uses}unembed\n");
    let ds = diagnostics(&source);
    assert_eq!(ds.len(), 4_000, "{:?}", ds.iter().find(|d| !d.message.contains("nope")));
    let help = ds[0].help.as_deref().unwrap();
    assert!(help.starts_with("declared dimensions: d0, d1, d10,") && help.ends_with(" and 19992 more"), "{help}");
}

/// Syntax errors: at most a few are collected (each a re-parse of the file), on files of any
/// shape up to the limit.
#[test]
fn syntax_errors_on_a_file_at_the_limit_are_few_and_short() {
    let source = format!("{HEADER}{}", "dim x = \n".repeat((MAX_SOURCE_BYTES - HEADER.len()) / 9));
    let ds = diagnostics(&source);
    assert!(ds.len() <= 8, "{}", ds.len());
    let one_line = format!("model m\n{}@\n", "embed ".repeat((MAX_SOURCE_BYTES - 20) / 6));
    let ds = diagnostics(&one_line);
    let rendered = diag::render("m.tf", &one_line, &ds);
    assert!(rendered.len() < 1_000 && rendered.contains("unexpected `@`"), "{rendered}");
}
