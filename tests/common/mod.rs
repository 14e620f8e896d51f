//! What the statistics tests share: a fixture's model, weights and references by name, the
//! statistics flattened, their relative error, and the binary.
#![allow(dead_code)] // each test file uses a part

use std::process::{Command, Output};

use pathc::eval::{NameMap, Params};
use pathc::weights::Weights;

pub fn dir(name: &str) -> String {
    format!("tests/fixtures/{name}")
}

pub fn compiled(name: &str) -> pathc::Compiled {
    pathc::compile(&std::fs::read_to_string(format!("{}/model.tf", dir(name))).unwrap()).unwrap()
}

pub fn params(name: &str) -> Params {
    pathc::load_params(&compiled(name), format!("{}/model.safetensors", dir(name)).as_ref(), &NameMap::default())
        .unwrap()
}

pub fn reference(name: &str) -> Weights {
    Weights::load(format!("{}/reference.safetensors", dir(name)).as_ref()).unwrap()
}

pub fn flat2(x: &[Vec<f64>]) -> Vec<f64> {
    x.iter().flatten().copied().collect()
}

pub fn flat4(x: &[Vec<Vec<Vec<f64>>>]) -> Vec<f64> {
    x.iter().flatten().flatten().flatten().copied().collect()
}

/// The largest difference, relative to the larger of 1 and the expected value's magnitude (the
/// norms grow with the weights; scores lie in [-1, 1], so for them this is absolute).
pub fn error(ours: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(ours.len(), expected.len());
    ours.iter().zip(expected).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1.0)))
}

pub fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("UTF-8")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("UTF-8")
}
