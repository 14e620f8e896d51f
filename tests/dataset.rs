//! Circuits over datasets (`--dataset`, `pathc::aggregate`) against TransformerLens on the
//! induction fixture (`tests/fixtures/induction/make_induction.py`: a 2-layer attention-only model
//! trained on repeated random tokens, its numbers in float64 TransformerLens): the logit
//! difference and each head's direct logit attribution per prompt, each head's score difference
//! and attention, the induction head's score terms per prompt; the conclusion the README draws
//! from them, pinned with a margin; the CLI's formats, thread-count independence, and bad
//! datasets (exit 2 with the line, nothing on standard output).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{pathc, stderr, stdout};
use pathc::aggregate::{self, Inputs, LogitQuestion, ScoreQuestion};
use pathc::paths::{Grouping, HeadRef};
use pathc::progress::Silent;
use serde_json::Value;

const DIR: &str = "tests/fixtures/induction";

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/reference.json")).unwrap()).unwrap()
}

fn setup(qk: bool) -> (pathc::Expansion, pathc::eval::Params) {
    let compiled = common::compiled("induction");
    let params = common::params("induction");
    let options = pathc::ExpandOptions { qk, ..pathc::ExpandOptions::default() };
    (pathc::expand_compiled(compiled, &options).unwrap(), params)
}

fn dataset() -> std::path::PathBuf {
    Path::new(DIR).join("dataset.jsonl")
}

fn close(ours: f64, theirs: f64, what: &str) {
    assert!((ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0), "{what}: pathc {ours}, TransformerLens {theirs}");
}

