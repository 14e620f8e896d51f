//! `pathc report`: the page's size budget, its data (the tree adds up to the paths it holds, the
//! check to the forward pass), and bad input (exit 2, the output file left as it was). The page
//! in a browser, against the CLI's JSON, is tests/browser/report.test.mjs.

use std::path::Path;
use std::process::Command;

fn pathc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

const MODEL: &str = "tests/fixtures/induction/model.tf";
const WEIGHTS: &str = "tests/fixtures/induction/model.safetensors";
const TOKENS: &str = "0,5,9,3,7,12,5,9,3,7";

/// A fresh directory for one test.
fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-report-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report(dir: &Path, extra: &[&str]) -> (std::process::Output, std::path::PathBuf) {
    let out = dir.join("report.html");
    let mut args = vec!["report", MODEL, "--weights", WEIGHTS, "--tokens", TOKENS, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    (pathc(&args), out)
}

/// The JSON inside the page.
fn data(page: &str) -> serde_json::Value {
    let start = page.find(r#"<script type="application/json" id="pathc-data">"#).expect("the data element");
    let rest = &page[start..];
    let body = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(body).expect("the page's data is JSON")
}

#[test]
fn the_fixed_part_of_the_page_is_within_its_budget() {
    let fixed = pathc::emit::report::fixed_size();
    assert!(fixed <= pathc::emit::report::FIXED_BUDGET, "script, styles and page: {fixed} bytes");
}

#[test]
fn the_tree_adds_up_and_the_page_needs_no_network() {
    let dir = temp_dir("tree");
    let (out, file) = report(&dir, &["--pos", "7", "--target", "next"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(file).unwrap();
    // Nothing fetched: no URL an element would load.
    for needle in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(needle), "{needle}");
    }
    let d = data(&page);
    assert_eq!(d["target"], 3, "the token after position 7 is 3");
    let paths = &d["paths"];
    let sum = paths["sum"].as_f64().unwrap();
    assert!((sum - paths["forward_logit"].as_f64().unwrap()).abs() < 1e-9);
    // Every node: its value is its own path + its children + its rest; the counts likewise.
    fn walk(node: &serde_json::Value, shown: &[serde_json::Value], seen: &mut Vec<u64>) {
        let mut value = node["rest"]["value"].as_f64().unwrap();
        let mut count = node["rest"]["paths"].as_u64().unwrap() as usize;
        if let Some(i) = node["path"].as_u64() {
            seen.push(i);
            value += shown[i as usize]["value"].as_f64().unwrap();
            count += 1;
            assert_eq!(shown[i as usize]["name"], node["name"]);
        }
        for child in node["children"].as_array().unwrap() {
            value += child["value"].as_f64().unwrap();
            count += child["paths"].as_u64().unwrap() as usize;
            walk(child, shown, seen);
        }
        assert!((value - node["value"].as_f64().unwrap()).abs() < 1e-12, "{}", node["name"]);
        assert_eq!(count, node["paths"].as_u64().unwrap() as usize, "{}", node["name"]);
    }
    let shown = paths["shown"].as_array().unwrap();
    assert_eq!(shown.len(), 40);
    let mut seen = Vec::new();
    walk(&d["tree"], shown, &mut seen);
    // Every shown path is a node of the tree, once.
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<u64>>());
    assert!((d["tree"]["value"].as_f64().unwrap() - sum).abs() < 1e-12);
    // Each head: every causal cell, its top terms plus the rest summing to the score.
    for head in d["heads"].as_array().unwrap() {
        assert_eq!(head["cells"].as_array().unwrap().len(), 10 * 11 / 2);
        for cell in head["cells"].as_array().unwrap() {
            let (q, k) = (cell["q"].as_u64().unwrap() as usize, cell["k"].as_u64().unwrap() as usize);
            let top: f64 = cell["top"].as_array().unwrap().iter().map(|t| t[1].as_f64().unwrap()).sum();
            let total = top + cell["rest"]["value"].as_f64().unwrap();
            assert!((total - head["scores"][q][k].as_f64().unwrap()).abs() < 1e-9);
        }
    }
}

#[test]
fn bad_input_exits_2_and_leaves_the_output_alone() {
    let dir = temp_dir("bad");
    let file = dir.join("report.html");
    for (extra, message) in [
        (&["--pos", "all"][..], "a report explains one position"),
        (&["--pos", "10"][..], "position 10 is out of range for 10 tokens"),
        (&["--target", "64"][..], "--target 64 is out of range: d_vocab is 64"),
        (&["--pos", "9", "--target", "next"][..], "--target next"),
        (&["--max-bytes", "1000"][..], "over the limit of 1000 bytes"),
    ] {
        std::fs::write(&file, "before").unwrap();
        let (out, _) = report(&dir, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "before", "{extra:?}");
    }
    let dataset = pathc(&[
        "report",
        MODEL,
        "--weights",
        WEIGHTS,
        "--dataset",
        "tests/fixtures/induction/dataset.jsonl",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(dataset.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dataset.stderr).contains("a report is of one prompt"));
}
