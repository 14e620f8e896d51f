//! Issue 17 (4): a file named with `-o` (`expand`, `codegen`, `plot`) is replaced only by a
//! complete result, atomically, keeping its permissions; a symbolic link is followed; a device or
//! FIFO is written through; a read-only file or a directory is refused; refusing is decided
//! before the output is touched, and no temporary file is left behind.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathc-output-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The names in `dir`, sorted: no `.…pathc-….tmp` may stay behind.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The three commands that write `-o FILE`, each as (arguments before `-o`, what it writes to
/// standard output without `-o`).
fn writers() -> Vec<Vec<&'static str>> {
    vec![
        vec!["expand", "examples/attn2.tf", "--format", "json"],
        vec!["codegen", "examples/attn1.tf", "--lang", "python"],
        vec!["plot", "examples/attn2.tf", "--weights", "tests/fixtures/attn2/model.safetensors", "--what", "comp-q"],
    ]
}

/// What the command writes to a fresh file (plot has no standard-output form).
fn expected(args: &[&str], dir: &Path) -> Vec<u8> {
    let fresh = dir.join("fresh.out");
    let out = pathc(&[args, &["-o", fresh.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&fresh).unwrap();
    std::fs::remove_file(&fresh).unwrap();
    assert!(!bytes.is_empty());
    bytes
}

#[test]
fn a_regular_file_is_replaced_whole_keeping_its_permissions() {
    let dir = temp_dir("regular");
    for args in writers() {
        let want = expected(&args, &dir);
        let file = dir.join("out.txt");
        std::fs::write(&file, "ORIGINAL").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = pathc(&[&args[..], &["-o", file.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty());
        assert_eq!(std::fs::read(&file).unwrap(), want, "{args:?}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{args:?}: the replaced file keeps its mode");
        assert_eq!(listing(&dir), ["out.txt"], "{args:?}");
        std::fs::remove_file(&file).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refusing_leaves_the_file_untouched() {
    let dir = temp_dir("refusal");
    let file = dir.join("out.txt");
    let f = file.to_str().unwrap();
    let refusals = [
        // The reproducer: 46 trillion paths, refused by the enumeration limit.
        vec!["expand", "examples/attn-only-12l.tf", "-o", f],
        vec!["expand", "tests/models/fail/unknown_dimension.tf", "-o", f],
        vec!["codegen", "examples/attn2.tf", "--lang", "python", "--through", "L7H0", "-o", f],
        vec![
            "plot",
            "examples/attn2.tf",
            "--weights",
            "tests/fixtures/attn2/model.safetensors",
            "--what",
            "paths",
            "-o",
            f,
        ],
    ];
    for args in refusals {
        std::fs::write(&file, "ORIGINAL\n").unwrap();
        let out = pathc(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ORIGINAL\n", "{args:?}");
        assert_eq!(listing(&dir), ["out.txt"], "{args:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_symbolic_link_is_followed_and_stays_a_link() {
    let dir = temp_dir("link");
    for args in writers() {
        let want = expected(&args, &dir);
        let target = dir.join("target.txt");
        let link = dir.join("link.txt");
        std::fs::write(&target, "ORIGINAL").unwrap();
        std::os::unix::fs::symlink("target.txt", &link).unwrap();
        let out = pathc(&[&args[..], &["-o", link.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "{args:?}");
        assert_eq!(std::fs::read(&target).unwrap(), want, "{args:?}");
        // A dangling link: the file it names is created.
        std::fs::remove_file(&target).unwrap();
        let out = pathc(&[&args[..], &["-o", link.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), want, "{args:?}");
        assert_eq!(listing(&dir), ["link.txt", "target.txt"], "{args:?}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&target).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn devices_and_fifos_are_written_through() {
    for args in writers() {
        let out = pathc(&[&args[..], &["-o", "/dev/null"]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    }
    // `-o /dev/stdout` is standard output.
    let expand = ["expand", "examples/attn2.tf"];
    let plain = pathc(&expand);
    let through = pathc(&[&expand[..], &["-o", "/dev/stdout"]].concat());
    assert_eq!(through.status.code(), Some(0), "{}", String::from_utf8_lossy(&through.stderr));
    assert_eq!(through.stdout, plain.stdout);
    // A FIFO: what a reader gets is the output, and the FIFO is still one afterwards.
    let dir = temp_dir("fifo");
    let fifo = dir.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let out = pathc(&[&expand[..], &["-o", fifo.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(reader.join().unwrap(), plain.stdout);
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(listing(&dir), ["pipe"]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn read_only_files_and_directories_are_refused() {
    let dir = temp_dir("read-only");
    let file = dir.join("out.txt");
    for args in writers() {
        std::fs::write(&file, "ORIGINAL").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
        let out = pathc(&[&args[..], &["-o", file.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot write") && err.contains("read-only"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ORIGINAL");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(&file).unwrap();

        let out = pathc(&[&args[..], &["-o", dir.to_str().unwrap()]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("it is a directory"));
        assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `-o /dev/stdout` behind a shell's `>>` appends to what is there, as writing to standard
/// output would.
#[test]
fn dev_stdout_behind_an_append_redirection_appends() {
    let dir = temp_dir("append");
    let log = dir.join("log.txt");
    let shell = format!(
        "echo BEFORE > {log}; {pathc} expand examples/attn2.tf -o /dev/stdout >> {log}",
        log = log.display(),
        pathc = env!("CARGO_BIN_EXE_pathc")
    );
    let status = Command::new("sh").arg("-c").arg(&shell).status().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("BEFORE\nmodel attn2"), "{}", &text[..40.min(text.len())]);
    assert_eq!(text.len(), "BEFORE\n".len() + pathc(&["expand", "examples/attn2.tf"]).stdout.len());
    std::fs::remove_dir_all(dir).unwrap();
}
