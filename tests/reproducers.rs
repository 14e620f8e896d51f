//! Issue 17's reproducers, each run as the issue ran it, with the command line's exit code and
//! messages snapshotted: what a user sees for each of the defects the adversarial run found.
//! The behaviour behind each is tested in depth elsewhere (the README's Reliability section names
//! where); these pin the words and the exit codes, so a change to either is a reviewed change.
//!
//! Each case writes what it needs into its own temporary folder, shown as `[TMP]` in the
//! snapshots; a case that names an output file also records what the file holds afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

const W: &str = "tests/fixtures/attn2/model.safetensors";
const T: &str = "5,17,42,8,5,17,42,8,30,1,5,17";

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-repro-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The command's exit code, standard output (cut after 40 lines: the counts and expansions are
/// long, what matters is how they start) and standard error, with `dir` shown as `[TMP]`.
fn run(dir: &Path, args: &[&str]) -> String {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs");
    let show = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes).replace(&dir.display().to_string(), "[TMP]");
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > 40 {
            format!("{}\n[… {} more lines]", lines[..40].join("\n"), lines.len() - 40)
        } else {
            lines.join("\n")
        }
    };
    let err = show(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    format!("exit: {:?}\n--- stdout\n{}\n--- stderr\n{}", out.status.code(), show(&out.stdout), err)
}

