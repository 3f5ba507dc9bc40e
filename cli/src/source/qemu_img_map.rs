//! The data ranges `qemu-img map --output=json` reports for an image on the hypervisor: over
//! SFTP there is no SEEK_DATA, so this is how the CLI learns which ranges of a remote disk hold
//! data (see `vmstash_hashblocks::source::with_data_ranges`).

use std::ops::Range;

/// The ranges `qemu-img map --output=json` reports as not reading as
/// zero; `None` when the output is not what qemu-img prints.
pub(crate) fn parse_qemu_img_map(json: &str) -> Option<Vec<Range<u64>>> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    let mut out = Vec::new();
    for e in entries {
        let start = e.get("start")?.as_u64()?;
        let length = e.get("length")?.as_u64()?;
        let zero = e.get("zero")?.as_bool()?;
        if !zero {
            out.push(start..start.checked_add(length)?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_img_map() {
        let json = r#"[{ "start": 0, "length": 8388608, "depth": 0, "present": true, "zero": true, "data": false, "offset": 0},
{ "start": 8388608, "length": 4194304, "depth": 0, "present": true, "zero": false, "data": true, "offset": 8388608},
{ "start": 12582912, "length": 100, "depth": 1, "present": false, "zero": false, "data": false}]"#;
        assert_eq!(
            parse_qemu_img_map(json),
            Some(vec![8388608..12582912, 12582912..12583012])
        );
        assert_eq!(parse_qemu_img_map("garbage"), None);
        assert_eq!(parse_qemu_img_map(r#"[{"start": 1}]"#), None);
        assert_eq!(
            parse_qemu_img_map(r#"[{"start": 18446744073709551615, "length": 2, "zero": false}]"#),
            None
        );
    }
}
