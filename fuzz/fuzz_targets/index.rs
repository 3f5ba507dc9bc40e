//! `index::decode` on arbitrary bytes. What it accepts is canonical: it
//! encodes back to exactly the input. A `MasterIndex` built from it finds
//! every listed blob, at an entry and pack that the file lists for it.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use vmstash_fuzz::assert_rejected;
use vmstash_repo::index::{self, IndexedPack, MasterIndex};

fuzz_target!(|data: &[u8]| {
    match index::decode(data, "i") {
        Ok(packs) => {
            assert_eq!(index::encode(&packs), data, "encoding is not canonical");
            check_lookups(&packs);
        }
        Err(e) => assert_rejected(&e),
    }
});

fn check_lookups(packs: &[IndexedPack]) {
    let mi = MasterIndex::build([packs.to_vec()]);
    let ids: BTreeSet<_> = packs.iter().flat_map(|p| &p.blobs).map(|b| b.id).collect();
    assert_eq!(mi.len(), ids.len(), "one index entry per distinct blob");
    assert_eq!(mi.iter().count(), ids.len());
    let listed: BTreeSet<_> = packs.iter().map(|p| p.id).collect();
    assert!(mi.packs().all(|p| listed.contains(p)));
    for id in &ids {
        let loc = mi.find(id).expect("an indexed blob is found");
        assert!(mi.contains(id));
        assert_eq!(loc.entry.id, *id);
        assert!(
            packs
                .iter()
                .any(|p| p.id == *loc.pack && p.blobs.contains(&loc.entry)),
            "found {loc:?}, which no pack lists"
        );
        // A pack listed twice keeps the salt of its first listing.
        let first = packs
            .iter()
            .find(|p| p.id == *loc.pack)
            .expect("listed pack");
        assert_eq!(loc.salt, &first.salt);
    }
}
