//! The command line: exit codes, formats, determinism, diagnostics on standard error.

use std::path::Path;
use std::process::{Command, Output};

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("UTF-8")
}

#[test]
fn readme_quick_start_runs() {
    let out = pathc(&["expand", "examples/attn-only-2l.tf"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("T = sum of 169 paths (order 0: 1, order 1: 24, order 2: 144)"), "{text}");
    let line = ["E/L0H11/L1H3", "(A^{1.3}·A^{0.11})", "⊗", "(W_U·W_OV^{1.3}·W_OV^{0.11}·W_E)"];
    assert!(text.lines().any(|l| l.split_whitespace().eq(line)), "{text}");
}

#[test]
fn every_failing_model_exits_2_with_a_located_diagnostic() {
    for entry in std::fs::read_dir("tests/models/fail").expect("folder") {
        let path = entry.expect("entry").path();
        let out = pathc(&["expand", path.to_str().expect("UTF-8 path")]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert!(err.starts_with("error: "), "{}: {err}", path.display());
        assert!(!err.contains("panicked"), "{}: {err}", path.display());
        assert!(out.stdout.is_empty(), "{}: nothing on stdout", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        if !name.starts_with("too_many_paths") {
            let located = format!("--> {}:", path.display());
            assert!(err.contains(&located) && err.contains('^'), "{}: {err}", path.display());
        }
    }
}

#[test]
fn unreadable_input_exits_2() {
    let dir = std::env::temp_dir().join(format!("pathc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("latin1.tf");
    std::fs::write(&bad, b"model m\n# caf\xe9\n").unwrap();
    let out = pathc(&["expand", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    let out = pathc(&["expand", "no/such/model.tf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read no/such/model.tf"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn too_large_expansions_are_refused_with_the_count_and_what_fits() {
    let out = pathc(&["expand", "examples/attn-only-12l.tf"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: the expansion has 46596170244962 paths, more than the enumeration limit of 1000000; \
         --max-order 3 fits (779618 paths), or raise the limit with --limit\n"
    );
    let out = pathc(&["expand", "examples/attn2.tf", "--limit", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--max-order 0 fits (2 paths)"), "{}", stderr(&out));
    let out = pathc(&["expand", "examples/attn2.tf", "--limit", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).ends_with("raise the limit with --limit\n") && !stderr(&out).contains("fits"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn full_models_expand_in_every_format() {
    // GPT-2 small's attention scores have 7 million terms at order ≤ 1 (22k templates, 47 s to
    // expand): its logits only.
    for (example, order, qk) in [("examples/full2.tf", "2", true), ("examples/gpt2-small.tf", "1", false)] {
        for format in ["text", "latex", "json"] {
            let mut args = vec!["expand", example, "--max-order", order, "--format", format];
            if qk {
                args.push("--qk");
            }
            let out = pathc(&args);
            assert_eq!(out.status.code(), Some(0), "{example} {format}: {}", stderr(&out));
            let mut symbols = vec!["b_V^{", "b_O^{", "M^{", "b_out^{", "b_in^{", "N^{"];
            if qk {
                symbols.extend(["b_Q^{", "b_K^{"]);
            }
            for symbol in symbols {
                let symbol = if format == "latex" {
                    symbol.replace("b_out", "b_{out}").replace("b_in", "b_{in}")
                } else {
                    symbol.to_string()
                };
                assert!(stdout(&out).contains(&symbol), "{example} {format}: no {symbol}");
            }
        }
        let dot = pathc(&["expand", example, "--format", "dot"]);
        assert_eq!(dot.status.code(), Some(0), "{}", stderr(&dot));
        assert!(stdout(&dot).contains("MLP (layer 1)") && stdout(&dot).contains("ln_final"));
    }
    // Without truncation GPT-2 small has far too many paths: the refusal says what fits.
    let out = pathc(&["expand", "examples/gpt2-small.tf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--max-order 2 fits"), "{}", stderr(&out));
}

#[test]
fn count_is_exact_and_instant_for_gpt2_small_sized_models() {
    let out = pathc(&["count", "examples/attn-only-12l.tf"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("46596170244962 paths\n  order 0: 2\n  order 1: 288\n"), "{}", stdout(&out));
    // GPT-2 small, counted by hand: E and P pass any heads of the 12 layers, (1+12)^12 paths each;
    // what layer l writes (b_O, the MLP's output, b_out) passes the 11-l layers after it, and a
    // value bias first passes one of its own layer's 12 heads; plus the constant b_U.
    let out = pathc(&["count", "examples/gpt2-small.tf", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let later = |l: u32| 13u128.pow(11 - l);
    let total = 2 * 13u128.pow(12) + (0..12).map(|l| (3 + 12) * later(l)).sum::<u128>() + 1;
    assert_eq!(json["paths"]["total"], total.to_string());
    // At most one head: order 0 has E, P, 12 × (b_O, M, b_out) and b_U; order 1 has E and P
    // through 144 heads, 144 value biases, and 11 + 10 + … + 0 layers after each writer.
    let out = pathc(&["count", "examples/gpt2-small.tf", "--max-order", "1", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let order_1 = 2 * 144 + 144 + 3 * 12 * (0..12).map(|l| 11 - l).sum::<u64>();
    assert_eq!(json["paths"]["by_order"], serde_json::json!([(2 + 36 + 1).to_string(), order_1.to_string()]));
}

#[test]
fn every_format_is_deterministic() {
    for format in ["text", "latex", "json", "dot"] {
        let args = ["expand", "examples/attn2.tf", "--qk", "--format", format];
        let first = pathc(&args);
        assert_eq!(first.status.code(), Some(0), "{format}: {}", stderr(&first));
        assert!(!first.stdout.is_empty());
        assert_eq!(first.stdout, pathc(&args).stdout, "{format} output differs between runs");
    }
}

#[test]
fn json_has_the_documented_schema() {
    let out = pathc(&["expand", "examples/attn2.tf", "--qk", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["schema"], "pathc.expand/1");
    assert_eq!(json["counts"]["total"], "50");
    let paths = json["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 50);
    let p = &paths[30];
    assert_eq!(p["name"], "E/L0H3/L1H0");
    assert_eq!(p["order"], 2);
    assert_eq!(p["source"], "E");
    assert_eq!(p["heads"], serde_json::json!([[0, 3], [1, 0]]));
    assert_eq!(p["position"], serde_json::json!(["A^{1.0}", "A^{0.3}"]));
    assert_eq!(p["weights"], serde_json::json!(["W_U", "W_OV^{1.0}", "W_OV^{0.3}", "W_E"]));
    let terms = json["qk"]["terms"].as_array().expect("qk terms");
    assert_eq!(terms.len(), 416);
    let t = terms.iter().find(|t| t["name"] == "L1H2[q=E/L0H1,k=P]").expect("a Q-composition term");
    assert_eq!(t["composition"], "Q");
    assert_eq!(t["query_position"], serde_json::json!(["A^{0.1}"]));
    assert_eq!(t["key_position"], serde_json::json!([]));
    assert_eq!(t["weights"], serde_json::json!(["W_Eᵀ", "W_OV^{0.1}ᵀ", "W_QK^{1.2}", "W_P"]));
}

#[test]
fn latex_and_output_file() {
    let dir = std::env::temp_dir().join(format!("pathc-latex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("attn1.tex");
    let out = pathc(&["expand", "examples/attn1.tf", "--format", "latex", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let tex = std::fs::read_to_string(&file).unwrap();
    assert!(tex.starts_with("\\documentclass{article}") && tex.trim_end().ends_with("\\end{document}"));
    assert!(tex.contains("\\text{E/L0H1}: &\\quad A^{0.1} \\otimes W_U\\,W_{OV}^{0.1}\\,W_E \\\\"), "{tex}");
    assert_eq!(tex.matches("\\begin{align*}").count(), tex.matches("\\end{align*}").count());
    std::fs::remove_dir_all(Path::new(&dir)).unwrap();
}

#[test]
fn truncated_text_says_so() {
    let out = pathc(&["expand", "examples/attn-only-12l.tf", "--max-order", "1", "--templates"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("truncated to paths through at most 1 head\nT = sum of 290 paths (order 0: 2, order 1: 288)"),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.contains("Σ_{")).count(), 24, "{text}");
}

/// The README's library example, as written there.
#[test]
fn readme_library_example() -> Result<(), Box<dyn std::error::Error>> {
    let source = std::fs::read_to_string("examples/attn2.tf")?;
    let options = pathc::ExpandOptions { max_order: Some(1), qk: true, ..Default::default() };
    let expansion = pathc::expand(&source, &options)?;
    let lines: Vec<String> =
        expansion.logit_paths().map(|path| format!("{} (order {}): {}", path.name, path.order, path.term)).collect();
    assert_eq!(lines.len(), 18);
    assert_eq!(lines[17], "P/L1H3 (order 1): A^{1.3} ⊗ W_U·W_OV^{1.3}·W_P");
    let counts = pathc::compile(&source)?.logit_counts(None);
    assert_eq!(counts.total(), 50u32.into());
    Ok(())
}

#[test]
fn plan_explains_the_choice_against_the_naive_plan() {
    let out = pathc(&["plan", "examples/attn2.tf"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in
        ["chosen:", "naive:", "W_U · W_E", "streamed over the vocabulary", "ov_copying[h]", "comp_q_norm[h,r]"]
    {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert_eq!(stdout(&pathc(&["plan", "examples/attn2.tf"])), text, "deterministic");
    // The sizes from a weights file, for a model that leaves them symbolic.
    let symbolic = pathc(&["plan", "examples/attn-only-2l.tf"]);
    assert_eq!(symbolic.status.code(), Some(2));
    assert!(
        stderr(&symbolic).contains("is symbolic") && stderr(&symbolic).contains("--weights"),
        "{}",
        stderr(&symbolic)
    );
    let with_weights = pathc(&["plan", "examples/attn2.tf", "--weights", "tests/fixtures/attn2/model.safetensors"]);
    assert_eq!(stdout(&with_weights), text);
    let json = pathc(&["plan", "examples/gpt2-small.tf", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let flops = |plan: &str| json[plan]["flops"].as_f64().unwrap();
    assert!(flops("naive") > 1e5 * flops("chosen"), "{json}");
    assert_eq!(json["egraph"]["saturated"], true);
    let streamed = json["chosen"]["steps"].as_array().unwrap().iter().filter(|s| s["streamed"] == true).count();
    assert_eq!(streamed, 3);
    let wrong = pathc(&["plan", "examples/attn2.tf", "--weights", "tests/fixtures/attn1/model.safetensors"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("has shape [20, 16], expected [50, 32]"), "{}", stderr(&wrong));
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_only() {
    let bin = env!("CARGO_BIN_EXE_pathc");
    let args = ["stats", "examples/attn2.tf", "--weights", "tests/fixtures/attn2/model.safetensors"];
    // Redirected standard error: silent, even with no delay before the bar may appear.
    let out = Command::new(bin).args(args).env("PATHC_PROGRESS_AFTER_MS", "0").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    // A terminal (a pseudo-terminal from util-linux's `script`): the bar is drawn.
    let command = format!("{bin} {} > /dev/null", args.join(" "));
    let script =
        Command::new("script").args(["-qec", &command, "/dev/null"]).env("PATHC_PROGRESS_AFTER_MS", "0").output();
    match script {
        Ok(out) => {
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            assert!(stdout(&out).contains("statistics ["), "{:?}", stdout(&out));
        }
        Err(e) => panic!("util-linux `script` is needed to give pathc a terminal: {e}"),
    }
}

const ATTN2: [&str; 3] = ["examples/attn2.tf", "--weights", "tests/fixtures/attn2/model.safetensors"];
const FULL2: [&str; 3] = ["examples/full2.tf", "--weights", "tests/fixtures/full2/model.safetensors"];
const TOKENS: &str = "5,17,42,8,5,17,42,8,30,1,5,17";

fn paths_json(model: [&str; 3], extra: &[&str]) -> serde_json::Value {
    let out = pathc(&[&["paths"][..], &model, &["--tokens", TOKENS, "--format", "json"], extra].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// `pathc paths --target next` (every position by default): the positions but the last, the
/// next token as each one's target, and per path one contribution per position, which over all
/// paths sum to the forward pass's logits and equal the entries of the full rows
/// (`paths --pos all` without a target), also grouped; and a fixed token at every position.
#[test]
fn paths_target_next_gives_each_paths_contribution_at_every_position() {
    let tokens: Vec<usize> = TOKENS.split(',').map(|t| t.parse().unwrap()).collect();
    let n = tokens.len();
    for model in [ATTN2, FULL2] {
        let full = paths_json(model, &["--pos", "all"]);
        let full_rows: std::collections::HashMap<String, &serde_json::Value> = full["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), &p["logits"]))
            .collect();
        for (target, extra) in [("next", vec![]), ("42", vec!["--pos", "all"]), ("next", vec!["--pos", "4"])] {
            let json = paths_json(model, &[&["--target", target][..], &extra].concat());
            let positions: Vec<usize> = match (target, extra.as_slice()) {
                (_, [_, "4"]) => vec![4],
                ("next", _) => (0..n - 1).collect(),
                _ => (0..n).collect(),
            };
            let targets: Vec<usize> =
                positions.iter().map(|&p| if target == "next" { tokens[p + 1] } else { 42 }).collect();
            assert_eq!(
                json["target"],
                if target == "next" { serde_json::json!("next") } else { serde_json::json!(42) }
            );
            assert_eq!(json["positions"], serde_json::json!(positions));
            assert_eq!(json["target_tokens"], serde_json::json!(targets));
            assert_eq!(
                json["position"],
                if extra.is_empty() || extra[1] == "all" { serde_json::json!("all") } else { serde_json::json!(4) }
            );
            let expected = floats(&json["forward_target_logits"]);
            let mut sums = vec![0.0; positions.len()];
            let paths = json["paths"].as_array().unwrap();
            assert_eq!(paths.len(), full_rows.len());
            let mut last_size = f64::INFINITY;
            for path in paths {
                let values = floats(&path["target_logits"]);
                assert_eq!(values.len(), positions.len());
                let rows = full_rows[path["name"].as_str().unwrap()];
                for (j, (&p, &t)) in positions.iter().zip(&targets).enumerate() {
                    sums[j] += values[j];
                    let slow = rows[p][t].as_f64().unwrap();
                    assert!(
                        (values[j] - slow).abs() <= 1e-12 * slow.abs().max(1.0),
                        "{}: {} vs {slow}",
                        path["name"],
                        values[j]
                    );
                }
                // Ranked by the largest |contribution|.
                let size = values.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                assert!(size <= last_size);
                last_size = size;
            }
            for (sum, want) in sums.iter().zip(&expected) {
                assert!((sum - want).abs() <= 1e-9, "{model:?} --target {target}: {sum} vs {want}");
            }
            // Grouped, the groups sum the same paths.
            let grouped = paths_json(model, &[&["--target", target, "--group", "component"][..], &extra].concat());
            let mut group_sums = vec![0.0; positions.len()];
            let mut counted = 0;
            for group in grouped["paths"].as_array().unwrap() {
                counted += group["paths"].as_u64().unwrap() as usize;
                group_sums.iter_mut().zip(floats(&group["target_logits"])).for_each(|(s, v)| *s += v);
            }
            assert_eq!(counted, paths.len());
            for (sum, want) in group_sums.iter().zip(&expected) {
                assert!((sum - want).abs() <= 1e-9, "{model:?} grouped --target {target}: {sum} vs {want}");
            }
        }
    }
}

/// `--target` with positions or tokens that have no target is bad input: exit 2, a message,
/// nothing on standard output.
#[test]
fn paths_targets_that_do_not_exist_exit_2() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["--tokens", TOKENS, "--target", "next", "--pos", "last"],
            "position 11 is the last of the 12 tokens: it has no next token",
        ),
        (
            &["--tokens", TOKENS, "--target", "next", "--pos", "11"],
            "--pos all (the default with --target next) or a position before 11",
        ),
        (&["--tokens", "5", "--target", "next"], "the next-token target needs at least 2 tokens"),
        (&["--tokens", TOKENS, "--target", "50"], "--target 50 is out of range: d_vocab is 50"),
        (&["--tokens", TOKENS, "--target", "nxt"], "expected a token id or `next`, not `nxt`"),
        (&["--tokens", TOKENS, "--target", "next", "--pos", "12"], "position 12 is out of range for 12 tokens"),
    ];
    for (args, message) in cases {
        let out = pathc(&[&["paths"][..], &ATTN2, args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// The target tables as text (every position, one position, grouped), byte-identical from run
/// to run.
#[test]
fn paths_target_text() {
    let mut text = String::new();
    for (model, extra) in [
        (ATTN2, &["--target", "next", "--top", "4"][..]),
        (ATTN2, &["--target", "next", "--pos", "3", "--top", "3"]),
        (ATTN2, &["--target", "42", "--top", "3"]),
        (FULL2, &["--target", "next", "--group", "component"]),
    ] {
        let args = [&["paths"][..], &model, &["--tokens", TOKENS], extra].concat();
        let out = pathc(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(out.stdout, pathc(&args).stdout, "output differs between runs");
        text += &format!("$ pathc {}\n{}\n", args.join(" "), stdout(&out));
    }
    insta::assert_snapshot!("paths_target_text", text);
}

#[test]
fn statistics_are_the_same_bits_on_any_number_of_threads() {
    for (model, weights) in [
        ("examples/attn2.tf", "tests/fixtures/attn2/model.safetensors"),
        ("examples/full2.tf", "tests/fixtures/full2/model.safetensors"),
    ] {
        let run = |threads: &str| {
            let out = Command::new(env!("CARGO_BIN_EXE_pathc"))
                .args(["stats", model, "--weights", weights, "--fold-ln", "--format", "json"])
                .env("PATHC_THREADS", threads)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            stdout(&out)
        };
        let one = run("1");
        for threads in ["2", "3", "8"] {
            assert_eq!(run(threads), one, "{model} on {threads} threads");
        }
    }
}

/// `--attention-mask`: one 0 or 1 per token; a 0 key is never attended to. A mask of the wrong
/// length, an entry that is not 0 or 1, and a query whose every key is masked are errors (exit 2)
/// saying what is wrong; a good mask runs, and the paths still sum to the (masked) logits.
#[test]
fn attention_masks_are_checked_and_used() {
    let model = "tests/fixtures/causal_mask/model.tf";
    let weights = "tests/fixtures/causal_mask/model.safetensors";
    let run =
        |mask: &str| pathc(&["check", model, "--weights", weights, "--tokens", "5,17,42,8", "--attention-mask", mask]);
    let ok = run("1,1,0,1");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let unmasked = pathc(&["paths", model, "--weights", weights, "--tokens", "5,17,42,8", "--format", "json"]);
    let masked = pathc(&[
        "paths",
        model,
        "--weights",
        weights,
        "--tokens",
        "5,17,42,8",
        "--attention-mask",
        "1,1,0,1",
        "--format",
        "json",
    ]);
    assert_eq!(masked.status.code(), Some(0), "{}", stderr(&masked));
    assert_ne!(stdout(&masked), stdout(&unmasked), "the mask changes the patterns");
    for (mask, expected) in [
        ("1,1,0", "the attention mask has 3 entries for 4 tokens"),
        ("0,1,1,1", "query position 0 attends to no key"),
        ("1,2,1,1", "an attention mask entry is 0 or 1, not `2`"),
    ] {
        let out = run(mask);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{mask}: {err}");
        assert!(err.contains(expected), "{mask}: {err}");
        assert!(!err.contains("panicked"), "{mask}: {err}");
    }
    // A bidirectional layer lets query 0 see later keys: masking key 0 alone is fine there.
    let bidirectional = pathc(&[
        "check",
        "tests/fixtures/bidir_mask/model.tf",
        "--weights",
        "tests/fixtures/bidir_mask/model.safetensors",
        "--tokens",
        "3,27,11",
        "--attention-mask",
        "0,1,1",
    ]);
    assert_eq!(bidirectional.status.code(), Some(0), "{}", stderr(&bidirectional));
}

/// A model with its own outputs (`unembed(d_vocab_out = 2)`): targets are output indices below
/// d_vocab_out, and the next-token target, which would read a token id as an output, is refused.
#[test]
fn output_vocabulary_targets() {
    let model = "tests/fixtures/vocab_out/model.tf";
    let weights = "tests/fixtures/vocab_out/model.safetensors";
    let run = |target: &str| pathc(&["paths", model, "--weights", weights, "--tokens", "3,7,1", "--target", target]);
    let ok = run("1");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let out = run("2");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--target 2 is out of range: the unembedding has d_vocab_out = 2 outputs"),
        "{}",
        stderr(&out)
    );
    let out = run("next");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("the next token is not an output"), "{}", stderr(&out));
}

/// TransformerLens's weight processing on every numeric command: `--process-weights` (all four
/// steps, as from_pretrained) keeps the paths summing to the processed model's logits; a step that
/// would compute another model is refused with why (exit 2).
#[test]
fn weight_processing_options() {
    let fixture = |name: &str, extra: &[&str]| {
        let model = format!("tests/fixtures/{name}/model.tf");
        let weights = format!("tests/fixtures/{name}/model.safetensors");
        let mut args = vec!["check", &model, "--weights", &weights, "--tokens", "5,17,42,8"];
        args.extend_from_slice(extra);
        let out = pathc(&args);
        (out.status.code(), stderr(&out), stdout(&out))
    };
    let (code, err, out) = fixture("unprocessed", &["--process-weights"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok: within --tol"), "{out}");
    let (code, err, _) = fixture("rms", &["--center-writing-weights"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot apply center_writing_weights: it needs a LayerNorm"), "{err}");
    let (code, err, _) = fixture("shortformer", &["--center-writing-weights"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("shortformer"), "{err}");
}

/// Issue 12's bad input: a norm declared without a weight (`rmsnorm(pre)`) whose weight the file
/// holds, a gated MLP whose `W_gate` the file lacks, and an MLP the file has a `W_gate` for but the
/// model does not gate: each a diagnostic or a weights error naming the tensor, exit 2.
#[test]
fn norm_and_gate_tensors_must_match_the_declarations() {
    let dir = std::env::temp_dir().join(format!("pathc-norm-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = std::fs::read_to_string("tests/fixtures/rms/model.tf").unwrap();
    let tokens = "5,17,42,8";
    let weights = "tests/fixtures/rms/model.safetensors";
    let run = |edit: (&str, &str)| {
        assert!(source.contains(edit.0), "{edit:?}");
        let model = dir.join("model.tf");
        std::fs::write(&model, source.replacen(edit.0, edit.1, 1)).unwrap();
        let out = pathc(&["check", model.to_str().unwrap(), "--weights", weights, "--tokens", tokens]);
        (out.status.code(), stderr(&out))
    };
    let (code, err) = run(("rmsnorm(eps = 1e-6)", "rmsnorm(pre, eps = 1e-6)"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("but this norm is `rmsnorm(pre)`, which has no weight"), "{err}");
    assert!(err.contains("model.tf:") && err.contains('^'), "located: {err}");
    let (code, err) = run(("act = silu, gated)", "act = silu)"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mlp.W_gate") && err.contains("is not gated"), "{err}");
    // Declared gated, but the file has no W_gate: the missing tensor named.
    let lnpre = std::fs::read_to_string("tests/fixtures/lnpre/model.tf").unwrap();
    let model = dir.join("gated.tf");
    std::fs::write(&model, lnpre.replacen("mlp(act = gelu, bias)", "mlp(act = gelu, bias, gated)", 1)).unwrap();
    let out = pathc(&[
        "check",
        model.to_str().unwrap(),
        "--weights",
        "tests/fixtures/lnpre/model.safetensors",
        "--tokens",
        tokens,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("blocks.0.mlp.W_gate"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `fold_value_biases` on a model whose attention declares no bias but whose LayerNorm has one
/// (GPT-J): the value biases land in a `b_O` the model does not declare, so the expansion gains a
/// `b_O` term for them and the paths still sum to the processed logits (TransformerLens's default
/// processing).
#[test]
fn folded_value_biases_keep_a_path() {
    let tokens = "5,17,42,8,5,17";
    for name in ["hf_gptj", "hf_gptj_shared"] {
        let model = format!("tests/fixtures/{name}/model.tf");
        let weights = format!("tests/fixtures/{name}/model.safetensors");
        let out = pathc(&["check", &model, "--weights", &weights, "--tokens", tokens, "--process-weights"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}{}", stdout(&out), stderr(&out));
        let paths =
            pathc(&["paths", &model, "--weights", &weights, "--tokens", tokens, "--fold-ln", "--fold-value-biases"]);
        assert!(stdout(&paths).contains("bO0"), "{name}: a b_O path");
    }
}

// ---------------------------------------------------------------------------------------------
// `--text`, `--tokenizer`, `--prepend-bos`, text targets (tests/fixtures/text: a byte-level BPE
// tokenizer trained with the Python tokenizers library, TransformerLens's encodings of it in
// encodings.json and meta.json).

const TEXT_MODEL: [&str; 3] = ["tests/fixtures/text/model.tf", "--weights", "tests/fixtures/text/model.safetensors"];
const TOKENIZER: [&str; 2] = ["--tokenizer", "tests/fixtures/text/tokenizer.json"];
const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn text_fixture(file: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("tests/fixtures/text/{file}")).unwrap()).unwrap()
}

/// TransformerLens's `to_tokens` of a fixture sentence (`key`: `to_tokens_bos` or `to_tokens_no_bos`),
/// comma-separated for `--tokens`.
fn tl_tokens(text: &str, template: bool, key: &str) -> String {
    let e = text_fixture("encodings.json");
    let s = e["sentences"].as_array().unwrap().iter().find(|s| s["text"] == text).expect("a fixture sentence");
    let tl = if template { &s["bos_template"]["tl"] } else { &s["tl"] };
    tl[key].as_array().unwrap().iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = pathc(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// A JSON report without what only `--text` adds (the text and whether a BOS was prepended).
fn without_text_fields(mut v: serde_json::Value) -> serde_json::Value {
    for key in ["text", "prepend_bos", "prepend_bos_source"] {
        v.as_object_mut().unwrap().remove(key);
    }
    v
}

/// Every numeric command with `--text` gives what it gives with TransformerLens's ids of the text
/// as `--tokens` (and the tokenizer for the strings), which without a tokenizer is the same
/// numbers without the strings; the strings are TransformerLens's `to_str_tokens`.
#[test]
fn text_runs_as_transformer_lens_s_tokens_of_it() {
    let meta = text_fixture("meta.json");
    let str_tokens = meta["str_tokens"].clone();
    let ids = tl_tokens(IOI, false, "to_tokens_bos");
    assert_eq!(ids, meta["tokens"].as_array().unwrap().iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
    let commands: [&[&str]; 6] = [
        &["paths"],
        &["paths", "--target", "next", "--top", "5"],
        &["paths", "--target", "373", "--group", "head"],
        &["paths", "--pos", "all", "--top", "3"],
        &["scores", "--head", "L1H2", "--top", "4"],
        &["check"],
    ];
    for command in commands {
        let (name, rest) = command.split_first().unwrap();
        let run = |input: &[&str], format: &str| {
            let args = [&[*name][..], &TEXT_MODEL, input, rest, &["--format", format]].concat();
            let out = pathc(&args);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
            assert_eq!(out.stdout, pathc(&args).stdout, "{args:?}: output differs between runs");
            out.stdout
        };
        let text = [&TOKENIZER[..], &["--text", IOI]].concat();
        let tokens = [&TOKENIZER[..], &["--tokens", &ids]].concat();
        let bare: &[&str] = &["--tokens", &ids];
        let json = |bytes: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
        let (from_text, from_tokens, from_bare) =
            (json(run(&text, "json")), json(run(&tokens, "json")), json(run(bare, "json")));
        assert_eq!(from_text["str_tokens"], str_tokens, "{command:?}");
        assert_eq!(from_text["text"], IOI);
        assert_eq!(from_text["prepend_bos"], true);
        assert_eq!(from_text["prepend_bos_source"], "TransformerLens's default");
        assert_eq!(from_text["tokens"].to_string().trim_matches(['[', ']']), ids, "{command:?}");
        assert_eq!(without_text_fields(from_text.clone()), from_tokens, "{command:?}");
        assert!(from_tokens.get("prepend_bos").is_none());
        let mut stripped = from_tokens.clone();
        for key in ["str_tokens", "target_str_tokens"] {
            stripped.as_object_mut().unwrap().remove(key);
        }
        if *name == "check" {
            // check's JSON gains the tokens only beside their strings.
            stripped.as_object_mut().unwrap().remove("tokens");
        }
        assert_eq!(stripped, from_bare, "{command:?}: a tokenizer only adds strings");

        let (text_out, tokens_out) =
            (String::from_utf8(run(&text, "text")).unwrap(), String::from_utf8(run(&tokens, "text")).unwrap());
        let text_line = format!("text: \"{IOI}\", prepend_bos: true (TransformerLens's default)");
        assert!(text_out.lines().any(|l| l == text_line), "{command:?}: {text_out}");
        let strings: Vec<String> =
            str_tokens.as_array().unwrap().iter().enumerate().map(|(p, s)| format!("{p}:{s}")).collect();
        let tokens_line = format!("tokens: {}", strings.join(" "));
        assert!(text_out.lines().any(|l| l == tokens_line), "{command:?}: {text_out}");
        let without: Vec<&str> = text_out.lines().filter(|l| *l != text_line).collect();
        assert_eq!(without, tokens_out.lines().collect::<Vec<_>>(), "{command:?}");
    }
}

/// The README's quick-start text example prints what it shows.
#[test]
fn readme_text_example_runs() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let args = [&["paths"][..], &TEXT_MODEL, &TOKENIZER, &["--text", IOI, "--target", " Mary", "--top", "3"]].concat();
    let out = pathc(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = format!("```text\n{}```", stdout(&out));
    assert!(readme.contains(&shown), "README's example differs from:\n{shown}");
}

/// The text outputs with a tokenizer, for review.
#[test]
fn text_outputs_show_token_strings() {
    let mut text = String::new();
    for extra in [
        &["paths", "--text", IOI, "--target", " Mary", "--top", "3"][..],
        &["paths", "--text", IOI, "--top", "3"],
        &["paths", "--text", "a\tb\n🎉", "--target", "next", "--top", "2"],
        &["scores", "--text", IOI, "--head", "L1H0", "--top", "3"],
        &["check", "--text", IOI, "--prepend-bos", "false"],
    ] {
        let (name, rest) = extra.split_first().unwrap();
        let args = [&[*name][..], &TEXT_MODEL, &TOKENIZER, rest].concat();
        let out = pathc(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        text += &format!(
            "$ pathc {}\n{}\n",
            args.iter()
                .map(|a| if a.contains([' ', '\n', '\t']) { format!("{a:?}") } else { a.to_string() })
                .collect::<Vec<_>>()
                .join(" "),
            stdout(&out)
        );
    }
    insta::assert_snapshot!("text_outputs", text);
}

/// `--target " Mary"` is `--target <its id>` (TransformerLens's to_single_token), digits are an
/// id and a JSON string in double quotes is a text.
#[test]
fn text_targets_are_their_token_ids() {
    let singles = text_fixture("encodings.json")["single_tokens"].clone();
    let run = |target: &str| {
        ok_json(
            &[&["paths"][..], &TEXT_MODEL, &TOKENIZER, &["--text", IOI, "--target", target, "--format", "json"]]
                .concat(),
        )
    };
    for (text, id) in singles.as_object().unwrap() {
        let by_id = run(&id.to_string());
        // Only digits would be an id: such a text goes in double quotes.
        let given = if text.bytes().all(|b| b.is_ascii_digit()) { format!("{text:?}") } else { text.clone() };
        assert_eq!(run(&given), by_id, "{text:?}");
        assert_eq!(by_id["target"], *id);
        assert_eq!(by_id["target_str_tokens"][0], *text, "{text:?}");
    }
    assert_eq!(run("\"4\""), run(&singles["4"].to_string()));
    assert_eq!(run("4")["target_tokens"][0], 4);
    assert_eq!(run("\"\\n\""), run("\n"));
    // `next` stays the next token; the word itself in quotes.
    assert_eq!(run("next")["target"], "next");
    let out = pathc(&[&["paths"][..], &TEXT_MODEL, &TOKENIZER, &["--text", IOI, "--target", "\"next\""]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"next\" is not one token: it splits into"), "{}", stderr(&out));
    // Plot's --target too: the same bar chart.
    let dir = std::env::temp_dir().join(format!("pathc-text-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = |target: &str, file: &str| {
        let path = dir.join(file);
        let args = [
            &["plot"][..],
            &TEXT_MODEL,
            &TOKENIZER,
            &["--what", "paths", "--text", IOI, "--target", target, "-o", path.to_str().unwrap()],
        ]
        .concat();
        let out = pathc(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        std::fs::read_to_string(path).unwrap()
    };
    let svg = plot(" Mary", "mary.svg");
    assert_eq!(svg, plot(&singles[" Mary"].to_string(), "373.svg"));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).map(str::trim).collect();
    assert!(texts.iter().any(|t| t.contains("at position 21 (token 261 \" to\")")), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("target token 373 \" Mary\" given by --target")), "{texts:?}");
    assert!(
        texts.iter().any(|t| *t == format!("text \"{IOI}\", prepend_bos: true (TransformerLens's default)")),
        "{texts:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--prepend-bos`: TransformerLens's default (true), true, false; with a tokenizer that
/// prepends its BOS itself, never a second one.
#[test]
fn prepend_bos_default_and_both_values() {
    let sentence = " Mary";
    for (template, tokenizer) in
        [(false, "tests/fixtures/text/tokenizer.json"), (true, "tests/fixtures/text/bos_template/tokenizer.json")]
    {
        let run = |extra: &[&str]| {
            let args = [
                &["paths"][..],
                &TEXT_MODEL,
                &["--tokenizer", tokenizer, "--text", sentence, "--format", "json"],
                extra,
            ]
            .concat();
            ok_json(&args)
        };
        let ids = |key: &str| -> serde_json::Value {
            serde_json::from_str(&format!("[{}]", tl_tokens(sentence, template, key))).unwrap()
        };
        let default = run(&[]);
        assert_eq!(default["tokens"], ids("to_tokens_bos"), "{tokenizer}");
        assert_eq!(
            (&default["prepend_bos"], &default["prepend_bos_source"]),
            (&true.into(), &"TransformerLens's default".into())
        );
        let yes = run(&["--prepend-bos", "true"]);
        assert_eq!(yes["tokens"], ids("to_tokens_bos"), "{tokenizer}");
        assert_eq!((&yes["prepend_bos"], &yes["prepend_bos_source"]), (&true.into(), &"--prepend-bos".into()));
        let no = run(&["--prepend-bos", "false"]);
        assert_eq!(no["tokens"], ids("to_tokens_no_bos"), "{tokenizer}");
        assert_eq!(no["prepend_bos"], false);
        assert_eq!(yes["tokens"].as_array().unwrap().len(), 2, "one BOS, then \" Mary\"");
    }
    let out = pathc(&[&["check"][..], &TEXT_MODEL, &TOKENIZER, &["--text", IOI, "--prepend-bos", "false"]].concat());
    assert!(stdout(&out).contains(&format!("text: \"{IOI}\", prepend_bos: false (--prepend-bos)")), "{}", stdout(&out));
}

/// Every way `--text` and its options can be wrong exits 2 with a message, nothing on standard
/// output and no panic.
#[test]
fn text_errors_exit_2() {
    let dir = std::env::temp_dir().join(format!("pathc-text-errors-{}", std::process::id()));
    let folder = dir.join("model");
    std::fs::create_dir_all(&folder).unwrap();
    let empty_folder = dir.join("empty");
    std::fs::create_dir_all(&empty_folder).unwrap();
    std::fs::copy("tests/fixtures/text/tokenizer.json", folder.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("broken.json"), &std::fs::read("tests/fixtures/text/tokenizer.json").unwrap()[..5000])
        .unwrap();
    let (folder, empty_folder, broken) = (
        folder.to_str().unwrap().to_string(),
        empty_folder.to_str().unwrap().to_string(),
        dir.join("broken.json").to_str().unwrap().to_string(),
    );
    let model = TEXT_MODEL[0];
    let weights = TEXT_MODEL[2];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("no tokenizer", vec!["paths", model, "--weights", weights, "--text", IOI]),
        ("a weights folder without tokenizer.json", vec!["paths", model, "--weights", &empty_folder, "--text", IOI]),
        // The folder's tokenizer is used: the target is resolved with it before the weights are read.
        (
            "the weights folder's tokenizer",
            vec!["paths", model, "--weights", &folder, "--text", IOI, "--target", " Mary Ann"],
        ),
        (
            "a multi-token target",
            vec![
                "paths",
                model,
                "--weights",
                weights,
                TOKENIZER[0],
                TOKENIZER[1],
                "--text",
                IOI,
                "--target",
                " xylophone",
            ],
        ),
        (
            "an emoji target",
            vec![
                "plot",
                model,
                "--weights",
                weights,
                TOKENIZER[0],
                TOKENIZER[1],
                "--what",
                "paths",
                "--text",
                IOI,
                "--target",
                "🎉",
                "-o",
                "/dev/null",
            ],
        ),
        (
            "an empty target",
            vec!["paths", model, "--weights", weights, TOKENIZER[0], TOKENIZER[1], "--text", IOI, "--target", ""],
        ),
        (
            "a bad quoted target",
            vec![
                "paths",
                model,
                "--weights",
                weights,
                TOKENIZER[0],
                TOKENIZER[1],
                "--text",
                IOI,
                "--target",
                "\"\\q\"",
            ],
        ),
        (
            "a text target without a tokenizer",
            vec!["paths", model, "--weights", weights, "--tokens", "1,2", "--target", " Mary"],
        ),
        (
            "both --text and --tokens",
            vec!["check", model, "--weights", weights, TOKENIZER[0], TOKENIZER[1], "--text", IOI, "--tokens", "1,2"],
        ),
        ("neither --text nor --tokens", vec!["check", model, "--weights", weights, TOKENIZER[0], TOKENIZER[1]]),
        (
            "--prepend-bos without --text",
            vec!["check", model, "--weights", weights, "--tokens", "1,2", "--prepend-bos", "true"],
        ),
        (
            "--prepend-bos maybe",
            vec![
                "check",
                model,
                "--weights",
                weights,
                TOKENIZER[0],
                TOKENIZER[1],
                "--text",
                IOI,
                "--prepend-bos",
                "maybe",
            ],
        ),
        (
            "no BOS",
            vec![
                "scores",
                model,
                "--weights",
                weights,
                "--tokenizer",
                "tests/fixtures/text/two_specials/tokenizer.json",
                "--text",
                IOI,
                "--head",
                "L0H0",
            ],
        ),
        (
            "nothing to run",
            vec![
                "check",
                model,
                "--weights",
                weights,
                TOKENIZER[0],
                TOKENIZER[1],
                "--text",
                "",
                "--prepend-bos",
                "false",
            ],
        ),
        (
            "a missing tokenizer",
            vec!["check", model, "--weights", weights, "--tokenizer", "no/such/tokenizer.json", "--text", IOI],
        ),
        ("a broken tokenizer", vec!["check", model, "--weights", weights, "--tokenizer", &broken, "--text", IOI]),
        (
            "text on a statistics plot",
            vec!["plot", model, "--weights", weights, "--what", "comp-q", "--text", IOI, "-o", "/dev/null"],
        ),
        (
            "ids beyond d_vocab",
            vec![
                "check",
                model,
                "--weights",
                weights,
                "--tokenizer",
                "tests/fixtures/text/bos_template/tokenizer.json",
                "--tokens",
                "402",
            ],
        ),
    ];
    let mut messages = String::new();
    for (what, args) in cases {
        let out = pathc(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(out.stdout.is_empty(), "{what}: nothing on stdout");
        assert!(!err.contains("panicked"), "{what}: {err}");
        let err = err.replace(&dir.display().to_string(), "$TMP");
        messages += &format!("{what}:\n{err}\n");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    insta::assert_snapshot!("text_errors", messages);
}
