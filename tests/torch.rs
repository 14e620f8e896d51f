//! `torch.save` checkpoints (`src/weights/torch.rs`, `pickle.rs`): read bit for bit as the same
//! tensors in safetensors, through the library and the command line; and hostile or broken
//! checkpoints refused by name, never run, never a panic.
//!
//! The fixtures in `tests/fixtures/torch/` are made by `make_torch_fixtures.py` with PyTorch and
//! TransformerLens; the hostile pickles are written here, opcode by opcode, into zip archives laid
//! out as torch lays them.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};
use pathc::weights::{WeightError, Weights};
use safetensors::{Dtype, SafeTensors};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

fn pathc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pathc")).args(args).output().expect("pathc runs")
}

// ---------------------------------------------------------------------------------------------
// The same tensors as safetensors

/// A safetensors tensor's values, decoded here (not by pathc), or `None` for a non-float.
fn decode(dtype: Dtype, data: &[u8]) -> Option<Vec<f64>> {
    Some(match dtype {
        Dtype::F32 => data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        Dtype::F64 => data.chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F16 => data.chunks(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        Dtype::BF16 => data.chunks(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        _ => return None,
    })
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Every tensor of `pt` (loaded from the file, and from its bytes) is the tensor of the same name in
/// `reference` (safetensors), bit for bit, whole and in row and column blocks; the non-floats are
/// listed with their dtype. Returns how many float tensors were compared.
fn assert_same_tensors(pt: &Path, reference: &Path) -> usize {
    let reference_bytes = std::fs::read(reference).unwrap();
    let reference = SafeTensors::deserialize(&reference_bytes).unwrap();
    let what = pt.display().to_string();
    let from_file = Weights::load(pt).unwrap_or_else(|e| panic!("{what}: {e}"));
    let from_bytes = Weights::from_bytes(&std::fs::read(pt).unwrap(), &what).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut names: Vec<String> = reference.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut floats = 0;
    for weights in [&from_file, &from_bytes] {
        assert_eq!(weights.names().collect::<Vec<_>>(), names, "{what}");
        for (name, view) in reference.tensors() {
            let shape = view.shape().to_vec();
            let Some(expected) = decode(view.dtype(), view.data()) else {
                let err = weights.get(&name, &shape).unwrap_err();
                assert!(matches!(err, WeightError::DType { .. }), "{what} {name}: {err}");
                assert!(err.to_string().contains(&view.dtype().to_string()), "{what} {name}: {err}");
                continue;
            };
            // The `IGNORE` buffer is -inf: read, and refused as non-finite (by index), like safetensors'.
            if expected.iter().any(|v| !v.is_finite()) {
                assert!(matches!(weights.get(&name, &shape), Err(WeightError::NonFinite { .. })), "{what} {name}");
                continue;
            }
            let got = weights.get(&name, &shape).unwrap_or_else(|e| panic!("{what} {name}: {e}"));
            assert_eq!(bits(&got.data), bits(&expected), "{what} {name}");
            assert_eq!(bits(&weights.read(&name, &shape).unwrap()), bits(&expected), "{what} {name}");
            if let [rows, cols] = shape[..] {
                for (start, n) in [(0, rows), (rows / 2, rows - rows / 2), (1.min(rows), rows.saturating_sub(2))] {
                    let block = weights.rows(&name, [rows, cols], start, n).unwrap();
                    assert_eq!(bits(&block), bits(&expected[start * cols..(start + n) * cols]), "{what} {name} rows");
                }
                for (start, n) in [(0, cols), (cols / 2, cols - cols / 2), (1.min(cols), cols.saturating_sub(2))] {
                    let block = weights.columns(&name, [rows, cols], start, n).unwrap();
                    let columns: Vec<f64> =
                        (0..rows).flat_map(|r| expected[r * cols + start..r * cols + start + n].to_vec()).collect();
                    assert_eq!(bits(&block), bits(&columns), "{what} {name} columns");
                }
            }
            floats += 1;
        }
    }
    floats
}

#[test]
fn every_dtype_reads_as_the_same_tensors_as_safetensors() {
    for tag in ["f32", "f16", "bf16", "f64"] {
        let n =
            assert_same_tensors(&fixture(&format!("model_{tag}.pt")), &fixture(&format!("model_{tag}.safetensors")));
        // 38 float tensors (the two IGNORE buffers, -inf, apart), from the file and from its bytes.
        assert_eq!(n, 2 * 38, "{tag}");
    }
    let w = Weights::load(&fixture("model_f16.pt")).unwrap();
    assert!(format!("{w:?}").contains("\"embed.W_E\": F16 [11, 8]"), "{w:?}");
    assert!(format!("{w:?}").contains("\"blocks.0.attn.mask\": BOOL [6, 6]"), "{w:?}");
}

#[test]
fn views_of_shared_storages_read_as_their_contiguous_copies() {
    // 9 views in each of F32, F16, BF16 (one empty: nothing to compare but its shape).
    assert_eq!(assert_same_tensors(&fixture("views.pt"), &fixture("views.safetensors")), 2 * 27);
    // Tied weights: unembed.W_U is embed.W_E's storage, transposed.
    assert_eq!(assert_same_tensors(&fixture("tied.pt"), &fixture("tied.safetensors")), 2 * 38);
}

#[test]
fn an_existing_fixture_resaved_by_torch_is_the_same() {
    let attn1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attn1/model.safetensors");
    assert_eq!(assert_same_tensors(&fixture("attn1.pt"), &attn1), 2 * 12);
}

#[test]
fn a_state_dict_without_buffers_lists_only_its_parameters() {
    let all = Weights::load(&fixture("model_f32.pt")).unwrap();
    let params = Weights::load(&fixture("model_nobuffers.pt")).unwrap();
    let expected: Vec<&str> = all.names().filter(|n| !n.ends_with(".mask") && !n.ends_with(".IGNORE")).collect();
    assert_eq!(params.names().collect::<Vec<_>>(), expected);
    assert_eq!(expected.len(), 38);
}

/// Parameters (`_rebuild_parameter`), and dtypes listed but not converted, as torch writes them:
/// int64 by a `LongStorage`, uint16 and float8 by `_rebuild_tensor_v3` of an `UntypedStorage`.
#[test]
fn parameters_and_other_dtypes_as_torch_writes_them() {
    let weights = Weights::load(&fixture("extras.pt")).unwrap();
    assert_eq!(weights.names().collect::<Vec<_>>(), ["f8", "i64", "param", "param.T", "u16"]);
    let values: Vec<f64> = (0..6).map(|i| i as f64 * 0.5).collect();
    assert_eq!(weights.get("param", &[2, 3]).unwrap().data, values);
    assert_eq!(weights.get("param.T", &[3, 2]).unwrap().data, [0.0, 1.5, 0.5, 2.0, 1.0, 2.5]);
    for (name, dtype) in [("f8", "F8_E4M3"), ("i64", "I64"), ("u16", "U16")] {
        let err = weights.get(name, &[]).unwrap_err();
        assert!(matches!(&err, WeightError::DType { found, .. } if found == dtype), "{name}: {err}");
    }
    let debug = format!("{weights:?}");
    assert!(debug.contains("\"u16\": U16 [4]") && debug.contains("\"f8\": F8_E4M3 [3]"), "{debug}");
}

/// `pathc check`, `paths` and `stats` print the same on a checkpoint and on its safetensors twin.
#[test]
fn the_command_line_gives_the_same_output_for_pt_and_safetensors() {
    let tiny = fixture("model.tf");
    let tiny = tiny.to_str().unwrap();
    let attn1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/attn1.tf");
    let attn1_weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attn1/model.safetensors");
    let cases = [
        (tiny, fixture("model_f32.pt"), fixture("model_f32.safetensors"), "1,2,3,4,5,6"),
        (tiny, fixture("model_bf16.pt"), fixture("model_bf16.safetensors"), "10,0,3,3,7"),
        (tiny, fixture("tied.pt"), fixture("tied.safetensors"), "4,1,5,9,2,6"),
        (attn1.to_str().unwrap(), fixture("attn1.pt"), attn1_weights, "3,7,1,19,3,7,2,0,11,3"),
    ];
    for (model, pt, st, tokens) in &cases {
        let (pt, st) = (pt.to_str().unwrap(), st.to_str().unwrap());
        for command in [
            vec!["check", model, "--tokens", tokens],
            vec!["paths", model, "--tokens", tokens, "--format", "json"],
            vec!["paths", model, "--tokens", tokens, "--target", "next"],
            vec!["stats", model],
        ] {
            let run = |weights: &str| pathc(&[&command[..], &["--weights", weights]].concat());
            let (a, b) = (run(pt), run(st));
            assert_eq!(a.status.code(), Some(0), "{command:?} {pt}: {}", String::from_utf8_lossy(&a.stderr));
            assert_eq!(b.status.code(), Some(0), "{command:?} {st}: {}", String::from_utf8_lossy(&b.stderr));
            let text = |o: &Output| String::from_utf8(o.stdout.clone()).unwrap().replace(pt, "W").replace(st, "W");
            assert!(!text(&a).is_empty(), "{command:?}");
            assert_eq!(text(&a), text(&b), "{command:?} on {pt} and {st}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints written here

/// A pickle, opcode by opcode (protocol 2, as torch.save writes).
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Pickle {
        Pickle(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> Pickle {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(self, module: &str, name: &str) -> Pickle {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(self, s: &str) -> Pickle {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, n: i32) -> Pickle {
        self.op(b"J").op(&n.to_le_bytes())
    }
    fn ints(self, values: &[i32]) -> Pickle {
        values.iter().fold(self.op(b"("), |p, &v| p.int(v)).op(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size, stride,
    /// False, OrderedDict())` on the stack.
    fn tensor(self, class: &str, key: &str, numel: i32, offset: i32, size: &[i32], stride: &[i32]) -> Pickle {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b"tQ")
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
    /// An `OrderedDict()` on the stack, then `MARK`: the state dict's entries follow.
    fn state_dict() -> Pickle {
        Pickle::new().global("collections", "OrderedDict").op(b")R(")
    }
    /// Closes the entries (`SETITEMS`) and the pickle (`STOP`).
    fn end(self) -> Vec<u8> {
        self.op(b"u.").0
    }
}

/// A torch.save-like archive: `archive/data.pkl`, then `archive/data/<key>` for each storage
/// (stored unless said otherwise), `archive/byteorder`, `archive/version`.
fn checkpoint(pickle: &[u8], storages: &[(&str, Vec<u8>, CompressionMethod)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, bytes, method) in storages {
        let options = SimpleFileOptions::default().compression_method(*method).with_alignment(64);
        zip.start_file(format!("archive/data/{key}"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().into_inner()
}

/// A zip of these members, stored.
fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in members {
        zip.start_file(*name, SimpleFileOptions::default().compression_method(CompressionMethod::Stored)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

const TWELVE: [f32; 12] = [0.5, -1.0, 2.25, 3.0, -4.5, 5.0, 6.125, -7.0, 8.0, 9.5, -10.0, 11.0];

/// The control the refusals are measured against: a valid checkpoint written by these helpers,
/// a row-major `a` and a transposed view `b` of one storage, read right.
#[test]
fn a_checkpoint_written_here_reads_right() {
    let pickle = Pickle::state_dict()
        .str("a")
        .tensor("FloatStorage", "0", 12, 0, &[3, 4], &[4, 1])
        .str("b")
        .tensor("FloatStorage", "0", 12, 1, &[3, 2], &[1, 3])
        .end();
    let bytes = checkpoint(&pickle, &[("0", f32_bytes(&TWELVE), CompressionMethod::Stored)]);
    let weights = Weights::from_bytes(&bytes, "here.pt").unwrap();
    let all: Vec<f64> = TWELVE.iter().map(|&v| v as f64).collect();
    assert_eq!(weights.get("a", &[3, 4]).unwrap().data, all);
    // Elements 1 + 1·i + 3·j.
    let b: Vec<f64> = [1, 4, 2, 5, 3, 6].iter().map(|&k| TWELVE[k] as f64).collect();
    assert_eq!(weights.get("b", &[3, 2]).unwrap().data, b);
}

/// `_rebuild_tensor_v3` of an untyped storage (numel in bytes) with a dtype, and storages in
/// big-endian order (`byteorder` says `big`), are read as torch reads them.
#[test]
fn untyped_storages_and_big_endian_archives_read_right() {
    let halves: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    let pickle = Pickle::state_dict()
        .str("h")
        .global("torch._utils", "_rebuild_tensor_v3")
        .op(b"((")
        .str("storage")
        .global("torch.storage", "UntypedStorage")
        .str("0")
        .str("cpu")
        .int(6)
        .op(b"tQ")
        .int(1)
        .ints(&[2])
        .ints(&[1])
        .op(b"\x89")
        .global("collections", "OrderedDict")
        .op(b")R")
        .global("torch", "float16")
        .op(b"tR")
        .end();
    let bytes = checkpoint(&pickle, &[("0", halves, CompressionMethod::Stored)]);
    assert_eq!(Weights::from_bytes(&bytes, "v3.pt").unwrap().get("h", &[2]).unwrap().data, [-2.0, 0.25]);

    let pickle = Pickle::state_dict().str("w").tensor("DoubleStorage", "0", 2, 0, &[2], &[1]).end();
    let big: Vec<u8> = [3.5f64, -1.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let little = checkpoint(&pickle, &[("0", big, CompressionMethod::Stored)]);
    let with_order = |order: &[u8]| {
        let mut archive = zip::ZipArchive::new(Cursor::new(&little)).unwrap();
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..archive.len() {
            let mut member = archive.by_index(i).unwrap();
            let mut content = Vec::new();
            member.read_to_end(&mut content).unwrap();
            let name = member.name().to_string();
            zip.start_file(&name, SimpleFileOptions::default().compression_method(CompressionMethod::Stored)).unwrap();
            zip.write_all(if name.ends_with("byteorder") { order } else { &content }).unwrap();
        }
        zip.finish().unwrap().into_inner()
    };
    let big = with_order(b"big");
    assert_eq!(Weights::from_bytes(&big, "big.pt").unwrap().get("w", &[2]).unwrap().data, [3.5, -1.0]);
    // Read as little-endian, the same bytes are other numbers.
    assert_ne!(Weights::from_bytes(&little, "little.pt").unwrap().get("w", &[2]).unwrap().data, [3.5, -1.0]);
    let message = refusal(&with_order(b"middle"));
    assert!(message.contains("member `archive/byteorder` says \"middle\", not `little` or `big`"), "{message}");
}

/// What `Weights::from_bytes` says about `bytes`, which it must refuse.
fn refusal(bytes: &[u8]) -> String {
    match Weights::from_bytes(bytes, "hostile.pt") {
        Ok(w) => panic!("accepted: {w:?}"),
        Err(e @ (WeightError::Format { .. } | WeightError::Truncated { .. })) => e.to_string(),
        Err(e) => panic!("not a format error: {e:?}"),
    }
}

/// A checkpoint holding `pickle` and one 12-float storage `0`.
fn with_pickle(pickle: Vec<u8>) -> Vec<u8> {
    checkpoint(&pickle, &[("0", f32_bytes(&TWELVE), CompressionMethod::Stored)])
}

/// The hostile and broken pickles and archives, each with what its refusal must say.
fn hostile_cases(canary: &Path) -> Vec<(&'static str, Vec<u8>, String)> {
    let canary = canary.to_str().unwrap();
    let valid = || Pickle::state_dict().str("w").tensor("FloatStorage", "0", 12, 0, &[12], &[1]);
    let refused = |name: &str| format!("GLOBAL `{name}` is refused");
    let opcode = |name: &str| format!("opcode {name} (0x");
    vec![
        (
            "os.system",
            with_pickle(Pickle::new().global("os", "system").str(&format!("touch {canary}")).op(b"\x85R.").0),
            refused("os.system"),
        ),
        (
            "posix.system inside a tensor",
            with_pickle(valid().str("x").global("posix", "system").str(&format!("touch {canary}")).op(b"\x85R").end()),
            refused("posix.system"),
        ),
        (
            "builtins.eval",
            with_pickle(Pickle::new().global("builtins", "eval").str("1").op(b"\x85R.").0),
            refused("builtins.eval"),
        ),
        (
            "__builtin__.exec",
            with_pickle(Pickle::new().global("__builtin__", "exec").op(b".").0),
            refused("__builtin__.exec"),
        ),
        (
            "torch.load",
            with_pickle(Pickle::new().global("torch", "load").str("x.pt").op(b"\x85R.").0),
            refused("torch.load"),
        ),
        (
            "a rebuild function torch allows, pathc does not need",
            with_pickle(Pickle::new().global("torch._utils", "_rebuild_device_tensor_from_numpy").op(b".").0),
            refused("torch._utils._rebuild_device_tensor_from_numpy"),
        ),
        (
            "STACK_GLOBAL",
            with_pickle(Pickle::new().str("os").str("system").op(b"\x93").str("true").op(b"\x85R.").0),
            opcode("STACK_GLOBAL"),
        ),
        (
            "STACK_GLOBAL of an allowed name",
            with_pickle(Pickle::new().str("collections").str("OrderedDict").op(b"\x93)R.").0),
            opcode("STACK_GLOBAL"),
        ),
        ("INST", with_pickle(Pickle::new().op(b"(X\x04\x00\x00\x00trueios\nsystem\n.").0), opcode("INST")),
        ("OBJ", with_pickle(Pickle::new().op(b"(").global("collections", "OrderedDict").op(b"o.").0), opcode("OBJ")),
        ("NEWOBJ", with_pickle(Pickle::new().global("collections", "OrderedDict").op(b")\x81.").0), opcode("NEWOBJ")),
        ("EXT1", with_pickle(Pickle::new().op(b"\x82\x01.").0), opcode("EXT1")),
        ("PERSID (text)", with_pickle(Pickle::new().op(b"P0\n.").0), opcode("PERSID")),
        ("not an opcode", with_pickle(Pickle::new().op(b"\xff.").0), "byte 0xff is not a pickle opcode".into()),
        (
            "REDUCE of a storage class",
            with_pickle(Pickle::new().global("torch", "FloatStorage").op(b")R.").0),
            "torch.FloatStorage: is a type name, not a function: calling it is refused".into(),
        ),
        (
            "REDUCE of a string",
            with_pickle(Pickle::new().str("os.system").op(b")R.").0),
            "REDUCE calls a string: only the allowed globals may be called".into(),
        ),
        (
            "OrderedDict called with arguments",
            with_pickle(Pickle::new().global("collections", "OrderedDict").op(b"]\x85R.").0),
            "collections.OrderedDict: called with 1 argument(s)".into(),
        ),
        ("BUILD on a tensor", with_pickle(valid().op(b"}b").end()), "BUILD on a tensor is refused".into()),
        ("BUILD on a list", with_pickle(Pickle::new().op(b"]}b.").0), "BUILD on a list is refused".into()),
        ("deep marks", with_pickle(Pickle::new().op(&[b'('; 5000]).op(b".").0), "more than 256 MARKs are open".into()),
        (
            "deep nesting",
            with_pickle(Pickle::new().op(b"N").op(&[0x85; 100_000]).op(b".").0),
            "containers nest more than 64 deep".into(),
        ),
        (
            "a huge length prefix",
            with_pickle(Pickle::new().op(b"X\xff\xff\xff\xff").0),
            "BINUNICODE needs 4294967295 byte(s), but only 0 remain".into(),
        ),
        (
            "a long global name",
            with_pickle(Pickle::new().op(b"c").op(&[b'a'; 100_000]).0),
            "longer than 256 bytes".into(),
        ),
        (
            "an unread memo slot",
            with_pickle(Pickle::new().op(b"h\x07.").0),
            "memo slot 7 is read but was never stored".into(),
        ),
        ("an empty stack", with_pickle(Pickle::new().op(b"R.").0), "REDUCE finds the stack empty".into()),
        (
            "no STOP",
            with_pickle(Pickle::state_dict().op(b"u").0),
            "an opcode needs 1 byte(s), but only 0 remain".into(),
        ),
        (
            "a persistent id that is not a storage",
            with_pickle(Pickle::new().str("module").str("x").op(b"\x86Q.").0),
            "persistent id is a tuple of 2, not ('storage', type, key, location, numel)".into(),
        ),
        (
            "a persistent id naming a missing storage",
            with_pickle(Pickle::state_dict().str("w").tensor("FloatStorage", "7", 12, 0, &[12], &[1]).end()),
            "a tensor's storage is member `archive/data/7`, which the archive does not have".into(),
        ),
        (
            "a view past the end of its storage",
            with_pickle(Pickle::state_dict().str("w").tensor("FloatStorage", "0", 12, 3, &[5, 2], &[2, 1]).end()),
            "the view (offset 3, size [5, 2], stride [2, 1]) reaches past the end of storage `0` (12 elements of F32)"
                .into(),
        ),
        (
            "an overflowing stride",
            with_pickle(
                Pickle::state_dict().str("w").tensor("FloatStorage", "0", 12, 0, &[3, 2], &[i32::MAX, 1]).end(),
            ),
            "reaches past the end of storage `0`".into(),
        ),
        (
            "a negative size",
            with_pickle(Pickle::state_dict().str("w").tensor("FloatStorage", "0", 12, 0, &[-1], &[1]).end()),
            "its size is a tuple of 1, not a tuple of non-negative ints".into(),
        ),
        (
            "a storage larger than its member",
            with_pickle(Pickle::state_dict().str("w").tensor("FloatStorage", "0", 13, 0, &[12], &[1]).end()),
            "member `archive/data/0` holds 48 bytes, but tensor `w`'s storage declares 13 elements of F32".into(),
        ),
        (
            "an unknown storage class",
            with_pickle(Pickle::state_dict().str("w").tensor("QInt8Storage", "0", 48, 0, &[48], &[1]).end()),
            refused("torch.QInt8Storage"),
        ),
        (
            "a compressed storage member",
            checkpoint(&valid().end(), &[("0", f32_bytes(&TWELVE), CompressionMethod::Deflated)]),
            "member `archive/data/0` is compressed (Deflated)".into(),
        ),
        (
            "a list, not a dict",
            with_pickle(Pickle::new().op(b"].").0),
            "member `archive/data.pkl` holds a list, not a state dict".into(),
        ),
        (
            "an entry that is not a tensor",
            with_pickle(Pickle::state_dict().str("step").int(1000).end()),
            "entry `step` is an int, not a tensor".into(),
        ),
        (
            "a nested checkpoint",
            with_pickle(Pickle::state_dict().str("model").op(b"}").end()),
            "entry `model` is a dict, not a tensor".into(),
        ),
        (
            "two checkpoints in one archive",
            zip_of(&[("a/data.pkl", &valid().end()), ("b/data.pkl", &valid().end())]),
            "the archive holds several pickles (`a/data.pkl`, `b/data.pkl`)".into(),
        ),
        (
            "a pickle that is not a checkpoint's (an .npz member)",
            zip_of(&[("xdata.pkl", &valid().end())]),
            "member `xdata.pkl` is not a .npy array".into(),
        ),
        (
            "a pickle two folders down (an .npz member)",
            zip_of(&[("a/b/data.pkl", &valid().end())]),
            "member `a/b/data.pkl` is not a .npy array".into(),
        ),
        (
            "a name set twice",
            with_pickle(valid().str("w").tensor("FloatStorage", "0", 12, 0, &[12], &[1]).end()),
            "the state dict sets `w` twice".into(),
        ),
    ]
}

/// Every hostile or broken checkpoint is refused with a message naming what was refused; nothing in
/// it runs (the canary file a `touch` would make is never made).
#[test]
fn hostile_and_broken_checkpoints_are_refused_by_name() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("torch-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let canary = dir.join("pwned");
    let mut messages = Vec::new();
    for (case, bytes, expected) in hostile_cases(&canary) {
        let message = refusal(&bytes);
        assert!(message.contains(&expected), "{case}: expected {expected:?} in\n{message}");
        assert!(message.starts_with("hostile.pt is "), "{case}: {message}");
        // From the file too: the same refusal.
        let file = dir.join("hostile.pt");
        std::fs::write(&file, &bytes).unwrap();
        let loaded = Weights::load(&file).unwrap_err().to_string();
        assert_eq!(loaded.replacen(file.to_str().unwrap(), "hostile.pt", 1), message, "{case}");
        messages.push(format!("{case}: {}", message.replace(canary.to_str().unwrap(), "CANARY")));
    }
    assert!(!canary.exists(), "a pickle ran");
    insta::assert_snapshot!("torch_refusals", messages.join("\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The command line exits 2 with the refusal on standard error, and nothing on standard output.
#[test]
fn the_command_line_exits_2_on_a_hostile_checkpoint() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("torch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let canary = dir.join("pwned");
    let model = fixture("model.tf");
    for (case, bytes, expected) in hostile_cases(&canary).into_iter().step_by(3) {
        let file = dir.join("hostile.pt");
        std::fs::write(&file, &bytes).unwrap();
        let out = pathc(&["check", model.to_str().unwrap(), "--weights", file.to_str().unwrap(), "--tokens", "1,2"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {err}");
        assert!(err.starts_with("error: ") && err.contains(&expected), "{case}: {err}");
        assert!(!err.contains("panicked") && out.stdout.is_empty(), "{case}: {err}");
    }
    for (file, expected) in [
        (fixture("legacy.pt"), "this is a torch.save checkpoint in the legacy format"),
        (dir.join("bare.pkl"), "this is a bare pickle, not a torch.save zip archive"),
    ] {
        if !file.exists() {
            std::fs::write(&file, b"\x80\x02}q\x00.").unwrap();
        }
        let out = pathc(&["check", model.to_str().unwrap(), "--weights", file.to_str().unwrap(), "--tokens", "1,2"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    assert!(!canary.exists(), "a pickle ran");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_legacy_format_and_bare_pickles_say_how_to_resave() {
    let legacy = std::fs::read(fixture("legacy.pt")).unwrap();
    let message = refusal(&legacy);
    assert!(message.contains("legacy format (PyTorch < 1.6, or _use_new_zipfile_serialization=False)"), "{message}");
    assert!(message.contains("torch.save(torch.load(path), path)") && message.contains("safetensors"), "{message}");
    // Cut short, still legacy (from 9 bytes on), then a bare pickle.
    assert!(refusal(&legacy[..9]).contains("legacy format"));
    for bare in [&b"\x80\x02}q\x00."[..], b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.", b"\x80\x02"] {
        assert!(refusal(bare).contains("this is a bare pickle, not a torch.save zip archive"), "{bare:?}");
    }
}

/// Every single-byte change of a real checkpoint's pickle (re-packed with a right CRC, so that the
/// pickle machine sees it) is read or refused, never a panic; so is every byte of the archive
/// itself changed.
#[test]
fn every_corruption_of_a_real_pickle_is_read_or_refused() {
    let original = std::fs::read(fixture("views.pt")).unwrap();
    let mut archive = zip::ZipArchive::new(Cursor::new(&original)).unwrap();
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).unwrap();
        members.push((member.name().to_string(), bytes));
    }
    let pkl = members.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
    let repack = |pickle: &[u8]| {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (i, (name, bytes)) in members.iter().enumerate() {
            let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored).with_alignment(64);
            zip.start_file(name, options).unwrap();
            zip.write_all(if i == pkl { pickle } else { bytes }).unwrap();
        }
        zip.finish().unwrap().into_inner()
    };
    assert!(Weights::from_bytes(&repack(&members[pkl].1), "views.pt").is_ok());
    let (mut read, mut refused) = (0, 0);
    let pickle = &members[pkl].1;
    for at in 0..pickle.len() {
        for replacement in [pickle[at] ^ 0x01, pickle[at].wrapping_add(0x40), 0x00, 0xff] {
            let mut mutated = pickle.clone();
            mutated[at] = replacement;
            match Weights::from_bytes(&repack(&mutated), "views.pt") {
                Ok(_) => read += 1,
                Err(WeightError::Format { .. } | WeightError::Truncated { .. }) => refused += 1,
                Err(e) => panic!("byte {at} → {replacement:#04x}: {e:?}"),
            }
        }
    }
    assert!(read > 100 && refused > 1000, "{read} read, {refused} refused");
    for at in 0..original.len() {
        let mut mutated = original.clone();
        mutated[at] ^= 0x5a;
        let _ = Weights::from_bytes(&mutated, "views.pt");
    }
}
