//! A job's record on storage: `status.json` in the job's folder, written
//! (tmp + rename) on every change this pod makes, read back when a pod
//! adopts a job or restarts ([`JobManager::resume_from_storage`]).
//!
//! It writes nothing but `status.json` and reads nothing but it and
//! `job.json`; it never deletes a file and never decides a status.

use super::model::JobRecord;
use super::{now_ms, JobEntry, JobManager};
use crate::storage::{read_plan, JobLayout, StorageError};
use crate::sync::{lock, write};
use crate::JobId;
use std::sync::Arc;

impl JobManager {
    /// Writes the record to the job's `status.json`.
    pub(super) fn persist(&self, record: &JobRecord) -> Result<(), StorageError> {
        let layout = self.storage.job(record.id);
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        layout.write_atomic(&layout.status_file(), &bytes)
    }

    /// Changes the record, stamps it and saves it (a failed save is logged:
    /// the job goes on, a restart finds the previous record).
    pub(super) fn update(&self, entry: &JobEntry, change: impl FnOnce(&mut JobRecord)) {
        let record = {
            let mut record = lock(&entry.record);
            change(&mut record);
            record.updated_at_ms = now_ms();
            record.clone()
        };
        if let Err(err) = self.persist(&record) {
            tracing::warn!(job = %record.id, "saving job status: {err}");
        }
    }

    /// The job's record as saved on storage, if readable.
    pub(super) fn stored_record(&self, id: JobId) -> Option<JobRecord> {
        let path = self.storage.job(id).status_file();
        std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    /// Loads every job folder's `status.json`; unfinished jobs start again
    /// (units already on storage are skipped).
    pub fn resume_from_storage(self: &Arc<Self>) -> Result<usize, StorageError> {
        let dir = self.storage.jobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StorageError::new("listing", &dir, e)),
        };
        let mut resumed = 0;
        for dir_entry in entries.flatten() {
            let known = dir_entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<JobId>().ok())
                .is_some_and(|id| self.entry(id).is_some());
            if known {
                continue;
            }
            let path = JobLayout::new(dir_entry.path()).status_file();
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let record: JobRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!("skipping {}: {err}", path.display());
                    continue;
                }
            };
            let unfinished = !record.status.is_terminal();
            let entry = JobEntry::new(record.clone(), false);
            if let Ok(Some(plan)) = read_plan(&self.storage.job(record.id)) {
                *lock(&entry.plan) = Some(Arc::new(plan));
            }
            // Inserted only if still unknown: the cluster's resync scans
            // storage too, and a job must start here once.
            match write(&self.jobs).entry(record.id) {
                std::collections::hash_map::Entry::Occupied(_) => continue,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(entry.clone());
                }
            }
            if unfinished {
                resumed += 1;
                self.spawn_start(entry);
            }
        }
        Ok(resumed)
    }
}
