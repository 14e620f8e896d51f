//! Parsing the positions (`--pos`) and heads (`--head`, `--through`) given on the command line.

use super::failure::Failure;

/// A position among `n` tokens: a number, `last`, or `all` (`None`).
pub fn parse_position(pos: &str, n: usize) -> Result<Option<usize>, Failure> {
    match pos {
        "all" => Ok(None),
        "last" => Ok(Some(n - 1)),
        p => match p.parse::<usize>() {
            Ok(p) if p < n => Ok(Some(p)),
            Ok(p) => Err(Failure::BadInput(format!("error: position {p} is out of range for {n} tokens"))),
            Err(_) => Err(Failure::BadInput(format!("error: --pos takes a number, `last` or `all`, not `{p}`"))),
        },
    }
}

/// A tolerance (`check --tol`): a finite number ≥ 0. NaN would make every comparison false and a
/// negative one could never pass, so both are refused when the arguments are parsed.
pub fn parse_tolerance(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("a tolerance is a finite number ≥ 0, not {t}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `L1H2` → (1, 2).
pub fn parse_head(text: &str) -> Option<(usize, usize)> {
    let (layer, head) = text.strip_prefix('L')?.split_once('H')?;
    Some((layer.parse().ok()?, head.parse().ok()?))
}
