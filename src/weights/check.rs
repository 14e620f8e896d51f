//! The checks every format's tensors get, in one place: NaN and ±inf located with their index,
//! and the similar names suggested for a tensor that is missing. (The shape check is
//! `Weights::entry`, which every way of reading a tensor goes through.)

use super::WeightError;

/// The first element (f64, or f32 read as stored) that is NaN or infinite, and its value.
/// Blocks are tested first with a fold that has no early exit, which the compiler vectorises
/// (`find` goes element by element: about 1 % of `pathc stats`); only a block that fails is
/// searched for its first such element.
pub(super) fn first_non_finite<T: Copy + Into<f64>>(data: &[T]) -> Option<(usize, f64)> {
    const BLOCK: usize = 256;
    data.chunks(BLOCK).enumerate().find_map(|(b, block)| {
        if block.iter().fold(true, |finite, &v| finite & v.into().is_finite()) {
            return None;
        }
        let (i, v) = block.iter().map(|&v| v.into()).enumerate().find(|(_, v): &(usize, f64)| !v.is_finite())?;
        Some((b * BLOCK + i, v))
    })
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

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    /// The first NaN or infinity wherever it falls against the blocks the check folds over
    /// (256 elements), with a later one after it; none in a finite slice.
    #[test]
    fn first_non_finite_finds_the_first_across_blocks() {
        for len in [0usize, 1, 255, 256, 257, 1000] {
            let finite: Vec<f64> = (0..len).map(|i| i as f64 - 3.5).collect();
            assert_eq!(first_non_finite(&finite), None);
            for at in [0, 1, 254, 255, 256, 257, 511, 512, 999].into_iter().filter(|&at| at < len) {
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let mut data = finite.clone();
                    data[at] = bad;
                    if at + 300 < len {
                        data[at + 300] = f64::NAN;
                    }
                    let (i, v) = first_non_finite(&data).expect("a non-finite element");
                    assert_eq!(i, at);
                    assert_eq!(v.to_bits(), bad.to_bits());
                    let single: Vec<f32> = data.iter().map(|&x| x as f32).collect();
                    assert_eq!(first_non_finite(&single).map(|(i, _)| i), Some(at));
                }
            }
        }
    }
}
