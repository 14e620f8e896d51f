//! `pathc::weights`: loading safetensors and .npz files into named f64 tensors (`torch.save`
//! checkpoints: tests/torch.rs, and every truncation of one here).
//!
//! The fixtures (TransformerLens state dicts) are checked element by element against a small
//! independent reader written here; the other files are built in the test, with the safetensors
//! crate's serializer and with `.npy` bytes written by hand into a zip, so that every dtype,
//! layout and corruption is covered without checked-in binaries.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use pathc::weights::{WeightError, Weights};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

// ---------------------------------------------------------------------------------------------
// An independent safetensors reader: the length prefix, the JSON header, F32 bytes.

struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    /// Decoded only for F32.
    values: Option<Vec<f64>>,
}

fn read_raw(bytes: &[u8]) -> Vec<RawTensor> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out: Vec<RawTensor> = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, info)| {
            let dtype = info["dtype"].as_str().unwrap().to_string();
            let shape: Vec<usize> =
                info["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let start = info["data_offsets"][0].as_u64().unwrap() as usize;
            let end = info["data_offsets"][1].as_u64().unwrap() as usize;
            let values = (dtype == "F32").then(|| {
                data[start..end].chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
            });
            RawTensor { name: name.clone(), dtype, shape, values }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[test]
fn fixtures_match_an_independent_reader() {
    // (fixture, number of tensors, some shapes)
    type Case<'a> = (&'a str, usize, &'a [(&'a str, &'a [usize])]);
    let cases: &[Case<'_>] = &[
        (
            "attn1/model.safetensors",
            14,
            &[
                ("embed.W_E", &[20, 16]),
                ("pos_embed.W_pos", &[12, 16]),
                ("blocks.0.attn.W_Q", &[2, 16, 4]),
                ("blocks.0.attn.W_O", &[2, 4, 16]),
                ("unembed.W_U", &[16, 20]),
            ],
        ),
        (
            "attn2/model.safetensors",
            24,
            &[("embed.W_E", &[50, 32]), ("blocks.0.attn.W_Q", &[4, 32, 8]), ("blocks.1.attn.W_V", &[4, 32, 8])],
        ),
        ("full2/model.safetensors", 42, &[]),
    ];
    for &(rel, count, shapes) in cases {
        let path = fixture(rel);
        let weights = Weights::load(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let raw = read_raw(&std::fs::read(&path).unwrap());
        assert_eq!(raw.len(), count, "{rel}");
        let names: Vec<&str> = weights.names().collect();
        let raw_names: Vec<&str> = raw.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, raw_names, "{rel}: names, sorted");
        for &(name, shape) in shapes {
            assert_eq!(weights.get(name, shape).unwrap().shape, shape, "{rel}: {name}");
        }
        let mut compared = 0;
        for t in &raw {
            assert!(weights.contains(&t.name));
            match (&t.values, t.dtype.as_str()) {
                (Some(values), _) if values.iter().all(|v| v.is_finite()) => {
                    let tensor = weights.get(&t.name, &t.shape).unwrap();
                    assert_eq!(tensor.shape, t.shape);
                    // Exact: f32 → f64 is exact both ways.
                    assert_eq!(tensor.data, *values, "{rel}: {}", t.name);
                    compared += values.len();
                }
                (Some(values), _) => {
                    // TransformerLens's IGNORE buffer is -inf: loaded, refused only when asked for.
                    let err = weights.get(&t.name, &t.shape).unwrap_err();
                    let first = values.iter().position(|v| !v.is_finite()).unwrap();
                    assert!(matches!(&err, WeightError::NonFinite { name, value, .. }
                        if *name == t.name && value.to_bits() == values[first].to_bits()));
                }
                (None, "BOOL") => {
                    let err = weights.get(&t.name, &t.shape).unwrap_err();
                    assert_eq!(
                        err.to_string(),
                        format!("tensor `{}` has dtype BOOL, expected a float (F16, BF16, F32, F64)", t.name)
                    );
                }
                (None, other) => panic!("{rel}: unexpected dtype {other}"),
            }
        }
        assert!(compared > 1000, "{rel}: compared {compared} elements");
    }
}

#[test]
fn transformer_lens_buffers_are_listed_not_refused() {
    let weights = Weights::load(&fixture("attn2/model.safetensors")).unwrap();
    for layer in 0..2 {
        let mask = format!("blocks.{layer}.attn.mask");
        assert!(weights.contains(&mask));
        assert!(matches!(weights.get(&mask, &[16, 16]), Err(WeightError::DType { found, .. }) if found == "BOOL"));
        let ignore = format!("blocks.{layer}.attn.IGNORE");
        let err = weights.get(&ignore, &[]).unwrap_err();
        assert_eq!(err.to_string(), format!("tensor `{ignore}` holds -inf at []"));
    }
}

#[test]
fn get_is_repeatable_and_returns_the_same_tensor() {
    let weights = Weights::load(&fixture("attn1/model.safetensors")).unwrap();
    let a = weights.get("embed.W_E", &[20, 16]).unwrap();
    let b = weights.get("embed.W_E", &[20, 16]).unwrap();
    assert!(std::ptr::eq(a, b), "get hands out the cached tensor");
}

// ---------------------------------------------------------------------------------------------
// Building files in the test.

/// Values exactly representable in F16, BF16, F32 and F64 (8 significant bits at most, small
/// exponents), including zero, a negative zero and a subnormal-free small power of two.
const EXACT: [f64; 12] = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 0.375, 1024.0, -0.125, 3.0, 96.0, 0.0078125];

fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            Dtype::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            Dtype::F32 => (v as f32).to_le_bytes().to_vec(),
            Dtype::F64 => v.to_le_bytes().to_vec(),
            other => panic!("encode {other}"),
        })
        .collect()
}

