//! Renderings that really render: every LaTeX expansion compiles with `pdflatex`, every term graph
//! renders with Graphviz's `dot`.
//!
//! The structural checks (ASCII-only LaTeX with balanced braces and environments, DOT edges between
//! declared nodes) always run. The renderers run when `pdflatex` and `dot` are on the PATH; when they
//! are not, those checks print a note and pass, unless `PATHC_REQUIRE_RENDERERS=1`, which `.ci/run`
//! sets after installing both (Debian's `texlive-latex-base` and `graphviz`): there a missing
//! renderer is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use pathc::{emit, ExpandOptions};

/// What is rendered: an example and the options of its expansion.
const CASES: &[(&str, Option<u32>, bool, bool)] = &[
    // (example, max_order, qk, templates only)
    ("attn1.tf", None, true, false),
    ("attn2.tf", None, true, false),
    ("attn-only-2l.tf", Some(1), true, true),
    ("full2.tf", Some(1), true, false),
    ("full2.tf", None, false, true),
    ("gpt2-small.tf", Some(1), false, true),
];

fn latex(example: &str, max_order: Option<u32>, qk: bool, templates: bool) -> String {
    let source = std::fs::read_to_string(format!("examples/{example}")).expect("example");
    let options = ExpandOptions { max_order, qk, limit: u64::MAX, ..ExpandOptions::default() };
    let expansion = pathc::expand(&source, &options).expect("expands");
    let mut out = Vec::new();
    emit::latex::write(&expansion, templates, &mut out).expect("in memory");
    String::from_utf8(out).expect("UTF-8")
}

/// Whether `tool` runs; a missing tool is a failure when required, else a printed note.
fn renderer(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
        || Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("PATHC_REQUIRE_RENDERERS").as_deref() != Ok("1"),
            "`{tool}` is required (PATHC_REQUIRE_RENDERERS=1) but not on the PATH"
        );
        eprintln!("note: `{tool}` is not on the PATH; its rendering check is skipped");
    }
    found
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-render-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The LaTeX is plain ASCII (pdflatex has no glyphs for `⊗`, `σ`, `ᵀ`), every brace is closed, and
/// every `\begin{…}` meets its `\end{…}`.
fn check_latex_structure(name: &str, tex: &str) {
    if let Some((line, text)) = tex.lines().enumerate().find(|(_, l)| !l.is_ascii()) {
        panic!("{name}: non-ASCII character on line {}: {text}", line + 1);
    }
    let mut depth = 0i64;
    let mut environments = Vec::new();
    for (i, line) in tex.lines().enumerate() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next(); // an escaped character (`\{`, `\_`, `\\`) is not structure
                }
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{name}: unbalanced `}}` on line {}", i + 1);
        }
        for (keyword, opening) in [("\\begin{", true), ("\\end{", false)] {
            for (at, _) in line.match_indices(keyword) {
                let rest = &line[at + keyword.len()..];
                let env = &rest[..rest.find('}').expect("closed environment name")];
                if opening {
                    environments.push(env.to_string());
                } else {
                    assert_eq!(environments.pop().as_deref(), Some(env), "{name}: line {}", i + 1);
                }
            }
        }
    }
    assert_eq!(depth, 0, "{name}: unbalanced braces");
    assert!(environments.is_empty(), "{name}: unclosed environments {environments:?}");
}

#[test]
fn latex_is_plain_balanced_and_compiles() {
    let compile = renderer("pdflatex");
    let dir = scratch("latex");
    for (i, &(example, max_order, qk, templates)) in CASES.iter().enumerate() {
        let name = format!("{example} max_order={max_order:?} qk={qk} templates={templates}");
        let tex = latex(example, max_order, qk, templates);
        check_latex_structure(&name, &tex);
        if !compile {
            continue;
        }
        let file = dir.join(format!("case{i}.tex"));
        std::fs::write(&file, &tex).expect("write");
        let out = Command::new("pdflatex")
            .args(["-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape"])
            .arg(file.file_name().expect("a file"))
            .current_dir(&dir)
            .output()
            .expect("pdflatex runs");
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: pdflatex failed:\n{log}");
        assert!(!log.contains("Missing character"), "{name}: a glyph is missing:\n{log}");
        let pdf = std::fs::metadata(dir.join(format!("case{i}.pdf"))).expect("a PDF");
        assert!(pdf.len() > 1000, "{name}: PDF of {} bytes", pdf.len());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Every edge joins declared nodes, and the graph is one `digraph { … }`.
fn check_dot_structure(name: &str, dot: &str) {
    assert!(dot.starts_with("digraph ") && dot.trim_end().ends_with('}'), "{name}");
    let declared: Vec<&str> =
        dot.lines().filter(|l| l.contains("[label=")).map(|l| l.trim().split(' ').next().expect("an id")).collect();
    for line in dot.lines().filter(|l| l.contains("->")) {
        let mut ends = line.trim().split(" -> ");
        let from = ends.next().expect("from");
        let to = ends.next().expect("to").split(' ').next().expect("to");
        assert!(declared.contains(&from) && declared.contains(&to), "{name}: edge between undeclared nodes: {line}");
    }
}

fn render_dot(dir: &Path, name: &str, dot: &str) -> String {
    let file = dir.join(format!("{name}.dot"));
    std::fs::write(&file, dot).expect("write");
    let out = Command::new("dot").arg("-Tsvg").arg(&file).output().expect("dot runs");
    assert!(out.status.success(), "{name}: dot failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 SVG")
}

#[test]
fn term_graphs_render_with_graphviz() {
    let render = renderer("dot");
    let dir = scratch("dot");
    for example in ["attn1", "attn2", "attn-only-12l", "full2", "gpt2-small"] {
        let source = std::fs::read_to_string(format!("examples/{example}.tf")).expect("example");
        let compiled = pathc::compile(&source).expect("compiles");
        let dot = emit::dot::write(&compiled.graph, &compiled.model.name);
        check_dot_structure(example, &dot);
        if !render {
            continue;
        }
        let svg = render_dot(&dir, example, &dot);
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{example}: not an SVG");
        // Every node is drawn with its label: the heads, and for full models the MLPs and norms.
        let heads = compiled.model.heads_per_layer();
        for (layer, &n) in heads.iter().enumerate() {
            for head in 0..n {
                assert!(svg.contains(&format!(">L{layer}H{head}<")), "{example}: no node L{layer}H{head}");
            }
        }
        if example == "full2" {
            for label in ["MLP (layer 1)", "ln1 (layer 0)", "ln_final", "b_O (layer 1)", "unembed (W_U)"] {
                assert!(svg.contains(&format!(">{label}<")), "{example}: no node {label}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
