//! The partition-table parser on arbitrary disk contents: it finds partitions or refuses the
//! table as damaged (never as unreadable: the disk is in memory, and reads at its end come back
//! short, as the mount's do), never panics, and every partition it returns lies inside the
//! disk, starts after sector 0 and is numbered from 1.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmstash_fuse::partition::{partitions, PartitionError};

fuzz_target!(|data: &[u8]| {
    let size = u64::try_from(data.len()).unwrap_or(u64::MAX);
    let mut read = |offset: u64, len: usize| -> Result<Vec<u8>, Arc<vmstash_repo::Error>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data.get(start..end).unwrap_or_default().to_vec())
    };
    match partitions(&mut read, size) {
        Ok(parts) => {
            for p in parts {
                assert!(p.number >= 1);
                assert!(p.start >= 512);
                assert!(p.start.checked_add(p.len).is_some_and(|end| end <= size));
            }
        }
        Err(e) => assert!(matches!(e, PartitionError::Corrupt(_)), "{e:?}"),
    }
});
