//! The checks every format's tensors get, in one place: NaN and ±inf located with their index,
//! and the similar names suggested for a tensor that is missing. (The shape check is
//! `Weights::entry`, which every way of reading a tensor goes through.)

use super::WeightError;

/// The first element (f64, or f32 read as stored) that is NaN or infinite, and its value.
pub(super) fn first_non_finite<T: Copy + Into<f64>>(data: &[T]) -> Option<(usize, f64)> {
    data.iter().map(|&v| v.into()).enumerate().find(|(_, v): &(usize, f64)| !v.is_finite())
}

/// Refuses a block holding NaN or an infinity, naming the tensor and the element's index
/// (`index` maps a position in `data` to the tensor's multi-index).
pub(super) fn check_finite<T: Copy + Into<f64>>(
    name: &str,
    data: &[T],
    index: impl Fn(usize) -> Vec<usize>,
) -> Result<(), WeightError> {
    match first_non_finite(data) {
        Some((i, value)) => Err(WeightError::NonFinite { name: name.to_string(), index: index(i), value }),
        None => Ok(()),
    }
}

/// The row-major multi-index of flat position `flat` in `shape`.
pub(super) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *i = flat % dim;
            flat /= dim;
        }
    }
    index
}

/// Up to three existing names close to `wanted`: by edit distance, preferring names that end in
/// the same dotted component (`W_Q` for `blocks.1.attn.W_Q`), so a wrong layer number or a
/// missing prefix points at the tensors that were meant.
pub(super) fn similar_names<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let last = |s: &'a str| s.rsplit('.').next().unwrap_or(s);
    let wanted_last = wanted.rsplit('.').next().unwrap_or(wanted);
    let threshold = (wanted.chars().count() / 4).max(2);
    let mut scored: Vec<(usize, bool, &str)> = names
        .filter_map(|name| {
            let distance = edit_distance(wanted, name);
            let same_last = last(name) == wanted_last;
            (distance <= threshold || same_last).then_some((distance, !same_last, name))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, _, name)| name.to_string()).collect()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current.clear();
        current.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous.get(j).map_or(usize::MAX, |&d| d + usize::from(ca != cb));
            let delete = previous.get(j + 1).map_or(usize::MAX, |&d| d + 1);
            let insert = current.last().map_or(usize::MAX, |&d| d + 1);
            current.push(substitute.min(delete).min(insert));
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous.last().copied().unwrap_or(0)
}
