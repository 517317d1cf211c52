//! An error's chain of sources (what wraps what): walked to find a cause by type, and written
//! out whole for a log line.

use std::error::Error;

/// `e`, then what it wraps, then what that wraps, and so on.
pub fn sources<'a>(
    e: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&e| e.source())
}

/// `e` and what it wraps as one text, `: ` between, each part once (an error's own text often
/// includes its source's already).
pub fn text(e: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    for s in sources(e) {
        let part = s.to_string();
        if out.contains(&part) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn chains_are_written_once_each() {
        let io = || std::io::Error::other("refused");
        assert_eq!(text(&Repeats(io())), "outer: refused");
        assert_eq!(text(&Wraps(io())), "outer: refused");
        assert_eq!(sources(&Wraps(io())).count(), 2);
    }
}
