//! The float dtypes we convert, and their conversion to `f64`, for every format.

use std::fmt;

use half::{bf16, f16};

/// A float element type: its format, and the byte order it is stored in (safetensors is always
/// little-endian; a `.npy` array may be either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Float {
    pub(super) format: FloatFormat,
    pub(super) little_endian: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FloatFormat {
    F16,
    BF16,
    F32,
    F64,
}

impl Float {
    pub(super) const fn little(format: FloatFormat) -> Float {
        Float { format, little_endian: true }
    }

    /// Bytes per element.
    pub(super) const fn size(self) -> usize {
        match self.format {
            FloatFormat::F16 | FloatFormat::BF16 => 2,
            FloatFormat::F32 => 4,
            FloatFormat::F64 => 8,
        }
    }
}

/// The name messages use, whatever the byte order: `F16`, `BF16`, `F32`, `F64`.
impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.format {
            FloatFormat::F16 => "F16",
            FloatFormat::BF16 => "BF16",
            FloatFormat::F32 => "F32",
            FloatFormat::F64 => "F64",
        })
    }
}

/// Elements of `dtype` as `f64` (exact: every one of these formats widens to `f64` exactly).
/// `data.len()` is a multiple of the element size (checked by the format modules).
pub(super) fn to_f64(dtype: Float, data: &[u8]) -> Vec<f64> {
    use FloatFormat::{BF16, F16, F32, F64};
    match (dtype.format, dtype.little_endian) {
        (F16, true) => decode::<2>(data, |b| f16::from_le_bytes(b).to_f64()),
        (F16, false) => decode::<2>(data, |b| f16::from_be_bytes(b).to_f64()),
        (BF16, true) => decode::<2>(data, |b| bf16::from_le_bytes(b).to_f64()),
        (BF16, false) => decode::<2>(data, |b| bf16::from_be_bytes(b).to_f64()),
        (F32, true) => decode::<4>(data, |b| f64::from(f32::from_le_bytes(b))),
        (F32, false) => decode::<4>(data, |b| f64::from(f32::from_be_bytes(b))),
        (F64, true) => decode::<8>(data, f64::from_le_bytes),
        (F64, false) => decode::<8>(data, f64::from_be_bytes),
    }
}

/// Whether every element of `dtype` is an `f32` exactly (F32, F16, BF16; not F64).
pub(super) fn to_f32_exact(dtype: Float) -> bool {
    dtype.format != FloatFormat::F64
}

/// Whether `dtype`'s bytes are this machine's `f32`s as they are (little-endian F32 on a
/// little-endian machine): read straight into them ([`super::Weights::read_f32_into`]).
pub(super) fn is_native_f32(dtype: Float) -> bool {
    dtype.format == FloatFormat::F32 && dtype.little_endian == cfg!(target_endian = "little")
}

/// Elements of `dtype` as `f32`, exact for the dtypes [`to_f32_exact`] accepts (others are not
/// passed here).
pub(super) fn to_f32(dtype: Float, data: &[u8]) -> Vec<f32> {
    use FloatFormat::{BF16, F16, F32, F64};
    match (dtype.format, dtype.little_endian) {
        (F16, true) => decode_as::<2, f32>(data, |b| f16::from_le_bytes(b).to_f32()),
        (F16, false) => decode_as::<2, f32>(data, |b| f16::from_be_bytes(b).to_f32()),
        (BF16, true) => decode_as::<2, f32>(data, |b| bf16::from_le_bytes(b).to_f32()),
        (BF16, false) => decode_as::<2, f32>(data, |b| bf16::from_be_bytes(b).to_f32()),
        (F32, true) => decode_as::<4, f32>(data, f32::from_le_bytes),
        (F32, false) => decode_as::<4, f32>(data, f32::from_be_bytes),
        (F64, _) => unreachable!("F64 is not read as f32 (to_f32_exact)"),
    }
}

/// Decodes fixed-size elements.
fn decode<const N: usize>(data: &[u8], convert: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    decode_as::<N, f64>(data, convert)
}

/// Decodes fixed-size elements into `T`.
fn decode_as<const N: usize, T>(data: &[u8], convert: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|chunk| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(chunk);
            convert(bytes)
        })
        .collect()
}
