//! Repairs of a damaged repository: `repair index` (the index rebuilt from the packs' headers),
//! `repair packs` (the readable blobs of damaged packs salvaged, the packs dropped), and
//! `repair snapshots` (snapshots whose chunks are gone rewritten to record exactly which bytes
//! are lost). The caller holds an exclusive lock for each.

mod index;
mod packs;
mod snapshots;

pub use index::{rebuild_index, IndexRebuild};
pub use packs::{salvage_packs, PackSalvage};
pub use snapshots::{repair_snapshots, RepairedSnapshot, SnapshotRepair};
