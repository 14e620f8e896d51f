//! Rotary positional embeddings as TransformerLens computes them (`calculate_sin_cos_rotary`,
//! `rotate_every_two`, `apply_rotary`), and the relative rotation between two positions.
//!
//! Pair `i` (of `D/2`) of a head's first `D` dimensions is rotated at position `p` by the angle
//! `p · base^(−2i/D)`. With `neox` the pair is dimensions `(i, i + D/2)`, with `gptj`
//! `(2i, 2i + 1)`. A row vector `q` at position `p` becomes `q · Rot(p)`, where `Rot(p)` is
//! block-diagonal in those pairs and the identity on the dimensions past `D`. Rotations compose:
//! `Rot(i) · Rot(j)ᵀ = Rot(i − j)`, so a score `q_i Rot(i) (k_j Rot(j))ᵀ = q_i Rot(i − j) k_jᵀ`
//! depends on the positions only through the offset `Δ = i − j` (query minus key).

use super::Matrix;
use crate::model::{Rotary, RotaryStyle};

/// The `D/2` rotated pairs of dimensions, as (first, second) indices: `second` takes
/// `first · sin` and `first` takes `−second · sin`.
fn pairs(rotary: &Rotary) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let half = rotary.dim as usize / 2;
    (0..half).map(move |i| match rotary.style {
        RotaryStyle::Neox => (i, i, i + half),
        RotaryStyle::Gptj => (i, 2 * i, 2 * i + 1),
    })
}

/// The angle of pair `i` at position (or offset) `p`: `p / base^(i / (D/2))`, computed as
/// TransformerLens computes it in float64.
fn angle(rotary: &Rotary, i: usize, p: f64) -> f64 {
    let half = (rotary.dim / 2) as f64;
    p / rotary.base.0.powf(i as f64 / half)
}

/// Rotates every row `p` of `m` (`[n, d_head]`, queries or keys) as the row at position `p`.
pub fn rotate_rows(m: &mut Matrix, rotary: &Rotary) {
    for p in 0..m.nrows() {
        for (i, a, b) in pairs(rotary) {
            let (sin, cos) = angle(rotary, i, p as f64).sin_cos();
            let (x, y) = (m[(p, a)], m[(p, b)]);
            m[(p, a)] = x * cos - y * sin;
            m[(p, b)] = y * cos + x * sin;
        }
    }
}

/// `Rot(Δ)` (`[d_head, d_head]`): what a row vector at position `Δ` is multiplied by; for a
/// score, the relative rotation between a query and a key `Δ` positions before it (any integer
/// offset, negative ones for keys after the query).
pub fn rotation(rotary: &Rotary, d_head: usize, offset: i64) -> Matrix {
    let mut r = Matrix::identity(d_head, d_head);
    for (i, a, b) in pairs(rotary) {
        let (sin, cos) = angle(rotary, i, offset as f64).sin_cos();
        // Row a of Rot: a ↦ a·cos + b·sin; row b: b ↦ b·cos − a·sin (the row-vector form of the
        // update in `rotate_rows`).
        r[(a, a)] = cos;
        r[(a, b)] = sin;
        r[(b, a)] = -sin;
        r[(b, b)] = cos;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Real;

    fn rotary(style: RotaryStyle) -> Rotary {
        Rotary { dim: 4, base: Real(100.0), style }
    }

    #[test]
    fn rows_rotate_by_the_rotation_of_their_position_and_rotations_compose() {
        for style in RotaryStyle::ALL {
            let r = rotary(style);
            let m = Matrix::from_fn(5, 6, |i, j| (i * 7 + j * 3) as f64 % 5.0 - 2.0);
            let mut rotated = m.clone();
            rotate_rows(&mut rotated, &r);
            for p in 0..5 {
                let expected = m.row(p) * rotation(&r, 6, p as i64);
                assert!((rotated.row(p) - expected).amax() < 1e-14);
            }
            for (i, j) in [(3, 1), (1, 3), (4, 4), (0, 2)] {
                let product = rotation(&r, 6, i) * rotation(&r, 6, j).transpose();
                assert!((product - rotation(&r, 6, i - j)).amax() < 1e-14);
            }
        }
    }
}