/// attn2's weights with every `W_*` at 1e38 (finite in f32, overflowing f64 in the computation).
fn huge_weights(dir: &Path) -> String {
    let bytes = std::fs::read(W).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = if name.contains(".W_") {
                view.data().chunks(4).flat_map(|_| 1e38f32.to_le_bytes()).collect()
            } else {
                view.data().to_vec()
            };
            (name, view.dtype(), view.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let path = dir.join("huge.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path.display().to_string()
}

/// `source` written to `dir/name`; its path.
fn write(dir: &Path, name: &str, source: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path.display().to_string()
}

/// `layers` layers of `layer` between the dimensions of attn2 and an unembedding.
fn layers(layers: usize, layer: &str) -> String {
    format!(
        "model m\ndim d_model = 32\ndim d_vocab = 50\ndim n_ctx = 16\ndim d_head = 8\nembed\nrepeat {layers} {{\n  layer {{ {layer} }}\n}}\nunembed\n"
    )
}

macro_rules! repro {
    ($name:ident, |$dir:ident| $body:expr) => {
        #[test]
        fn $name() {
            let $dir = temp_dir(stringify!($name));
            let shown: String = $body;
            insta::assert_snapshot!(stringify!($name), shown);
            std::fs::remove_dir_all(&$dir).unwrap();
        }
    };
}

// 1. Overflow and NaN: an error naming where the first non-finite value arose, never "ok".
repro!(r01_overflow_check, |dir| {
    let w = huge_weights(&dir);
    run(&dir, &["check", "examples/attn2.tf", "--weights", &w, "--tokens", T])
});
repro!(r01_overflow_paths_target, |dir| {
    let w = huge_weights(&dir);
    run(&dir, &["paths", "examples/attn2.tf", "--weights", &w, "--tokens", T, "--target", "42"])
});
repro!(r01_overflow_stats, |dir| {
    let w = huge_weights(&dir);
    run(&dir, &["stats", "examples/attn2.tf", "--weights", &w])
});
repro!(r01_overflow_scores, |dir| {
    let w = huge_weights(&dir);
    run(&dir, &["scores", "examples/attn2.tf", "--weights", &w, "--tokens", T, "--head", "L1H2"])
});

// 2. Weights the model does not declare: a layer past the model, an embedding.
repro!(r02_layer_past_the_model, |dir| {
    let source = std::fs::read_to_string("examples/full2.tf").unwrap().replacen("repeat 2", "repeat 1", 1);
    let model = write(&dir, "full1.tf", source);
    run(&dir, &["check", &model, "--weights", "tests/fixtures/full2/model.safetensors", "--tokens", "1,2,3"])
});
repro!(r02_undeclared_pos_embed, |dir| {
    let source = std::fs::read_to_string("examples/attn2.tf").unwrap().replacen("pos_embed\n", "", 1);
    let model = write(&dir, "attn2.tf", source);
    run(&dir, &["check", &model, "--weights", W, "--tokens", T])
});

// 3. Options that were accepted and meant nothing.
repro!(r03_tol_nan, |dir| run(&dir, &["check", "examples/attn2.tf", "--weights", W, "--tokens", T, "--tol", "NaN"]));
repro!(r03_tol_negative, |dir| run(&dir, &["check", "examples/attn2.tf", "--weights", W, "--tokens", T, "--tol=-1"]));
repro!(r03_name_that_matches_nothing, |dir| run(
    &dir,
    &["check", "examples/attn2.tf", "--weights", W, "--tokens", T, "--name", "foo=bar"]
));
repro!(r03_name_mapped_twice, |dir| run(
    &dir,
    &[
        "check",
        "examples/attn2.tf",
        "--weights",
        W,
        "--tokens",
        T,
        "--name",
        "embed.W_E=embed.W_E",
        "--name",
        "embed.W_E=unembed.W_U"
    ]
));

// 4. A refused `expand -o` leaves the file as it was.
repro!(r04_expand_refusal_keeps_the_output, |dir| {
    let out = write(&dir, "out.txt", "ORIGINAL\n");
    let shown = run(&dir, &["expand", "examples/attn-only-12l.tf", "-o", &out]);
    format!("{shown}\n--- out.txt\n{}", std::fs::read_to_string(&out).unwrap())
});

// 5. Error floods: one line of 10,000 unknown arguments; a file past the size limit.
repro!(r05_ten_thousand_unknown_arguments, |dir| {
    let arguments: Vec<String> = (0..10_000).map(|i| format!("x{i} = 1")).collect();
    let model = write(&dir, "flood.tf", layers(1, &format!("attn(heads = 1, {})", arguments.join(", "))));
    let all = Command::new(env!("CARGO_BIN_EXE_pathc")).args(["expand", &model]).output().expect("pathc runs");
    // Counted with the directory shown as `[TMP]`: its name holds the process id, whose digits vary.
    let stderr = String::from_utf8_lossy(&all.stderr).replace(&dir.display().to_string(), "[TMP]");
    format!("{} bytes on stderr in all\n{}", stderr.len(), run(&dir, &["expand", &model]))
});
repro!(r05_a_file_past_the_size_limit, |dir| {
    let model = write(&dir, "huge.tf", layers(1, "attn(heads = 1)") + &"# padding\n".repeat(110_000));
    run(&dir, &["count", &model])
});

// 6. Counts are exact and instant: 2000 layers with biases.
repro!(r06_count_two_thousand_layers, |dir| {
    let model = write(&dir, "deep.tf", layers(2000, "attn(heads = 1, bias)"));
    run(&dir, &["count", &model])
});

// 7. A refusal's suggestion is one that succeeds, with and without score terms.
repro!(r07_refusal_suggests_what_fits, |dir| {
    let model = write(&dir, "thirty.tf", layers(30, "attn(heads = 1, bias)"));
    run(&dir, &["expand", &model])
});
repro!(r07_refusal_with_score_terms, |dir| run(&dir, &["expand", "examples/gpt2-small.tf", "--qk"]));
repro!(r07_templates_are_not_bound_by_the_enumeration_limit, |dir| {
    let model = write(&dir, "wide.tf", layers(2, "attn(heads = 4096)"));
    run(&dir, &["expand", &model, "--templates"])
});

// 9. Weights that cannot be sought in.
repro!(r09_a_fifo_as_weights, |dir| {
    let fifo = dir.join("w.safetensors");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs").success());
    run(&dir, &["check", "examples/attn2.tf", "--weights", &fifo.display().to_string(), "--tokens", T])
});

// 10. plan: sizes from the weights; no overflow.
repro!(r10_plan_takes_sizes_from_weights, |dir| {
    let model = write(
        &dir,
        "symbolic.tf",
        "model m\ndim d_model\ndim d_vocab\ndim n_ctx\ndim d_head = 8\nembed\npos_embed\nrepeat 2 {\n  layer { attn(heads = 4) }\n}\nunembed\n",
    );
    run(&dir, &["plan", &model, "--weights", W])
});
repro!(r10_plan_of_huge_dimensions, |dir| {
    let model = write(
        &dir,
        "huge.tf",
        "model m\ndim d_model = 4294967296\ndim d_vocab = 4294967296\ndim n_ctx = 16\ndim d_head = 4294967296\nembed\nrepeat 1 {\n  layer { attn(heads = 1) }\n}\nunembed\n",
    );
    run(&dir, &["plan", &model])
});

// 11. Smaller: located errors for bytes and line endings, ranges named, `next` read.
repro!(r11_non_utf8_model, |dir| {
    let mut source = layers(1, "attn(heads = 1)").into_bytes();
    source.splice(40..40, [0xff, 0xfe]);
    let model = write(&dir, "bytes.tf", source);
    run(&dir, &["expand", &model])
});
repro!(r11_cr_only_line_endings, |dir| {
    let model = write(&dir, "cr.tf", layers(1, "attn(heads = 0)").replace('\n', "\r"));
    run(&dir, &["expand", &model])
});
repro!(r11_head_out_of_range, |dir| run(
    &dir,
    &["scores", "examples/attn2.tf", "--weights", W, "--tokens", T, "--head", "L9H9"]
));
repro!(r11_plot_target_next, |dir| {
    let out = dir.join("p.svg").display().to_string();
    let shown = run(
        &dir,
        &[
            "plot",
            "examples/attn2.tf",
            "--weights",
            W,
            "--tokens",
            T,
            "--what",
            "paths",
            "--pos",
            "3",
            "--target",
            "next",
            "-o",
            &out,
        ],
    );
    format!("{shown}\n--- p.svg is an SVG: {}", std::fs::read_to_string(&out).unwrap().contains("<svg"))
});
repro!(r11_duplicate_safetensors_keys, |dir| {
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 8]);
    let w = write(&dir, "twice.safetensors", file);
    run(&dir, &["check", "examples/attn2.tf", "--weights", &w, "--tokens", T])
});
