//! Quantities users type: sizes (`500M`, `2GiB`) and percentages with up to two decimals
//! (`5`, `2.5`), for `check --read-data-subset`, `prune --max-unused`, chunk and cache sizes.

/// Parses a size: digits, then optionally a unit `B`, `K`/`KB`/`KiB`, `M…`, `G…` or `T…`
/// (powers of 1024, any case, spaces around it allowed). `None` for anything else or an
/// overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Parses a decimal with at most two decimals (`5`, `2.5`, `0.25`, `5.`) as hundredths; `None`
/// for anything else or an overflow.
pub fn parse_hundredths(s: &str) -> Option<u32> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || frac.len() > 2 || !digits(whole) || !digits(frac) {
        return None;
    }
    let frac: u32 = format!("{frac:0<2}").parse().ok()?;
    whole
        .parse::<u32>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("256KiB"), Some(256 << 10));
        assert_eq!(parse_size("500 MB"), Some(500 << 20));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("1b"), Some(1));
        assert_eq!(parse_size("0"), Some(0));
        for bad in [
            "",
            "kb",
            "5Q",
            "5iB",
            "1XB",
            "-1",
            "99999999999999T",
            "1.5G",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn hundredths() {
        assert_eq!(parse_hundredths("5"), Some(500));
        assert_eq!(parse_hundredths("2.5"), Some(250));
        assert_eq!(parse_hundredths("0.25"), Some(25));
        assert_eq!(parse_hundredths("5."), Some(500));
        for bad in ["", ".5", "1.234", "-1", "x", "5 ", "99999999"] {
            assert_eq!(parse_hundredths(bad), None, "{bad}");
        }
    }
}
