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

/// `L1H2` → (1, 2).
pub fn parse_head(text: &str) -> Option<(usize, usize)> {
    let (layer, head) = text.strip_prefix('L')?.split_once('H')?;
    Some((layer.parse().ok()?, head.parse().ok()?))
}
