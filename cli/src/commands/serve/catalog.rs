//! The repositories' contents for the API: their snapshots (as `vmstash snapshots --json`
//! shows them) and statistics (as `vmstash stats --json`). Each repository is opened once
//! (its key derived once) and kept.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use vmstash_repo::Repository;
use vmstash_serve::api::Catalog;
use vmstash_serve::config::RepositoryDef;

use super::global;
use crate::commands::snapshots::snapshot_json;
use crate::commands::stats::measure;
use crate::output::describe;
use crate::repo;

/// The catalog of the configured repositories, each opened on first use.
#[derive(Default)]
pub struct RepoCatalog {
    open: Mutex<HashMap<String, Repository>>,
}

impl RepoCatalog {
    fn with_repo<T>(
        &self,
        def: &RepositoryDef,
        f: impl FnOnce(&Repository) -> anyhow::Result<T>,
    ) -> Result<T, String> {
        let g = global::for_repository(def, None);
        let cached = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&def.name)
            .cloned();
        let repo = match cached {
            Some(r) => r,
            None => {
                let r = repo::open(&g).map_err(|e| describe(&e))?;
                self.open
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(def.name.clone(), r.clone());
                r
            }
        };
        let _lock = repo::lock_for_reading(&g, &repo, "serve").map_err(|e| describe(&e))?;
        f(&repo).map_err(|e| describe(&e))
    }
}

impl Catalog for RepoCatalog {
    fn snapshots(
        &self,
        repository: &RepositoryDef,
        vm: Option<&str>,
        tag: Option<&str>,
    ) -> Result<Vec<Value>, String> {
        self.with_repo(repository, |repo| {
            let mut snapshots = repo::snapshots_warning_of_damage(repo)?.0.snapshots;
            snapshots.retain(|(_, m)| {
                vm.is_none_or(|v| m.name == v) && tag.is_none_or(|t| m.tags.iter().any(|x| x == t))
            });
            snapshots.sort_by(|x, y| y.1.time.cmp(&x.1.time));
            Ok(snapshots
                .iter()
                .map(|(id, m)| snapshot_json(id, m))
                .collect())
        })
    }

    fn stats(&self, repository: &RepositoryDef) -> Result<Value, String> {
        self.with_repo(repository, measure)
    }
}
