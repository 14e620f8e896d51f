//! `pathc plot`: every `--what` on the attn2 and full2 fixtures through the command line. The SVG
//! must parse (roxmltree), hold its title, axis labels and colour-scale ticks, and every printed
//! value must be the one `pathc stats --format json` or `pathc paths --format json` gives,
//! formatted as the plot formats it (two decimals in a heatmap cell, four on a bar).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pathc::eval::Processing;
use pathc::stats;

const TOKENS: &str = "5,17,42,8,5,17,42,8,30,1,5,17";
const MODELS: [&str; 2] = ["attn2", "full2"];

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model(name: &str) -> String {
    format!("examples/{name}.tf")
}

fn weights(name: &str) -> String {
    format!("tests/fixtures/{name}/model.safetensors")
}

/// A fresh directory for one test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-plot-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `pathc plot MODEL --weights W ARGS -o FILE` and returns the SVG.
fn plot(name: &str, args: &[&str], file: &Path) -> String {
    let (m, w) = (model(name), weights(name));
    let mut all = vec!["plot", m.as_str(), "--weights", w.as_str()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", file.to_str().unwrap()]);
    let out = pathc(&all);
    assert_eq!(out.status.code(), Some(0), "pathc {all:?}: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout");
    std::fs::read_to_string(file).unwrap()
}

/// Parses the SVG (it must parse) and returns its `<text>` contents in document order.
fn texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("the SVG does not parse: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants().filter(|n| n.has_tag_name("text")).map(|n| n.text().unwrap_or("").trim().to_string()).collect()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = pathc(args);
    assert_eq!(out.status.code(), Some(0), "pathc {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn stats_json(name: &str, fold_ln: bool) -> serde_json::Value {
    let (m, w) = (model(name), weights(name));
    let mut args = vec!["stats", m.as_str(), "--weights", w.as_str(), "--format", "json"];
    if fold_ln {
        args.push("--fold-ln");
    }
    json(&args)
}

fn cell(v: f64) -> String {
    format!("{v:.2}")
}

fn bar(v: f64) -> String {
    format!("{v:.4}")
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().expect("a number")
}

/// Where `needle` occurs as a contiguous run of `hay`.
fn find_run(hay: &[String], needle: &[String]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn has(texts: &[String], text: &str) -> bool {
    texts.iter().any(|t| t == text)
}

#[test]
fn composition_heatmaps_hold_labels_title_scale_and_every_score() {
    let dir = temp_dir("composition");
    for name in MODELS {
        for fold_ln in [false, true] {
            let stats = stats_json(name, fold_ln);
            let processing = if fold_ln { Processing::FOLD_LN } else { Processing::NONE };
            assert_eq!(stats["weight_processing"], stats::processing_label(processing));
            let heads: Vec<(usize, usize)> = stats["ov_copying"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .flat_map(|(l, hs)| (0..hs.as_array().unwrap().len()).map(move |h| (l, h)))
                .collect();
            assert_eq!(heads.len(), 8);
            for mode in ["q", "k", "v"] {
                let file = dir.join(format!("{name}-comp-{mode}-{fold_ln}.svg"));
                let what = format!("comp-{mode}");
                let mut args = vec!["--what", what.as_str()];
                if fold_ln {
                    args.push("--fold-ln");
                }
                let t = texts(&plot(name, &args, &file));
                let upper = mode.to_uppercase();
                assert!(has(&t, &format!("{name}: {upper}-composition scores (comp_{mode})")), "{t:?}");
                assert!(has(&t, &stats::processing_description(processing)), "{t:?}");
                // Every head labels a row and a column: twice.
                for (l, h) in &heads {
                    let label = format!("L{l}H{h}");
                    assert_eq!(t.iter().filter(|x| **x == label).count(), 2, "{label} in {t:?}");
                }
                // Every defined score (left layer before right layer), row by row.
                let comp = &stats[format!("comp_{mode}")];
                let mut expected = Vec::new();
                let mut max = 0.0f64;
                for &(l1, h1) in &heads {
                    for &(l2, h2) in &heads {
                        if l1 < l2 {
                            let v = f(&comp[l1][h1][l2][h2]);
                            max = max.max(v);
                            expected.push(cell(v));
                        }
                    }
                }
                assert_eq!(expected.len(), 16);
                assert!(find_run(&t, &expected).is_some(), "{expected:?} in {t:?}");
                // The colour scale: its name, then minimum (0), middle and maximum.
                let legend = t.iter().position(|x| *x == format!("comp_{mode}")).expect("the legend's label");
                assert_eq!(t[legend + 1..legend + 4], [cell(0.0), cell(max / 2.0), cell(max)], "{t:?}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn copying_heatmaps_hold_labels_title_scale_and_every_score() {
    let dir = temp_dir("copying");
    for name in MODELS {
        for fold_ln in [false, true] {
            let stats = stats_json(name, fold_ln);
            let processing = if fold_ln { Processing::FOLD_LN } else { Processing::NONE };
            for (what, key) in [("ov-copying", "ov_copying"), ("qk-copying", "qk_copying")] {
                let file = dir.join(format!("{name}-{what}-{fold_ln}.svg"));
                let mut args = vec!["--what", what];
                if fold_ln {
                    args.push("--fold-ln");
                }
                let t = texts(&plot(name, &args, &file));
                assert!(t.iter().any(|x| x.starts_with(&format!("{name}: copying scores of the full"))), "{t:?}");
                assert!(t.iter().any(|x| x.ends_with(&format!("({key})"))), "{t:?}");
                assert!(has(&t, &stats::processing_description(processing)), "{t:?}");
                let labels: Vec<String> = ["L0", "L1", "H0", "H1", "H2", "H3"].map(String::from).to_vec();
                assert!(find_run(&t, &labels).is_some(), "{labels:?} in {t:?}");
                let expected: Vec<String> = stats[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|hs| hs.as_array().unwrap().iter().map(|v| cell(f(v))))
                    .collect();
                assert_eq!(expected.len(), 8);
                assert!(find_run(&t, &expected).is_some(), "{expected:?} in {t:?}");
                let legend = t.iter().position(|x| x == key).expect("the legend's label");
                assert_eq!(t[legend + 1..legend + 4], ["-1.00", "0.00", "1.00"], "{t:?}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `pathc paths --format json` rows with `--target` among `extra`: (name, contribution to the
/// logit of `target` at the one position asked).
fn path_rows(name: &str, extra: &[&str], target: usize) -> Vec<(String, f64)> {
    let (m, w) = (model(name), weights(name));
    let mut args = vec!["paths", m.as_str(), "--weights", w.as_str(), "--tokens", TOKENS, "--format", "json"];
    args.extend_from_slice(extra);
    let out = json(&args);
    assert_eq!(out["target"], target);
    assert_eq!(out["target_tokens"], serde_json::json!([target]));
    out["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), f(&p["target_logits"][0])))
        .collect()
}

/// Label and value of each bar, in order, as a contiguous run.
fn assert_bars(t: &[String], rows: &[(String, f64)]) {
    let expected: Vec<String> = rows.iter().flat_map(|(n, v)| [n.clone(), bar(*v)]).collect();
    assert!(find_run(t, &expected).is_some(), "{expected:?} in {t:?}");
}

#[test]
fn path_bar_charts_hold_the_top_paths_in_order_with_their_values() {
    let dir = temp_dir("paths");
    for name in MODELS {
        // The default target: the model's top prediction at the last position, which is the
        // argmax of the sum of every path (unranked JSON lists every path).
        let (m, w) = (model(name), weights(name));
        let every = json(&["paths", &m, "--weights", &w, "--tokens", TOKENS, "--format", "json"]);
        let mut logits: Vec<f64> = Vec::new();
        for p in every["paths"].as_array().unwrap() {
            let row: Vec<f64> = p["logits"].as_array().unwrap().iter().map(f).collect();
            logits.resize(row.len(), 0.0);
            logits.iter_mut().zip(&row).for_each(|(s, x)| *s += x);
        }
        let d_vocab = logits.len();
        let top_token = (0..d_vocab).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });

        let file = dir.join(format!("{name}-paths.svg"));
        let t = texts(&plot(name, &["--what", "paths", "--tokens", TOKENS], &file));
        let target = top_token.to_string();
        let rows = path_rows(name, &["--target", &target, "--top", "20"], top_token);
        assert_eq!(rows.len(), 20);
        assert_eq!(t[0], format!("{name}: the 20 largest paths into logit[{top_token}] at position 11 (token 17)"));
        assert!(t[1].starts_with(&format!("target token {top_token} = the model's top prediction there")), "{t:?}");
        assert_bars(&t, &rows);

        // A given target, position and count.
        let file = dir.join(format!("{name}-paths-42.svg"));
        let args = ["--what", "paths", "--tokens", TOKENS, "--target", "42", "--pos", "3", "--top", "7"];
        let t = texts(&plot(name, &args, &file));
        let rows = path_rows(name, &["--target", "42", "--top", "7", "--pos", "3"], 42);
        assert_eq!(rows.len(), 7);
        assert_eq!(t[0], format!("{name}: the 7 largest paths into logit[42] at position 3 (token 8)"));
        assert!(t[1].starts_with("target token 42 given by --target"), "{t:?}");
        assert_bars(&t, &rows);
        assert!(has(&t, "contribution to logit[42] at position 3"), "{t:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plots_are_byte_identical_from_run_to_run() {
    let dir = temp_dir("deterministic");
    for args in [vec!["--what", "comp-q"], vec!["--what", "ov-copying"], vec!["--what", "paths", "--tokens", TOKENS]] {
        let a = plot("full2", &args, &dir.join("a.svg"));
        let b = plot("full2", &args, &dir.join("b.svg"));
        assert_eq!(a, b, "{args:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_plot_requests_exit_2_and_leave_the_output_alone() {
    let dir = temp_dir("errors");
    let out_file = dir.join("out.svg");
    std::fs::write(&out_file, "before").unwrap();
    let o = out_file.to_str().unwrap().to_string();
    let (m, w) = (model("attn2"), weights("attn2"));
    let base = ["plot", m.as_str(), "--weights", w.as_str()];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--what", "paths", "-o", &o], "--what paths needs --tokens"),
        (vec!["--what", "paths", "--tokens", TOKENS, "--target", "50", "-o", &o], "--target 50 is out of range"),
        (vec!["--what", "paths", "--tokens", TOKENS, "--pos", "12", "-o", &o], "position 12 is out of range"),
        (vec!["--what", "paths", "--tokens", TOKENS, "--pos", "all", "-o", &o], "not `all`"),
        (vec!["--what", "paths", "--tokens", TOKENS, "--fold-ln", "-o", &o], "--fold-ln applies to the statistics"),
        (vec!["--what", "comp-q", "--top", "3", "-o", &o], "--top applies only to --what paths"),
        (vec!["--what", "comp-q", "--tokens", "1,2", "-o", &o], "--tokens applies only to --what paths"),
        (vec!["--what", "paths", "--tokens", "1,99", "-o", &o], "99"),
        (vec!["--what", "comp-q"], "--output"),
        (vec!["--what", "heatmap", "-o", &o], "heatmap"),
    ];
    for (args, message) in cases {
        let mut all = base.to_vec();
        all.extend_from_slice(&args);
        let out = pathc(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{all:?}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "before", "{all:?} touched the output");
    }
    // An unwritable destination: an error, and no temporary file left beside it.
    let missing = dir.join("no/such/dir/out.svg");
    let mut all = base.to_vec();
    all.extend_from_slice(&["--what", "comp-q", "-o", missing.to_str().unwrap()]);
    let out = pathc(&all);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot write"), "{}", stderr(&out));
    // A successful plot replaces the file and leaves nothing else in the directory.
    let svg = plot("attn2", &["--what", "comp-v"], &out_file);
    assert!(svg.starts_with("<svg"));
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["out.svg"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn large_heatmaps_show_colours_and_labels_without_values() {
    let n = pathc::emit::plot::MAX_ANNOTATED + 1;
    let labels: Vec<String> = (0..n).map(|i| format!("L{}H{}", i / 5, i % 5)).collect();
    let values: Vec<Vec<f64>> = (0..n).map(|r| (0..n).map(|c| (r * n + c) as f64 / (n * n) as f64).collect()).collect();
    let svg = pathc::emit::plot::heatmap(&pathc::emit::plot::Heatmap {
        title: "big <&> \"title\"",
        row_labels: &labels,
        col_labels: &labels,
        row_axis: "rows",
        col_axis: "columns",
        values: &values,
        value_label: "v",
        scale: pathc::emit::plot::ColourScale::sequential(0.0, 1.0),
        missing_label: "",
    })
    .unwrap();
    let t = texts(&svg);
    assert_eq!(t[0], "big <&> \"title\"", "escaped and parsed back");
    for label in &labels {
        assert_eq!(t.iter().filter(|x| *x == label).count(), 2, "{label}");
    }
    // Only the legend's ticks are numbers.
    let numbers: Vec<&String> = t.iter().filter(|x| x.parse::<f64>().is_ok()).collect();
    assert_eq!(numbers, ["0.00", "0.50", "1.00"]);
}
