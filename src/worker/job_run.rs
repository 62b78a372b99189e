//! One job the worker runs: its plan, its folder, its units' book, its
//! playlists' packager, the warnings its outputs earned and how it ended.
//! Shared by the slots, requests and notices of this pod; the job manager
//! and the CLI read its progress and warnings and wait for its outcome.

use super::schedule::JobPolicy;
use super::units::UnitBook;
use super::unseen::UnseenOutputs;
use super::{JobOptions, JobOutcome};
use crate::plan::{Plan, Unit};
use crate::playlists::{Availability, Packager};
use crate::storage::JobLayout;
use crate::sync::lock;
use crate::warning::{self, JobWarning};
use crate::JobId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A job the worker is running: its plan, its folder and its progress.
pub struct JobRun {
    pub plan: Arc<Plan>,
    pub layout: JobLayout,
    pub(super) options: JobOptions,
    /// Order among jobs of the same priority: older first.
    pub(super) sequence: u64,
    skipped: usize,
    /// Cancelled when the job is canceled or the worker shuts down.
    pub(super) cancel: CancellationToken,
    pub(super) packager: Packager,
    /// Serialises playlist updates so a later snapshot never loses to an
    /// earlier one.
    pub(super) publishing: tokio::sync::Mutex<()>,
    /// The master playlist plays (set once, by this pod's packager).
    pub(super) plays: AtomicBool,
    book: Mutex<UnitBook>,
    /// Units done elsewhere that this pod cannot see on storage yet.
    pub(super) unseen: UnseenOutputs,
    /// What this pod's outputs filled for a damaged source, and the plan's
    /// own warning (a cut-off source).
    warnings: Mutex<Vec<JobWarning>>,
    pub(super) outcome: watch::Sender<Option<JobOutcome>>,
}

impl JobRun {
    pub(super) fn new(
        plan: Arc<Plan>,
        layout: JobLayout,
        options: JobOptions,
        sequence: u64,
        cancel: CancellationToken,
    ) -> JobRun {
        // From folder listings: one per rendition, and no lookup of a name
        // that may not exist yet (a network file system would keep that
        // "no such file" for a while, hiding the file once another pod
        // publishes it).
        let published = layout.published_units(&plan);
        let book = UnitBook::new(&plan, |unit| published.contains(unit), Instant::now());
        let (outcome, _) = watch::channel(None);
        let warnings = super::warnings::plan_warnings(&plan);
        JobRun {
            packager: Packager::new(plan.clone(), layout.clone(), options.listing),
            skipped: book.progress().0,
            plan,
            layout,
            options,
            sequence,
            cancel,
            publishing: tokio::sync::Mutex::new(()),
            plays: AtomicBool::new(false),
            book: Mutex::new(book),
            unseen: UnseenOutputs::default(),
            warnings: Mutex::new(warnings),
            outcome,
        }
    }

    pub fn id(&self) -> JobId {
        self.plan.job_id
    }

    /// Units found already done on storage when the job was added.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// (done, total) units.
    pub fn progress(&self) -> (usize, usize) {
        self.book().progress()
    }

    /// Per rendition: (done, total) segments.
    pub fn rendition_progress(&self) -> Vec<(String, usize, usize)> {
        let book = self.book();
        let total = self.plan.segments.len();
        self.plan
            .renditions
            .iter()
            .map(|r| {
                let done = (0..total)
                    .filter(|&index| {
                        book.is_done(&Unit::Video {
                            rendition: r.name.clone(),
                            index,
                        })
                    })
                    .count();
                (r.name.clone(), done, total)
            })
            .collect()
    }

    /// The warnings this pod knows of (sorted by time).
    pub fn warnings(&self) -> Vec<JobWarning> {
        lock(&self.warnings).clone()
    }

    /// Adds warnings; returns those that were new.
    pub(super) fn add_warnings(&self, new: Vec<JobWarning>) -> Vec<JobWarning> {
        let mut list = lock(&self.warnings);
        new.into_iter()
            .filter(|w| warning::merge(&mut list, [w.clone()]))
            .collect()
    }

    /// Waits for the job to end.
    pub async fn wait(&self) -> JobOutcome {
        let mut outcome = self.outcome.subscribe();
        loop {
            if let Some(outcome) = outcome.borrow_and_update().clone() {
                return outcome;
            }
            if outcome.changed().await.is_err() {
                return JobOutcome::Canceled;
            }
        }
    }

    pub fn outcome(&self) -> Option<JobOutcome> {
        self.outcome.borrow().clone()
    }

    pub(super) fn book(&self) -> MutexGuard<'_, UnitBook> {
        lock(&self.book)
    }

    /// The job's policy now, in a cluster of `cluster_slots` slots.
    pub(super) fn policy(&self, cluster_slots: usize) -> JobPolicy {
        JobPolicy {
            eager_video: self.options.eager_video,
            plays: self.plays.load(Ordering::Relaxed),
            cluster_slots,
        }
    }

    /// What the playlists can list now.
    pub(super) fn availability(&self) -> Availability {
        let book = self.book();
        // A track's playlist is on storage from its first segment on,
        // whichever pod encodes it.
        let audio_listed = self.plan.audio.iter().all(|a| {
            book.is_done(&Unit::Audio { track: a.track })
                || self.layout.audio_playlist(a.track).is_file()
        });
        Availability {
            failed: book.failed_renditions().cloned().collect(),
            audio_listed,
        }
    }
}