/// Per prompt, the logit difference (the metric) and each head's, the embedding's and the
/// positional embedding's direct logit attribution (`--group head`), as TransformerLens's
/// `stack_head_results` and `W_E`/`W_pos` rows give them; and their means.
#[test]
fn logit_difference_by_head_matches_transformer_lens() {
    let (expansion, params) = setup(false);
    let reference = reference();
    let mut rows = Vec::new();
    let (names, _) = aggregate::path_rows(&expansion, Some(Grouping::Head));
    let result = aggregate::dataset_paths(
        &expansion,
        &params,
        &dataset(),
        Inputs::default(),
        LogitQuestion::default(),
        Some(Grouping::Head),
        &Silent,
        |p| {
            rows.push((p.metric, p.values.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    let per_prompt = reference["per_prompt"].as_array().unwrap();
    assert_eq!((result.prompts, rows.len()), (per_prompt.len(), per_prompt.len()));
    for (i, ((metric, values), theirs)) in rows.iter().zip(per_prompt).enumerate() {
        close(*metric, theirs["logit_diff"].as_f64().unwrap(), &format!("prompt {i}'s logit difference"));
        for (name, value) in names.iter().zip(values) {
            let expected = match name.as_str() {
                "E" => &theirs["embed_dla"],
                "P" => &theirs["pos_dla"],
                head => &theirs["head_dla"][head],
            };
            close(*value, expected.as_f64().unwrap(), &format!("prompt {i}'s {name}"));
        }
    }
    let summary = &reference["summary"];
    close(result.metric.mean, summary["mean_logit_diff"].as_f64().unwrap(), "mean logit difference");
    for row in &result.rows {
        let expected = match row.name.as_str() {
            "E" => &summary["mean_embed_dla"],
            "P" => &summary["mean_pos_dla"],
            head => &summary["mean_head_dla"][head],
        };
        close(row.contribution.mean, expected.as_f64().unwrap(), &format!("mean of {}", row.name));
    }
    assert!(result.complete && result.max_abs_rest < 1e-9, "{}", result.max_abs_rest);
}

/// Every head's score difference between the key after the earlier occurrence and a random key,
/// and its attention to both, per prompt; the induction head's 100 score terms per prompt by name;
/// every layer-1 head's term means.
#[test]
fn score_differences_match_transformer_lens() {
    let (expansion, params) = setup(true);
    let reference = reference();
    let per_prompt = reference["per_prompt"].as_array().unwrap();
    for layer in 0..2 {
        for head in 0..4 {
            let target = HeadRef { layer, head };
            let name = target.to_string();
            let question = ScoreQuestion { head: target, query: None, key: None, against_key: None };
            let (terms, _) = aggregate::score_terms(&expansion, target).unwrap();
            let mut prompts = Vec::new();
            let result =
                aggregate::dataset_scores(&expansion, &params, &dataset(), Inputs::default(), question, &Silent, |p| {
                    prompts.push((
                        p.difference,
                        p.prob_key,
                        p.prob_against_key,
                        p.terms.iter().map(|t| t.difference).collect::<Vec<_>>(),
                    ));
                    Ok(())
                })
                .unwrap();
            for (i, ((difference, p_key, p_against, values), theirs)) in prompts.iter().zip(per_prompt).enumerate() {
                close(*difference, theirs["score_diff"][&name].as_f64().unwrap(), &format!("{name} on prompt {i}"));
                close(*p_key, theirs["pattern_key"][&name].as_f64().unwrap(), &format!("{name}'s p[key], prompt {i}"));
                close(
                    *p_against,
                    theirs["pattern_against_key"][&name].as_f64().unwrap(),
                    &format!("{name}'s p[against], prompt {i}"),
                );
                if name == "L1H1" {
                    for (term, value) in terms.iter().zip(values) {
                        let expected = reference["score_terms"][term][i].as_f64().unwrap_or_else(|| panic!("{term}"));
                        close(*value, expected, &format!("{term} on prompt {i}"));
                    }
                }
            }
            assert!(result.max_sum_error < 1e-9);
            close(result.difference.mean, reference["summary"]["mean_score_diff"][&name].as_f64().unwrap(), &name);
            if layer == 1 {
                let means = reference["score_term_means"].as_object().unwrap();
                for term in &result.terms {
                    close(term.difference.mean, means[&term.name].as_f64().unwrap(), &term.name);
                }
                assert_eq!(result.terms.len(), means.keys().filter(|k| k.starts_with(&name)).count());
            }
        }
    }
}

/// The README's worked example: on the induction dataset the induction head L1H1's score
/// difference (key after the earlier occurrence against a random earlier key) is carried most by
/// its K-composition with the previous-token head L0H1 (`q=E, k=E/L0H1`), with a margin over every
/// other term; and on repeated random tokens the next token's logit is carried most by the
/// embedding's direct path through the layer-1 heads' OV circuits (copying), the induction head's
/// first, each at least twice any path that is not one of them.
#[test]
fn induction_conclusion_holds_with_a_margin() {
    let (expansion, params) = setup(true);
    let question = ScoreQuestion { head: HeadRef { layer: 1, head: 1 }, query: None, key: None, against_key: None };
    let scores =
        aggregate::dataset_scores(&expansion, &params, &dataset(), Inputs::default(), question, &Silent, |_| Ok(()))
            .unwrap();
    let mut terms: Vec<_> = scores.terms.iter().map(|t| (t.difference.mean, t.name.as_str())).collect();
    terms.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert_eq!(terms[0].1, "L1H1[q=E,k=E/L0H1]");
    assert!(terms[0].0 >= 1.1 * terms[1].0, "{terms:?}");
    assert!(
        terms[0].0 >= 0.2 * scores.difference.mean,
        "a fifth of the mean score difference {}",
        scores.difference.mean
    );

    let question = LogitQuestion { target: Some(pathc::eval::Target::Next), ..LogitQuestion::default() };
    let repeated = Path::new(DIR).join("repeated.jsonl");
    let mut metrics = Vec::new();
    let paths =
        aggregate::dataset_paths(&expansion, &params, &repeated, Inputs::default(), question, None, &Silent, |p| {
            metrics.push(p.metric);
            Ok(())
        })
        .unwrap();
    // The metric itself against TransformerLens: the mean of logits[p, tokens[p+1]] over p.
    for (metric, theirs) in metrics.iter().zip(reference()["repeated"].as_array().unwrap()) {
        let next: Vec<f64> = theirs["next_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        close(*metric, next.iter().sum::<f64>() / next.len() as f64, "mean next-token logit");
    }
    let mut rows: Vec<_> = paths.rows.iter().map(|r| (r.contribution.mean, r.name.as_str())).collect();
    rows.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    let copying = ["E/L1H0", "E/L1H1", "E/L1H2", "E/L1H3"];
    assert_eq!(rows[0].1, "E/L1H1");
    let mut top: Vec<&str> = rows[..4].iter().map(|r| r.1).collect();
    top.sort();
    assert_eq!(top, copying);
    let rest = rows.iter().find(|r| !copying.contains(&r.1)).unwrap();
    assert!(rows[3].0 >= 2.0 * rest.0.abs(), "{:?} against {rest:?}", rows[3]);
}

fn run_json(args: &[&str], threads: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pathc"))
        .args(args)
        .env("PATHC_THREADS", threads)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The same bytes for 1 and 2 worker threads, and for chunks split across them (100 prompts are
/// two chunks).
#[test]
fn output_does_not_depend_on_the_thread_count() {
    let model = format!("{DIR}/model.tf");
    let weights = format!("{DIR}/model.safetensors");
    let data = format!("{DIR}/dataset.jsonl");
    for args in [
        vec!["paths", &model, "--weights", &weights, "--dataset", &data, "--format", "json", "--per-prompt"],
        vec!["scores", &model, "--weights", &weights, "--dataset", &data, "--head", "L1H1", "--format", "json"],
    ] {
        assert_eq!(run_json(&args, "1"), run_json(&args, "2"), "{args:?}");
    }
}

/// JSON (one document), JSON Lines per prompt (header, prompts, summary), CSV for pandas (one row
/// per path × prompt), and the text report's lines.
#[test]
fn formats() {
    let model = format!("{DIR}/model.tf");
    let weights = format!("{DIR}/model.safetensors");
    let data = format!("{DIR}/dataset.jsonl");
    let base = ["paths", &model, "--weights", &weights, "--dataset", &data];
    let json: Value =
        serde_json::from_str(&run_json(&[&base[..], &["--format", "json", "--group", "head"]].concat(), "2")).unwrap();
    assert_eq!(json["schema"], "pathc.dataset_paths/1");
    assert_eq!(json["prompts"], 100);
    assert_eq!(json["rows"].as_array().unwrap().len(), 10);
    close(
        json["metric"]["mean"].as_f64().unwrap(),
        reference()["summary"]["mean_logit_diff"].as_f64().unwrap(),
        "json",
    );

    let lines = run_json(&[&base[..], &["--format", "json", "--per-prompt"]].concat(), "2");
    let lines: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 102);
    assert_eq!(lines[0]["kind"], "header");
    assert_eq!(lines[0]["rows"].as_array().unwrap().len(), 50);
    assert_eq!(lines[1]["kind"], "prompt");
    assert_eq!(lines[1]["contributions"].as_array().unwrap().len(), 50);
    let sum: f64 = lines[1]["contributions"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
    close(sum, reference()["per_prompt"][0]["logit_diff"].as_f64().unwrap(), "a prompt's paths");
    assert_eq!(lines[101]["kind"], "summary");

    let csv = run_json(&[&base[..], &["--format", "csv", "--per-prompt"]].concat(), "2");
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("prompt,line,path,order,contribution,metric"));
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), 100 * 50);
    let mut by_prompt: BTreeMap<usize, f64> = BTreeMap::new();
    for r in &rows {
        *by_prompt.entry(r[0].parse().unwrap()).or_default() += r[4].parse::<f64>().unwrap();
    }
    for (i, sum) in by_prompt {
        close(sum, rows[i * 50][5].parse().unwrap(), "a prompt's CSV rows sum to its metric");
    }

    let text = run_json(&[&base[..], &["--group", "head"]].concat(), "2");
    assert!(text.contains("(100 prompts)"), "{text}");
    let first = text.lines().find(|l| l.starts_with("L1H1")).unwrap();
    assert!(first.contains("5.601696"), "{first}");

    let scores = run_json(
        &[
            "scores",
            &model,
            "--weights",
            &weights,
            "--dataset",
            &data,
            "--head",
            "L1H1",
            "--format",
            "csv",
            "--top",
            "3",
        ],
        "2",
    );
    let lines: Vec<&str> = scores.lines().collect();
    assert_eq!(lines[0], "term,order,mean,std,mean_abs,prob_linear_mean,prob_removed_mean");
    assert!(lines[1].starts_with("\"L1H1[q=E,k=E/L0H1]\",1,2.76204859"), "{}", lines[1]);
    assert_eq!(lines.len(), 4);

    let check = run_json(&["check", &model, "--weights", &weights, "--dataset", &data, "--format", "json"], "2");
    let check: Value = serde_json::from_str(&check).unwrap();
    assert_eq!(check["prompts"], 100);
    assert!(check["max_abs_error"].as_f64().unwrap() < 1e-9);
}

/// Bad datasets and questions, each a file in `tests/datasets/fail/` with the arguments in its
/// first line's name: exit 2, the file and line in the message, nothing on standard output.
#[test]
fn bad_datasets_exit_2_with_the_line() {
    let model = format!("{DIR}/model.tf");
    let weights = format!("{DIR}/model.safetensors");
    let text_model = "tests/fixtures/text/model.tf";
    let text_weights = "tests/fixtures/text/model.safetensors";
    let mut report = String::new();
    let mut files: Vec<_> = std::fs::read_dir("tests/datasets/fail").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let file = file.to_string_lossy().to_string();
        // `scores-…` asks a score difference of L1H1; `text-…` runs the text fixture (a tokenizer).
        let args: Vec<&str> = if name.starts_with("scores") {
            vec!["scores", &model, "--weights", &weights, "--dataset", &file, "--head", "L1H1"]
        } else if name.starts_with("text") {
            vec![
                "paths",
                text_model,
                "--weights",
                text_weights,
                "--tokenizer",
                "tests/fixtures/text/tokenizer.json",
                "--dataset",
                &file,
            ]
        } else {
            vec!["paths", &model, "--weights", &weights, "--dataset", &file]
        };
        let out = pathc(&args);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{name} printed {}", stdout(&out));
        let message = stderr(&out);
        if !name.contains("empty") {
            assert!(message.contains(&format!("{file}:")), "{name}: {message}");
        }
        report += &format!("{name}:\n{message}\n");
    }
    insta::assert_snapshot!(report);
}

/// The options that do not go with --dataset, and those that need it.
#[test]
fn refusals() {
    let model = format!("{DIR}/model.tf");
    let weights = format!("{DIR}/model.safetensors");
    let data = format!("{DIR}/dataset.jsonl");
    let mut report = String::new();
    for args in [
        vec!["paths", &model, "--weights", &weights, "--dataset", &data, "--attention-mask", "1,1"],
        vec!["paths", &model, "--weights", &weights, "--tokens", "1,2", "--against", "3", "--target", "4"],
        vec!["paths", &model, "--weights", &weights, "--tokens", "1,2", "--format", "csv"],
        vec!["paths", &model, "--weights", &weights, "--dataset", &data, "--tokens", "1,2"],
        vec!["scores", &model, "--weights", &weights, "--dataset", &data, "--head", "L1H1", "--pos", "all"],
        vec!["scores", &model, "--weights", &weights, "--dataset", &data, "--head", "L2H1"],
        vec!["scores", &model, "--weights", &weights, "--tokens", "1,2", "--head", "L1H1", "--key", "0"],
    ] {
        let out = pathc(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stdout(&out).is_empty());
        report += &format!("{}:\n{}\n", args[4..].join(" ").replace(&data, "DATA"), stderr(&out));
    }
    insta::assert_snapshot!(report);
}

/// Text prompts are tokenized as `--text` is (the tokenizer's BOS default), and a text target is
/// the one token it is: the metric is the forward pass's logit of it at the last position.
#[test]
fn text_prompts_and_text_targets() {
    let dir = std::env::temp_dir().join(format!("pathc-text-dataset-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prompts.jsonl");
    std::fs::write(
        &file,
        "{\"text\": \"When Mary and John went\", \"target\": \" to\"}\n{\"text\": \"Mary\", \"target\": 5}\n",
    )
    .unwrap();
    let compiled = common::compiled("text");
    let params = common::params("text");
    let expansion = pathc::expand_compiled(compiled, &pathc::ExpandOptions::default()).unwrap();
    let tokenizer = pathc::text::Tokenizer::load(Path::new("tests/fixtures/text/tokenizer.json")).unwrap();
    let inputs = Inputs { tokenizer: Some(&tokenizer), prepend_bos: None };
    let mut seen = Vec::new();
    let result =
        aggregate::dataset_paths(&expansion, &params, &file, inputs, LogitQuestion::default(), None, &Silent, |p| {
            seen.push((p.tokens.to_vec(), p.metric));
            Ok(())
        });
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
    for ((tokens, metric), (text, target)) in seen.iter().zip([("When Mary and John went", " to"), ("Mary", "")]) {
        assert_eq!(tokens, &tokenizer.tokenize(text, None).unwrap().ids);
        let target = if target.is_empty() { 5 } else { tokenizer.single_token(target).unwrap() };
        let forward = pathc::eval::forward(&params, tokens).unwrap();
        close(*metric, forward.logits[(tokens.len() - 1, target)], text);
    }
}

/// `plot --what paths --dataset`: the largest mean contributions, each labelled `mean ± std` as
/// the JSON report gives them, with whiskers.
#[test]
fn plot_draws_means_with_error_bars() {
    let model = format!("{DIR}/model.tf");
    let weights = format!("{DIR}/model.safetensors");
    let data = format!("{DIR}/dataset.jsonl");
    let svg = std::env::temp_dir().join(format!("pathc-dataset-plot-{}.svg", std::process::id()));
    let svg_path = svg.to_string_lossy().to_string();
    let out = pathc(&[
        "plot",
        &model,
        "--weights",
        &weights,
        "--what",
        "paths",
        "--dataset",
        &data,
        "--top",
        "5",
        "-o",
        &svg_path,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    let json: Value = serde_json::from_str(&run_json(
        &["paths", &model, "--weights", &weights, "--dataset", &data, "--format", "json", "--top", "5"],
        "2",
    ))
    .unwrap();
    for row in json["rows"].as_array().unwrap() {
        let label = format!("{:.4} ± {:.4}", row["mean"].as_f64().unwrap(), row["std"].as_f64().unwrap());
        assert!(text.contains(&format!("\n{}\n", row["name"].as_str().unwrap())), "{}", row["name"]);
        assert!(text.contains(&label), "{label}");
    }
    // Three strokes a whisker (the bar and its two caps), plus the zero line and the axis and
    // its ticks.
    let strokes = text.matches("<polyline").count();
    assert!(strokes >= 5 * 3 + 2, "{strokes}");
}