/// A safetensors file built by the safetensors crate.
fn safetensors_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| (*name, TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

/// A safetensors file with a hand-written header (for headers the serializer would refuse).
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A `.npy` file as numpy writes it: magic, version, header length, the dict padded with spaces
/// to a multiple of 64 and ending in a newline, then the data.
fn npy_bytes(descr: &str, fortran: bool, shape: &[usize], data: &[u8], major: u8) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let fortran = if fortran { "True" } else { "False" };
    npy_with_header(&format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"), data, major)
}

fn npy_with_header(dict: &str, data: &[u8], major: u8) -> Vec<u8> {
    let prefix = if major == 1 { 10 } else { 12 };
    let mut header = dict.to_string();
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([major, 0]);
    if major == 1 {
        out.extend((header.len() as u16).to_le_bytes());
    } else {
        out.extend((header.len() as u32).to_le_bytes());
    }
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// An `.npz`: members in a zip, stored (`numpy.savez`) or deflated (`numpy.savez_compressed`).
fn npz_bytes(members: &[(&str, Vec<u8>)], method: CompressionMethod) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in members {
        zip.start_file(*name, SimpleFileOptions::default().compression_method(method)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `values` (row-major, of `shape`) laid out column-major.
fn to_fortran(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = values.len();
    let mut out = vec![0.0; n];
    for (flat, &v) in values.iter().enumerate() {
        // row-major multi-index of `flat`, then its column-major offset
        let mut rest = flat;
        let mut index = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            index[k] = rest % shape[k];
            rest /= shape[k];
        }
        let mut offset = 0;
        for k in (0..shape.len()).rev() {
            offset = offset * shape[k] + index[k];
        }
        out[offset] = v;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn safetensors_round_trip_every_float_dtype() {
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
        let bytes = safetensors_bytes(&[
            ("m", dtype, vec![3, 4], encode(dtype, &EXACT)),
            ("scalar", dtype, vec![], encode(dtype, &[-2.5])),
            ("empty", dtype, vec![0, 4], vec![]),
            ("flags", Dtype::BOOL, vec![2], vec![1, 0]),
            ("ids", Dtype::I64, vec![2], [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ]);
        let weights = Weights::from_bytes(&bytes, "round.safetensors").unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_eq!(weights.names().collect::<Vec<_>>(), ["empty", "flags", "ids", "m", "scalar"], "{dtype}");
        let m = weights.get("m", &[3, 4]).unwrap();
        assert_eq!(m.data, EXACT, "{dtype}");
        assert!(m.data[1].is_sign_negative(), "{dtype}: -0.0 keeps its sign");
        assert_eq!(weights.get("scalar", &[]).unwrap().data, [-2.5]);
        assert!(weights.get("empty", &[0, 4]).unwrap().data.is_empty());
        assert!(matches!(weights.get("ids", &[2]), Err(WeightError::DType { found, .. }) if found == "I64"));
    }
}

#[test]
fn safetensors_metadata_is_ignored_and_detection_is_by_content() {
    let views = [("w", TensorView::new(Dtype::F32, vec![2], &[0, 0, 128, 63, 0, 0, 0, 64]).unwrap())];
    let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
    let bytes = safetensors::tensor::serialize(views, Some(metadata)).unwrap();
    // Any name, or none that says what the file is.
    for origin in ["model.safetensors", "model.bin", "weights.npz", "noext"] {
        let weights = Weights::from_bytes(&bytes, origin).unwrap();
        assert_eq!(weights.names().collect::<Vec<_>>(), ["w"]);
        assert_eq!(weights.get("w", &[2]).unwrap().data, [1.0, 2.0]);
    }
    let npz =
        npz_bytes(&[("w.npy", npy_bytes("<f8", false, &[1], &4.0f64.to_le_bytes(), 1))], CompressionMethod::Stored);
    assert_eq!(Weights::from_bytes(&npz, "model.safetensors").unwrap().get("w", &[1]).unwrap().data, [4.0]);
}

#[test]
fn npz_round_trip_every_float_dtype_layout_and_compression() {
    let shape = [2, 3, 2];
    let values = &EXACT;
    let fortran = to_fortran(values, &shape);
    assert_ne!(fortran, values, "the layouts differ");
    // (descr, encoder)
    type Encoder = fn(f64) -> Vec<u8>;
    let encoders: &[(&str, Encoder)] = &[
        ("<f2", |v| half::f16::from_f64(v).to_le_bytes().to_vec()),
        ("<f4", |v| (v as f32).to_le_bytes().to_vec()),
        ("<f8", |v| v.to_le_bytes().to_vec()),
        (">f2", |v| half::f16::from_f64(v).to_be_bytes().to_vec()),
        (">f4", |v| (v as f32).to_be_bytes().to_vec()),
        (">f8", |v| v.to_be_bytes().to_vec()),
    ];
    for &(descr, enc) in encoders {
        for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
            for major in [1, 2, 3] {
                let c_data: Vec<u8> = values.iter().flat_map(|&v| enc(v)).collect();
                let f_data: Vec<u8> = fortran.iter().flat_map(|&v| enc(v)).collect();
                let npz = npz_bytes(
                    &[
                        ("blocks.0.attn.W_Q.npy", npy_bytes(descr, false, &shape, &c_data, major)),
                        ("fortran.npy", npy_bytes(descr, true, &shape, &f_data, major)),
                        (
                            "matrix_f.npy",
                            npy_bytes(descr, true, &[3, 4], &enc_all(enc, &to_fortran(values, &[3, 4])), major),
                        ),
                        ("vector.npy", npy_bytes(descr, true, &[12], &c_data, major)),
                        ("scalar.npy", npy_bytes(descr, false, &[], &enc(-2.5), major)),
                        ("mask.npy", npy_bytes("|b1", false, &[2, 2], &[1, 0, 1, 1], major)),
                        ("ids.npy", npy_bytes("<i8", false, &[1], &5i64.to_le_bytes(), major)),
                    ],
                    method,
                );
                let what = format!("{descr} {method:?} v{major}");
                let weights = Weights::from_bytes(&npz, "weights.npz").unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    weights.names().collect::<Vec<_>>(),
                    ["blocks.0.attn.W_Q", "fortran", "ids", "mask", "matrix_f", "scalar", "vector"],
                    "{what}"
                );
                assert_eq!(weights.get("blocks.0.attn.W_Q", &shape).unwrap().data, values, "{what}");
                assert_eq!(weights.get("fortran", &shape).unwrap().data, values, "{what}: Fortran order");
                assert_eq!(weights.get("matrix_f", &[3, 4]).unwrap().data, values, "{what}: Fortran order");
                assert_eq!(weights.get("vector", &[12]).unwrap().data, values, "{what}");
                assert_eq!(weights.get("scalar", &[]).unwrap().data, [-2.5], "{what}");
                assert!(
                    matches!(weights.get("mask", &[2, 2]), Err(WeightError::DType { found, .. }) if found == "BOOL")
                );
                assert!(matches!(weights.get("ids", &[1]), Err(WeightError::DType { found, .. }) if found == "I64"));
            }
        }
    }
}

fn enc_all(enc: fn(f64) -> Vec<u8>, values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|&v| enc(v)).collect()
}

#[test]
fn npz_without_arrays_is_empty() {
    let npz = npz_bytes(&[], CompressionMethod::Stored);
    assert!(npz.starts_with(b"PK\x05\x06"));
    let weights = Weights::from_bytes(&npz, "empty.npz").unwrap();
    assert_eq!(weights.names().count(), 0);
}

#[test]
fn npy_header_variants_numpy_has_written() {
    // Python 2 long integers, double quotes, no trailing comma, other key order.
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    for dict in [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }",
        "{\"shape\": (1, 2), \"descr\": \"<f4\", \"fortran_order\": False}",
        "{'fortran_order': True,'shape':(2,),'descr':'<f4'}",
    ] {
        let npz = npz_bytes(&[("w.npy", npy_with_header(dict, &data, 1))], CompressionMethod::Stored);
        let weights = Weights::from_bytes(&npz, "h.npz").unwrap_or_else(|e| panic!("{dict}: {e}"));
        let shape: &[usize] = if dict.contains("(1, 2)") { &[1, 2] } else { &[2] };
        assert_eq!(weights.get("w", shape).unwrap().data, [1.0, 2.0], "{dict}");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors from `get`

#[test]
fn missing_tensors_suggest_similar_names() {
    let weights = Weights::load(&fixture("attn2/model.safetensors")).unwrap();
    let origin = fixture("attn2/model.safetensors").display().to_string();
    // (asked, names that must be among the suggestions, the best first)
    let cases: &[(&str, &[&str])] = &[
        ("blocks.2.attn.W_Q", &["blocks.0.attn.W_Q", "blocks.1.attn.W_Q"]),
        ("blocks.1.attn.W_QK", &["blocks.1.attn.W_K", "blocks.1.attn.W_Q"]),
        ("W_E", &["embed.W_E"]),
        ("embed.W_e", &["embed.W_E"]),
        ("unembed.W_u", &["unembed.W_U"]),
        ("something.else.entirely", &[]),
    ];
    for &(asked, wanted) in cases {
        let err = weights.get(asked, &[1]).unwrap_err();
        let WeightError::Missing { name, origin: o, similar } = &err else { panic!("{asked}: {err:?}") };
        assert_eq!(name, asked);
        assert_eq!(*o, origin);
        assert!(similar.len() <= 3, "{asked}: {similar:?}");
        assert_eq!(&similar[..wanted.len()], wanted, "{asked}");
        for s in similar {
            assert!(weights.contains(s));
        }
        let message = err.to_string();
        assert!(message.starts_with(&format!("tensor `{asked}` is missing from {origin}")), "{message}");
        if wanted.is_empty() {
            assert_eq!(similar, &Vec::<String>::new(), "{asked}");
            assert!(!message.contains("similar"), "{message}");
        } else {
            assert!(message.contains(&format!("similar names: `{}`", wanted[0])), "{message}");
        }
    }
}

#[test]
fn wrong_shapes_name_the_tensor_and_both_shapes() {
    let weights = Weights::load(&fixture("attn2/model.safetensors")).unwrap();
    let cases: &[(&str, &[usize], &str)] = &[
        ("blocks.0.attn.W_Q", &[4, 32, 16], "tensor `blocks.0.attn.W_Q` has shape [4, 32, 8], expected [4, 32, 16]"),
        ("embed.W_E", &[32, 50], "tensor `embed.W_E` has shape [50, 32], expected [32, 50]"),
        ("unembed.b_U", &[], "tensor `unembed.b_U` has shape [50], expected []"),
        ("blocks.1.attn.IGNORE", &[1], "tensor `blocks.1.attn.IGNORE` has shape [], expected [1]"),
    ];
    for &(name, expected, message) in cases {
        let err = weights.get(name, expected).unwrap_err();
        assert!(matches!(&err, WeightError::Shape { name: n, expected: e, .. } if n == name && e == expected));
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn non_float_tensors_name_their_dtype() {
    let ints = |size: usize| vec![0u8; 4 * size];
    let bytes = safetensors_bytes(&[
        ("mask", Dtype::BOOL, vec![2, 2], vec![1, 0, 1, 1]),
        ("u8", Dtype::U8, vec![4], ints(1)),
        ("i32", Dtype::I32, vec![4], ints(4)),
        ("u64", Dtype::U64, vec![4], ints(8)),
        ("fp8", Dtype::F8_E4M3, vec![4], ints(1)),
    ]);
    let weights = Weights::from_bytes(&bytes, "ints.safetensors").unwrap();
    for (name, dtype) in [("mask", "BOOL"), ("u8", "U8"), ("i32", "I32"), ("u64", "U64"), ("fp8", "F8_E4M3")] {
        let err = weights.get(name, &[4]).unwrap_err();
        assert!(matches!(&err, WeightError::DType { name: n, found } if n == name && found == dtype));
        assert_eq!(
            err.to_string(),
            format!("tensor `{name}` has dtype {dtype}, expected a float (F16, BF16, F32, F64)")
        );
    }
    let npz = npz_bytes(
        &[
            ("b.npy", npy_bytes("|b1", false, &[2], &[0, 1], 1)),
            ("i.npy", npy_bytes("<i4", false, &[1], &[0; 4], 1)),
            ("u.npy", npy_bytes("|u1", false, &[1], &[0], 1)),
            ("c.npy", npy_bytes("<c8", false, &[1], &[0; 8], 1)),
            ("s.npy", npy_bytes("<U3", false, &[1], &[0; 12], 1)),
            ("q.npy", npy_bytes("<f16", false, &[1], &[0; 16], 1)),
            ("o.npy", npy_bytes("|O", false, &[1], b"pickle bytes", 1)),
            (
                "r.npy",
                npy_with_header("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }", &[0; 4], 1),
            ),
        ],
        CompressionMethod::Stored,
    );
    let weights = Weights::from_bytes(&npz, "ints.npz").unwrap();
    for (name, dtype) in [
        ("b", "BOOL"),
        ("i", "I32"),
        ("u", "U8"),
        ("c", "C64"),
        ("s", "`<U3`"),
        ("q", "`<f16`"),
        ("o", "`|O`"),
        ("r", "a structured (record) dtype"),
    ] {
        let err = weights.get(name, &[1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("tensor `{name}` has dtype {dtype}, expected a float (F16, BF16, F32, F64)")
        );
    }
}

#[test]
fn non_finite_values_are_refused_with_their_index() {
    let shape = vec![2, 3, 2];
    // (value, flat index, index, word)
    let cases = [
        (f64::NAN, 10, [1, 2, 0], "NaN"),
        (f64::INFINITY, 0, [0, 0, 0], "inf"),
        (f64::NEG_INFINITY, 11, [1, 2, 1], "-inf"),
        (f64::NAN, 3, [0, 1, 1], "NaN"),
    ];
    for (bad, flat, index, word) in cases {
        let mut values = EXACT.to_vec();
        values[flat] = bad;
        // a second bad value later: the first one is reported
        if flat < 11 {
            values[11] = f64::NAN;
        }
        let message = format!("tensor `w` holds {word} at {index:?}");
        let mut files = Vec::new();
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            files.push((format!("{dtype}"), safetensors_bytes(&[("w", dtype, shape.clone(), encode(dtype, &values))])));
        }
        let f8: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let fortran: Vec<u8> = to_fortran(&values, &shape).iter().flat_map(|v| v.to_le_bytes()).collect();
        files.push((
            "npz".into(),
            npz_bytes(&[("w.npy", npy_bytes("<f8", false, &shape, &f8, 1))], CompressionMethod::Stored),
        ));
        files.push((
            "npz fortran".into(),
            npz_bytes(&[("w.npy", npy_bytes("<f8", true, &shape, &fortran, 1))], CompressionMethod::Stored),
        ));
        for (what, bytes) in files {
            let weights = Weights::from_bytes(&bytes, "bad").unwrap();
            let err = weights.get("w", &shape).unwrap_err();
            let WeightError::NonFinite { name, index: i, value } = &err else { panic!("{what}: {err:?}") };
            assert_eq!((name.as_str(), i.as_slice()), ("w", &index[..]), "{what}");
            assert_eq!(value.is_nan(), bad.is_nan(), "{what}");
            assert!(value.is_nan() || *value == bad, "{what}");
            assert_eq!(err.to_string(), message, "{what}");
            // The shape is checked first: a wrong shape is reported as such.
            assert!(matches!(weights.get("w", &[12]), Err(WeightError::Shape { .. })));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors from loading

fn small_safetensors() -> Vec<u8> {
    safetensors_bytes(&[
        ("a", Dtype::F32, vec![2, 2], encode(Dtype::F32, &[1.0, 2.0, 3.0, 4.0])),
        ("mask", Dtype::BOOL, vec![3], vec![1, 0, 1]),
        ("z", Dtype::BF16, vec![2], encode(Dtype::BF16, &[0.5, -1.0])),
    ])
}

#[test]
fn every_truncation_of_a_safetensors_file_is_an_error_saying_how_short() {
    let full = small_safetensors();
    let len = full.len();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    assert!(Weights::from_bytes(&full, "small.safetensors").is_ok());
    for cut in 0..len {
        let err = Weights::from_bytes(&full[..cut], "small.safetensors").unwrap_err();
        let message = err.to_string();
        match cut {
            0 => {
                assert!(matches!(err, WeightError::Format { .. }), "{cut}: {err:?}");
                assert_eq!(message, "small.safetensors is not a valid weights file: the file is empty (0 bytes)");
            }
            1..=7 => {
                assert!(matches!(err, WeightError::Truncated { .. }), "{cut}: {err:?}");
                assert!(message.contains(&format!("expected at least 8 bytes, found {cut}")), "{message}");
            }
            c if c < header_end => {
                assert!(matches!(err, WeightError::Truncated { .. }), "{cut}: {err:?}");
                assert!(message.contains(&format!("needs at least {header_end} bytes; found {cut}")), "{message}");
            }
            _ => {
                assert!(matches!(err, WeightError::Truncated { .. }), "{cut}: {err:?}");
                assert!(message.contains(&format!("ends at byte {len} of the file")), "{message}");
                assert!(message.contains(&format!("the file has only {cut} bytes")), "{message}");
            }
        }
        assert!(message.starts_with("small.safetensors "), "{message}");
    }
}

#[test]
fn every_truncation_of_an_npz_file_is_an_error() {
    let data: Vec<u8> = EXACT.iter().flat_map(|v| v.to_le_bytes()).collect();
    for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
        let full = npz_bytes(
            &[
                ("a.npy", npy_bytes("<f8", false, &[3, 4], &data, 1)),
                ("b.npy", npy_bytes("|b1", false, &[2], &[1, 0], 1)),
            ],
            method,
        );
        assert!(Weights::from_bytes(&full, "small.npz").is_ok());
        for cut in 0..full.len() {
            match Weights::from_bytes(&full[..cut], "small.npz") {
                Err(WeightError::Format { .. } | WeightError::Truncated { .. }) => {}
                other => panic!("{method:?} cut at {cut}: {other:?}"),
            }
        }
    }
}

/// Loads, then asks for every tensor by a shape none has, returning the first error that is not
/// about the shape: an .npz member's header is read only when its tensor is asked for.
fn load_and_ask(bytes: &[u8], origin: &str) -> Result<Weights, WeightError> {
    let weights = Weights::from_bytes(bytes, origin)?;
    let names: Vec<String> = weights.names().map(String::from).collect();
    for name in names {
        if let Err(e @ (WeightError::Format { .. } | WeightError::Truncated { .. })) =
            weights.check(&name, &[usize::MAX])
        {
            return Err(e);
        }
    }
    Ok(weights)
}

/// Issue 17: an .npz member's header is read only when its tensor is asked for, so members the
/// model does not use cost nothing, however slow their headers would be to read (the worst the
/// header's guards let through, a thousand times) or however broken.
#[test]
fn npz_headers_are_read_only_for_the_tensors_asked_for() {
    let data: Vec<u8> = [1.5f32, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let deep = format!("{}1{}", "{".repeat(4), "}".repeat(4));
    let slow = format!("{{'descr': [{}], 'fortran_order': False, 'shape': (), }}", vec![deep; 100].join(", "));
    let mut members = vec![("w.npy".to_string(), npy_bytes("<f4", false, &[2], &data, 1))];
    for i in 0..1000 {
        members.push((format!("slow{i:04}.npy"), npy_with_header(&slow, &[], 1)));
    }
    members.push(("broken.npy".to_string(), b"\x93NUMPZ".to_vec()));
    let members: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let weights = Weights::from_bytes(&npz_bytes(&members, CompressionMethod::Stored), "many.npz").unwrap();
    assert_eq!(weights.names().count(), 1002);
    assert_eq!(weights.get("w", &[2]).unwrap().data, vec![1.5, 2.5]);
    let summary = format!("{weights:?}");
    assert_eq!(summary.matches("header not read yet").count(), 1001, "{summary}");
    let err = weights.check("broken", &[2]).unwrap_err().to_string();
    assert!(err.contains("member `broken.npy`"), "{err}");
}

/// Every prefix of a real `torch.save` checkpoint (tests/fixtures/torch, TransformerLens's state
/// dict, and views of shared storages) is refused as truncated or corrupt, never read, never a
/// panic; from memory and from the file.
#[test]
fn every_truncation_of_a_torch_checkpoint_is_an_error() {
    let dir = std::env::temp_dir().join(format!("pathc-torch-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["model_f32.pt", "views.pt"] {
        let full = std::fs::read(fixture("torch").join(name)).unwrap();
        assert!(Weights::from_bytes(&full, name).is_ok());
        for cut in 0..full.len() {
            match Weights::from_bytes(&full[..cut], name) {
                Err(WeightError::Format { .. } | WeightError::Truncated { .. }) => {}
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
            if cut % 97 == 0 {
                let file = dir.join(name);
                std::fs::write(&file, &full[..cut]).unwrap();
                match Weights::load(&file) {
                    Err(WeightError::Format { .. } | WeightError::Truncated { .. }) => {}
                    other => panic!("{name} cut at {cut}, from the file: {other:?}"),
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_npy_members_say_how_short() {
    let data: Vec<u8> = EXACT.iter().flat_map(|v| v.to_le_bytes()).collect();
    let full = npy_bytes("<f8", false, &[3, 4], &data, 1);
    let header_end = full.len() - 96;
    for cut in 0..full.len() {
        let npz = npz_bytes(&[("w.npy", full[..cut].to_vec())], CompressionMethod::Stored);
        let err = load_and_ask(&npz, "t.npz").unwrap_err();
        assert!(matches!(err, WeightError::Truncated { .. }), "{cut}: {err:?}");
        let message = err.to_string();
        assert!(message.starts_with("t.npz is truncated: member `w.npy` ends inside "), "{message}");
        if cut >= header_end {
            assert!(message
                .contains(&format!("needs 96 bytes after the {header_end}-byte header, found {}", cut - header_end)));
        }
    }
}

#[test]
fn corrupt_files_are_format_errors_that_say_what_is_wrong() {
    let good = small_safetensors();
    let mut bad_json = good.clone();
    bad_json[8 + 5] = b'#';
    let mut trailing = good.clone();
    trailing.extend([0, 0, 0, 0]);
    let mut huge_length = good.clone();
    huge_length[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut not_utf8 = good.clone();
    not_utf8[8 + 2] = 0xff;
    let f32s = |n: usize| vec![0u8; 4 * n];
    let stored = CompressionMethod::Stored;
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    // A stored member with its last data byte changed: the CRC no longer matches.
    let member = npy_bytes("<f4", false, &[2], &data, 1);
    let mut corrupt_member = npz_bytes(&[("w.npy", member.clone())], stored);
    let at = corrupt_member.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + member.len() - 1;
    corrupt_member[at] ^= 0x55;
    // A deflated member with a byte in the middle of its compressed stream changed.
    let noisy: Vec<u8> = (0..1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    let mut corrupt_deflated =
        npz_bytes(&[("w.npy", npy_bytes("|u1", false, &[1024], &noisy, 1))], CompressionMethod::Deflated);
    // The local header is 30 bytes plus the name; the compressed stream follows.
    corrupt_deflated[30 + 5 + 40] ^= 0xff;

    // (what, bytes, origin, words the message must contain)
    let cases: Vec<(&str, Vec<u8>, &str, &[&str])> = vec![
        (
            "garbage",
            b"this is not a weights file at all".to_vec(),
            "model.safetensors",
            &["unknown format", "74 68 69 73"],
        ),
        ("garbage, short", b"junk".to_vec(), "junk.bin", &["unknown format"]),
        ("empty", vec![], "model.npz", &["empty"]),
        ("bad JSON", bad_json, "m.safetensors", &["header is not valid JSON"]),
        ("header not UTF-8", not_utf8, "m.safetensors", &["not UTF-8"]),
        ("trailing bytes", trailing, "m.safetensors", &["4 byte(s) after the last tensor"]),
        ("huge header length", huge_length, "m.safetensors", &["header length is 18446744073709551615 bytes"]),
        (
            "header is a list",
            raw_safetensors("{}", &[]).into_iter().take(8).chain(*b"[1, 2]").collect(),
            "m",
            &["unknown format"],
        ),
        ("entry not an object", raw_safetensors("{\"a\": 1} ", &[]), "m", &["tensor `a` has a bad header entry"]),
        (
            "unknown dtype",
            raw_safetensors(r#"{"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}"#, &f32s(1)),
            "m",
            &["tensor `w` has a bad header entry", "F12"],
        ),
        (
            "shape disagrees with offsets",
            raw_safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1000]}}"#, &f32s(2)),
            "m",
            &["tensor `w`", "needs 8 bytes", "span 1000 bytes"],
        ),
        (
            "reversed offsets",
            raw_safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, &f32s(2)),
            "m",
            &["tensor `w`", "negative range"],
        ),
        (
            "shape overflows",
            raw_safetensors(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
                &f32s(1),
            ),
            "m",
            &["tensor `w`", "no valid size"],
        ),
        (
            "gap between tensors",
            raw_safetensors(
                concat!(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#,
                    r#""b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
                ),
                &f32s(3),
            ),
            "m",
            &["tensor `b` has invalid data_offsets"],
        ),
        (
            "overlapping tensors",
            raw_safetensors(
                concat!(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
                    r#""b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
                ),
                &f32s(2),
            ),
            "m",
            &["invalid data_offsets"],
        ),
        ("single .npy", npy_bytes("<f4", false, &[2], &data, 1), "w.npy", &["single .npy array"]),
        (
            "zip cut to its magic",
            b"PK\x03\x04 and then nothing useful".to_vec(),
            "m.npz",
            &["not a readable zip archive"],
        ),
        (
            "npz member not .npy",
            npz_bytes(&[("notes.txt", b"hello".to_vec())], stored),
            "m.npz",
            &["member `notes.txt` is not a .npy array"],
        ),
        (
            "npz member bad magic",
            npz_bytes(&[("w.npy", b"\x93NUMPZ\x01\x00".to_vec())], stored),
            "m.npz",
            &["member `w.npy`", "\\x93NUMPY"],
        ),
        (
            "npy version 9",
            npz_bytes(&[("w.npy", b"\x93NUMPY\x09\x00\x00\x00".to_vec())], stored),
            "m.npz",
            &["member `w.npy`", "version 9.0 is not supported"],
        ),
        (
            "npy header not a dict",
            npz_bytes(&[("w.npy", npy_with_header("['<f4', False, (2,)]", &data, 1))], stored),
            "m.npz",
            &["member `w.npy`", "not a Python dict"],
        ),
        (
            "npy header syntax",
            npz_bytes(
                &[("w.npy", npy_with_header("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}", &data, 1))],
                stored,
            ),
            "m.npz",
            &["member `w.npy`", "expected True, False or None", "found `M`"],
        ),
        (
            "npy header unterminated",
            npz_bytes(&[("w.npy", npy_with_header("{'descr': '<f4', 'shape': (2,", &data, 1))], stored),
            "m.npz",
            &["member `w.npy`", "malformed"],
        ),
        (
            "npy header nests deeply",
            npz_bytes(&[("w.npy", npy_with_header(&"(".repeat(5000), &data, 2))], stored),
            "m.npz",
            &["member `w.npy`", "nests too deeply"],
        ),
        (
            "npy header lacks shape",
            npz_bytes(&[("w.npy", npy_with_header("{'descr': '<f4', 'fortran_order': False}", &data, 1))], stored),
            "m.npz",
            &["member `w.npy`", "no 'shape'"],
        ),
        (
            "npy shape not ints",
            npz_bytes(
                &[("w.npy", npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': ('2',)}", &data, 1))],
                stored,
            ),
            "m.npz",
            &["member `w.npy`", "'shape' holds '2'"],
        ),
        (
            "npy shape overflows",
            npz_bytes(&[("w.npy", npy_bytes("<f4", false, &[usize::MAX, 2], &data, 1))], stored),
            "m.npz",
            &["member `w.npy`", "too large"],
        ),
        (
            "npy number overflows",
            npz_bytes(
                &[(
                    "w.npy",
                    npy_with_header(
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
                        &data,
                        1,
                    ),
                )],
                stored,
            ),
            "m.npz",
            &["member `w.npy`", "too large"],
        ),
        (
            "npy trailing data",
            npz_bytes(&[("w.npy", npy_bytes("<f4", false, &[1], &data, 1))], stored),
            "m.npz",
            &["member `w.npy`", "4 byte(s) follow the data"],
        ),
    ];
    // Issue 17 (8): an .npz member is decompressed only when its tensor is asked for, so a
    // corrupt member's data (its CRC) is an error then, naming the member.
    for (what, bytes, shape, word) in [
        ("npz member CRC", corrupt_member, [2], "member `w.npy` is corrupt"),
        ("npz deflated member", corrupt_deflated, [1024], "w.npy"),
    ] {
        // The header too may lie in the corrupt part: then loading already says so.
        let err = match Weights::from_bytes(&bytes, "m.npz") {
            Ok(weights) => weights.get("w", &shape).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(word), "{what}: {err}");
    }
    for (what, bytes, origin, words) in cases {
        let err = match load_and_ask(&bytes, origin) {
            Ok(_) => panic!("{what}: loaded"),
            Err(err) => err,
        };
        assert!(matches!(&err, WeightError::Format { origin: o, .. } if o == origin), "{what}: {err:?}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("{origin} is not a valid weights file: ")), "{what}: {message}");
        for word in words {
            assert!(message.contains(word), "{what}: {message:?} lacks {word:?}");
        }
    }
}

#[test]
fn headers_claiming_data_past_the_end_are_truncation() {
    let header = concat!(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#,
        r#""w":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}}"#
    );
    let bytes = raw_safetensors(header, &[0; 12]);
    let header_end = 8 + header.len();
    let err = Weights::from_bytes(&bytes, "past.safetensors").unwrap_err();
    assert!(matches!(err, WeightError::Truncated { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "past.safetensors is truncated: tensor `w`'s data ends at byte {} of the file (offset 20 after the \
             {header_end}-byte header), but the file has only {} bytes",
            header_end + 20,
            header_end + 12
        )
    );
    // An offset near usize::MAX cannot overflow the arithmetic.
    let max = usize::MAX;
    let header = format!(r#"{{"w":{{"dtype":"U8","shape":[{}],"data_offsets":[1,{max}]}}}}"#, max - 1);
    let err = Weights::from_bytes(&raw_safetensors(&header, &[0; 4]), "past.safetensors").unwrap_err();
    assert!(matches!(err, WeightError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("offset {max} after the")), "{err}");
}

#[test]
fn unreadable_paths_are_io_errors_naming_the_path() {
    let path = fixture("no/such/model.safetensors");
    let err = Weights::load(&path).unwrap_err();
    assert!(matches!(&err, WeightError::Io { path: p, source } if *p == path.display().to_string()
        && source.kind() == std::io::ErrorKind::NotFound));
    assert!(err.to_string().starts_with(&format!("cannot read {}: ", path.display())), "{err}");
    // A directory is not a file either.
    let dir = fixture("attn1");
    assert!(matches!(Weights::load(&dir), Err(WeightError::Io { .. })));
}

#[test]
fn flipping_any_byte_never_panics() {
    let members = [
        ("a.npy", npy_bytes("<f4", true, &[2, 2], &encode(Dtype::F32, &[1.0, 2.0, 3.0, 4.0]), 1)),
        ("b.npy", npy_bytes("|b1", false, &[2], &[1, 0], 1)),
    ];
    let files = [
        ("s.safetensors", small_safetensors()),
        ("stored.npz", npz_bytes(&members, CompressionMethod::Stored)),
        ("deflated.npz", npz_bytes(&members, CompressionMethod::Deflated)),
    ];
    for (origin, good) in files {
        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                if let Ok(weights) = Weights::from_bytes(&bad, origin) {
                    for name in weights.names() {
                        let _ = weights.get(name, &[2, 2]);
                    }
                }
            }
        }
    }
}

/// Issue 17 (8): a member the model never asks for is not decompressed: a deflated .npz whose
/// second member inflates to 64 MB of zeros loads by reading its header only, and the tensor
/// that is used reads as usual. (Bytes inflated are bounded by what the shape implies.)
#[test]
fn unused_npz_members_are_not_decompressed() {
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let big = vec![0u8; 64 << 20];
    let npz = npz_bytes(
        &[
            ("w.npy", npy_bytes("<f8", false, &[2], &data, 1)),
            ("bomb.npy", npy_bytes("|u1", false, &[64 << 20], &big, 1)),
        ],
        CompressionMethod::Deflated,
    );
    assert!(npz.len() < 1 << 20, "the archive is small: {}", npz.len());
    let weights = Weights::from_bytes(&npz, "bomb.npz").unwrap();
    assert!(weights.contains("bomb"));
    assert_eq!(weights.get("w", &[2]).unwrap().data, [1.0, 2.0]);
}

/// Issue 17 (9): a FIFO (or `<(cat W)`) is refused at once, saying a regular file is needed.
#[test]
fn non_seekable_weights_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("pathc-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("w.safetensors");
    if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        let err = Weights::load(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `rows` and `columns` read only blocks inside the tensor: a block past its end (or whose end
/// overflows) is `WeightError::OutOfRange`, naming the tensor, the block and the shape, whatever
/// the way the tensor is held — in memory (`from_bytes`), left in a safetensors file (where the
/// bytes after it are another tensor's, which were once returned silently) or in an .npz
/// archive; blocks inside read as before, the empty block at the end included.
#[test]
fn blocks_outside_a_tensor_are_refused_naming_tensor_range_and_shape() {
    let a: Vec<f64> = (0..6).map(f64::from).collect();
    let bytes = safetensors_bytes(&[
        ("a", Dtype::F32, vec![2, 3], encode(Dtype::F32, &a)),
        ("b", Dtype::F32, vec![4], encode(Dtype::F32, &[10.0, 11.0, 12.0, 13.0])),
    ]);
    let dir = std::env::temp_dir().join(format!("pathc-blocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.safetensors");
    std::fs::write(&file, &bytes).unwrap();
    let data: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    let npz = npz_bytes(&[("a.npy", npy_bytes("<f8", false, &[2, 3], &data, 1))], CompressionMethod::Stored);
    let held = [
        ("in memory", Weights::from_bytes(&bytes, "w.safetensors").unwrap()),
        ("in the file", Weights::load(&file).unwrap()),
        ("in an archive", Weights::from_bytes(&npz, "w.npz").unwrap()),
    ];
    for (how, w) in &held {
        assert_eq!(w.rows("a", [2, 3], 1, 1).unwrap(), [3.0, 4.0, 5.0], "{how}");
        assert_eq!(w.rows("a", [2, 3], 2, 0).unwrap(), Vec::<f64>::new(), "{how}");
        assert_eq!(w.columns("a", [2, 3], 1, 2).unwrap(), [1.0, 2.0, 4.0, 5.0], "{how}");
        assert_eq!(w.columns("a", [2, 3], 3, 0).unwrap(), Vec::<f64>::new(), "{how}");
        let cases = [
            (w.rows("a", [2, 3], 1, 2), "rows 1..3 are out of range (it has 2 rows)"),
            (w.rows("a", [2, 3], 3, 0), "rows 3..3 are out of range (it has 2 rows)"),
            (w.columns("a", [2, 3], 2, 2), "columns 2..4 are out of range (it has 3 columns)"),
            (w.columns("a", [2, 3], 4, 0), "columns 4..4 are out of range (it has 3 columns)"),
            (
                w.rows("a", [2, 3], usize::MAX, 2),
                "rows 18446744073709551615..18446744073709551617 are out of range (it has 2 rows)",
            ),
        ];
        for (result, says) in cases {
            match result {
                Err(e @ WeightError::OutOfRange { .. }) => {
                    assert_eq!(e.to_string(), format!("tensor `a` has shape [2, 3]: {says}"), "{how}")
                }
                other => panic!("{how}: {says}: {other:?}"),
            }
        }
        // The shape is still checked first.
        assert!(matches!(w.rows("a", [3, 2], 5, 1), Err(WeightError::Shape { .. })), "{how}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `tensors` (name, dtype, shape, bytes) as a safetensors file `w.safetensors` in a new
/// temporary directory named after `what`: the directory, the file, the file's bytes.
fn safetensors_file(
    what: &str,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let named: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone())).collect();
    let bytes = safetensors_bytes(&named);
    let dir = std::env::temp_dir().join(format!("pathc-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.safetensors");
    std::fs::write(&file, &bytes).unwrap();
    (dir, file, bytes)
}

/// `read_f32` is `read` without the `f64` copy where the file holds the tensor contiguously in a
/// dtype `f32` holds exactly (F32, F16, BF16): the same values; `None` for F64 and for tensors in
/// memory; a NaN reported as `read` reports it (name and full index), as `rows_f32` does for its
/// block (the index counted from the tensor's first row, not the block's).
#[test]
fn read_f32_gives_reads_values_where_the_file_holds_them_exactly() {
    let values: Vec<f64> = (0..12).map(|i| f64::from(i) * 0.25 - 1.0).collect();
    let mut bad = values.clone();
    bad[7] = f64::NAN;
    let shape = vec![2, 3, 2];
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64]
        .into_iter()
        .map(|dtype| (format!("{dtype}"), dtype, shape.clone(), encode(dtype, &values)))
        .collect();
    tensors.push(("bad".into(), Dtype::F16, shape.clone(), encode(Dtype::F16, &bad)));
    let (dir, file, bytes) = safetensors_file("read-f32", &tensors);
    let w = Weights::load(&file).unwrap();
    for dtype in ["F32", "F16", "BF16"] {
        let got = w.read_f32(dtype, &shape).unwrap().unwrap_or_else(|| panic!("{dtype}: None"));
        let want = w.read(dtype, &shape).unwrap();
        assert_eq!(got.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), want.to_vec(), "{dtype}");
        assert_eq!(want.to_vec(), values, "{dtype}");
    }
    assert_eq!(w.read_f32("F64", &shape).unwrap(), None);
    let in_memory = Weights::from_bytes(&bytes, "w.safetensors").unwrap();
    assert_eq!(in_memory.read_f32("F32", &shape).unwrap(), None);
    assert!(matches!(w.read_f32("F32", &[12]), Err(WeightError::Shape { .. })));
    let (whole, of_read) = (w.read_f32("bad", &shape).unwrap_err(), w.read("bad", &shape).unwrap_err());
    assert_eq!(whole.to_string(), of_read.to_string());
    assert_eq!(whole.to_string(), "tensor `bad` holds NaN at [1, 0, 1]");
    let bad_2d = safetensors_bytes(&[("m", Dtype::F32, vec![6, 2], encode(Dtype::F32, &bad))]);
    std::fs::write(&file, &bad_2d).unwrap();
    let w = Weights::load(&file).unwrap();
    assert_eq!(w.rows_f32("m", [6, 2], 0, 3).unwrap().unwrap().len(), 6);
    assert_eq!(w.rows_f32("m", [6, 2], 2, 3).unwrap_err().to_string(), "tensor `m` holds NaN at [3, 1]");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `columns_f32` and `rows_f32` read a block as `columns` and `rows` do, whether the file's
/// bytes are this machine's `f32`s (read straight into place) or decoded (F16, BF16); a NaN is
/// reported with its full index; a file cut short after its header was read is an I/O error
/// naming it, not a panic or a block of zeros.
#[test]
fn f32_blocks_are_the_f64_blocks_whichever_way_they_are_read() {
    let values: Vec<f64> = (0..40).map(|i| f64::from(i) * 0.125 - 2.0).collect();
    let mut bad = values.clone();
    bad[3 * 10 + 3] = f64::NAN; // row 3, column 3 of a 4 × 10 matrix
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = [Dtype::F32, Dtype::F16, Dtype::BF16]
        .into_iter()
        .map(|dtype| (format!("{dtype}"), dtype, vec![4, 10], encode(dtype, &values)))
        .collect();
    tensors.push(("bad".into(), Dtype::F32, vec![4, 10], encode(Dtype::F32, &bad)));
    let (dir, file, bytes) = safetensors_file("f32-blocks", &tensors);
    let w = Weights::load(&file).unwrap();
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    for dtype in ["F32", "F16", "BF16"] {
        for (start, n) in [(0, 10), (3, 4), (9, 1), (5, 0)] {
            let got = widen(w.columns_f32(dtype, [4, 10], start, n).unwrap().expect("stored as f32 exactly"));
            assert_eq!(got, w.columns(dtype, [4, 10], start, n).unwrap(), "{dtype} columns {start}+{n}");
        }
        for (start, n) in [(0, 4), (1, 2), (3, 1)] {
            let got = widen(w.rows_f32(dtype, [4, 10], start, n).unwrap().expect("stored as f32 exactly"));
            assert_eq!(got, w.rows(dtype, [4, 10], start, n).unwrap(), "{dtype} rows {start}+{n}");
        }
    }
    assert_eq!(w.columns_f32("bad", [4, 10], 2, 3).unwrap_err().to_string(), "tensor `bad` holds NaN at [3, 3]");
    assert_eq!(w.columns_f32("bad", [4, 10], 4, 6).unwrap().map(|v| v.len()), Some(24));
    // Cut the file short after loading it: its header (8 bytes of length, then the JSON) alone.
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    std::fs::write(&file, &bytes[..header]).unwrap();
    for err in [w.columns_f32("bad", [4, 10], 0, 10).unwrap_err(), w.rows_f32("bad", [4, 10], 2, 2).unwrap_err()] {
        assert!(matches!(err, WeightError::Io { .. }), "{err}");
        assert!(err.to_string().contains("w.safetensors"), "{err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
