//! The library's modules import each other without circles: every arrow points down the
//! pipeline (ARCHITECTURE.md). A module is a top-level item of `src/` (`graph.rs`, `emit/`, ...);
//! an edge `a → b` is a line of code in `a` naming `crate::b` (comments, doc links included,
//! are not code and are skipped). `lib.rs`, which strings the stages together, and the binary
//! (`main.rs`, `cli/`) are above everything and not part of the check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level library modules and, for each, the modules its code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let module = first.trim_end_matches(".rs").to_string();
            if ["lib", "main", "cli"].contains(&module.as_str()) {
                continue;
            }
            let deps = graph.entry(module.clone()).or_default();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                let mut rest = code;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() && name != module && name.chars().next().unwrap().is_ascii_lowercase() {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn library_modules_import_each_other_without_circles() {
    let graph = imports();
    for (module, deps) in &graph {
        for dep in deps {
            assert!(graph.contains_key(dep), "{module} names crate::{dep}, which is not a module");
        }
    }
    // Depth-first search for a back edge; report the circle it closes.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|&n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node);
            panic!("import circle: {}", circle.join(" → "));
        }
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}

/// The layering ARCHITECTURE.md promises, pinned where it matters most: the front end knows
/// nothing of numbers, emit's symbolic part nothing of weights, plan nothing of stats or eval.
#[test]
fn stages_know_nothing_of_later_ones() {
    let graph = imports();
    let forbidden: &[(&str, &[&str])] = &[
        ("diag", &["syntax", "model", "graph", "rewrite", "paths", "eval", "weights", "stats", "plan", "emit"]),
        ("syntax", &["graph", "rewrite", "paths", "eval", "weights", "stats", "plan", "emit", "codegen"]),
        ("model", &["syntax", "graph", "rewrite", "paths", "eval", "weights", "stats", "plan", "emit"]),
        ("graph", &["rewrite", "paths", "eval", "weights", "stats", "plan", "emit", "codegen"]),
        ("rewrite", &["eval", "weights", "stats", "plan", "emit", "codegen"]),
        ("paths", &["rewrite", "eval", "weights", "stats", "plan", "emit", "codegen"]),
        ("weights", &["eval", "stats", "plan", "emit", "codegen", "graph", "paths"]),
        ("linalg", &["eval", "stats", "plan", "emit", "weights"]),
        ("eval", &["stats", "plan", "emit", "codegen", "rewrite"]),
        ("plan", &["stats", "eval", "emit", "codegen"]),
        ("codegen", &["rewrite", "eval", "weights", "stats", "plan"]),
        // Text to ids knows nothing of any stage: the forward pass checks ids against d_vocab.
        (
            "text",
            &[
                "diag", "syntax", "model", "graph", "rewrite", "paths", "eval", "weights", "linalg", "stats", "plan",
                "emit", "codegen",
            ],
        ),
        ("import", &["syntax", "graph", "rewrite", "paths", "eval", "stats", "plan", "emit", "codegen"]),
        // Reading a dataset knows nothing of any stage (ids and texts as written); aggregating
        // over one is numbers and paths, below the reports.
        (
            "dataset",
            &[
                "diag",
                "syntax",
                "model",
                "graph",
                "rewrite",
                "paths",
                "eval",
                "weights",
                "linalg",
                "stats",
                "plan",
                "emit",
                "codegen",
                "text",
                "aggregate",
            ],
        ),
        ("aggregate", &["rewrite", "weights", "stats", "plan", "emit", "codegen", "syntax"]),
        ("eval", &["aggregate", "dataset"]),
    ];
    for (module, not) in forbidden {
        let deps = graph.get(*module).unwrap_or_else(|| panic!("no module {module}"));
        for dep in *not {
            assert!(!deps.contains(*dep), "{module} imports {dep}: {module} must know nothing of {dep}");
        }
    }
}
