//! The partition-table parser on arbitrary disk contents: it finds partitions or refuses the
//! table, never panics, and every partition it returns lies inside the disk, starts after
//! sector 0 and is numbered from 1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::partition::partitions;

fuzz_target!(|data: &[u8]| {
    let size = u64::try_from(data.len()).unwrap_or(u64::MAX);
    let mut read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let start = usize::try_from(offset).map_err(|e| e.to_string())?;
        let end = start.saturating_add(len).min(data.len());
        Ok(data.get(start..end).unwrap_or_default().to_vec())
    };
    if let Ok(parts) = partitions(&mut read, size) {
        for p in parts {
            assert!(p.number >= 1);
            assert!(p.start >= 512);
            assert!(p.start.checked_add(p.len).is_some_and(|end| end <= size));
        }
    }
});
