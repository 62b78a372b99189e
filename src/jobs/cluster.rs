//! What this pod tells the other pods about its jobs and what it hears from
//! them, through the [`Registry`](super::registry::Registry): announcing
//! jobs, winning status changes, publishing events; adopting jobs submitted
//! elsewhere, mirroring their events, catching up after a gap, reading the
//! warnings every pod kept.
//!
//! Without a registry (local mode), or while Redis is away, every decision
//! is this pod's own and events get local ids; a pod cut off from Redis
//! follows the job from storage (units published by others are done here
//! too) and, once Redis answers, from its history, and settles which pod
//! announces an end it decided alone (`confirm_ends`). It never decides
//! what a job's next status is (the lifecycle does) and never touches a
//! job's outputs.

use super::events::JobEvent;
use super::model::{JobEventKind, JobRecord, JobStatus};
use super::registry::{Incoming, Registry, RemoteEvent};
use super::state::{Decision, Ending};
use super::view::{JobView, RemoteView};
use super::{now_ms, JobEntry, JobManager};
use crate::coord::Mode;
use crate::sync::{lock, write};
use crate::warning::{self, JobWarning};
use crate::JobId;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a clustered pod looks on storage for jobs and units it missed,
/// and in the registry for events it missed.
const STORAGE_RESCAN: Duration = Duration::from_secs(5);
/// How often a pod cut off from Redis looks on storage for units other
/// pods published.
const CONVERGE_EVERY: Duration = Duration::from_secs(1);

/// Takes over what another pod's event says of a job: its status (unless the
/// job ended here), playability, error, progress (never going back) and
/// warnings (added to this pod's).
fn take_over(record: &mut JobRecord, remote: &RemoteView) {
    warning::merge(&mut record.warnings, remote.warnings.iter().cloned());
    if let Some(status) = remote.status {
        record.advance(status);
    }
    if remote.playable {
        record.playable = true;
    }
    if let Some(error) = &remote.error {
        record.error = Some(error.clone());
    }
    if let Some(progress) = remote.progress {
        record.progress = record.progress.max(progress);
    }
}

impl JobManager {
    /// Records a new job in the registry and tells every pod about it.
    pub(super) async fn announce(&self, record: &JobRecord) {
        let Some(registry) = &self.registry else {
            return;
        };
        let announced = match serde_json::to_string(record) {
            Ok(json) => registry
                .announce(record.id, &json, record.spec.priority, record.created_at_ms)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(err) = announced {
            // Other pods find it on storage at their next scan.
            tracing::warn!(job = %record.id, "announcing the job: {err}");
        }
    }

    /// Tells every pod to stop the job.
    pub(super) async fn tell_cancel(&self, id: JobId) {
        if let Some(registry) = &self.registry {
            if let Err(err) = registry.cancel(id).await {
                tracing::warn!(job = %id, "telling other pods to cancel: {err}");
            }
        }
    }

    /// Takes an ended job off the cluster's active set.
    pub(super) async fn retire(&self, id: JobId) {
        if let Some(registry) = &self.registry {
            if let Err(err) = registry.finished(id).await {
                tracing::warn!(job = %id, "job registry: {err}");
            }
        }
    }

    /// Whether this pod is the one to make a status change cluster-wide:
    /// always without a registry; [`Decision::Unknown`] while it is
    /// unreachable.
    pub(super) async fn decide(&self, next: &JobRecord) -> Decision {
        let Some(registry) = &self.registry else {
            return Decision::Won;
        };
        let json = match serde_json::to_string(next) {
            Ok(json) => json,
            Err(_) => return Decision::Won,
        };
        match registry.transition(next.id, next.status, &json).await {
            Ok(true) => Decision::Won,
            Ok(false) => Decision::Lost,
            Err(err) => {
                tracing::warn!(job = %next.id, "job registry: {err}; deciding locally");
                Decision::Unknown
            }
        }
    }

    /// Settles the ends this pod decided alone while the registry was
    /// unreachable: the pod whose end the registry records announces it to
    /// the other pods and sends the webhook; the others take the recorded
    /// end. Ends the registry still cannot be asked about wait for the next
    /// call.
    pub(super) async fn confirm_ends(&self) {
        for entry in self.entries() {
            if *lock(&entry.ending) != Ending::Unconfirmed {
                continue;
            }
            let record = entry.record();
            match self.decide(&record).await {
                Decision::Unknown => return, // Redis still away
                Decision::Won => {
                    lock(&entry.ending).confirm();
                    // Its streams here ended already; this reaches the
                    // other pods' (this pod's log refuses a second end).
                    self.emit(&entry, record.status.into()).await;
                    if record.status != JobStatus::Canceled {
                        self.notify_webhook(&entry, record.status.into());
                    }
                    self.retire(record.id).await;
                }
                Decision::Lost => {
                    lock(&entry.ending).confirm();
                    self.follow_registry_record(&entry).await;
                }
            }
        }
    }

    /// True for the one pod that reports a one-off event of a job.
    pub(super) async fn first_to_report(&self, id: JobId, event: JobEventKind) -> bool {
        match &self.registry {
            None => true,
            Some(registry) => registry.once(id, event.as_str()).await.unwrap_or(true),
        }
    }

    /// The registry, unless this pod is coordinating alone because Redis
    /// is away (then a call would only wait for its timeout). For what the
    /// registry merely adds to: warnings.
    fn reachable_registry(&self) -> Option<&Registry> {
        let registry = self.registry.as_deref()?;
        (self.worker.mode() == Mode::Distributed).then_some(registry)
    }

    /// Adds the warnings every pod's worker kept in Redis (see
    /// `Coordinator::keep_warnings`) to a job's record: before the job ends
    /// here, and when it is adopted.
    pub(super) async fn gather_warnings(&self, entry: &JobEntry) {
        let Some(registry) = self.reachable_registry() else {
            return;
        };
        let id = entry.record().id;
        let Ok(texts) = registry.warnings(id).await else {
            return; // Redis away: what this pod heard is what it has
        };
        let stored = texts.iter().filter_map(|text| {
            serde_json::from_str::<JobWarning>(text)
                .map_err(|err| tracing::debug!(job = %id, "dropping a warning: {err}"))
                .ok()
        });
        warning::merge(&mut lock(&entry.record).warnings, stored);
    }

    /// True for the one pod that announces warning `key` of a job.
    pub(super) async fn first_to_warn(&self, id: JobId, key: &str) -> bool {
        match self.reachable_registry() {
            None => true,
            Some(registry) => registry
                .once(id, &format!("warning:{key}"))
                .await
                .unwrap_or(true),
        }
    }

    /// Emits an event: through the registry when there is one (every pod's
    /// subscribers get it, with a cluster-wide id), else locally.
    pub(super) async fn emit(&self, entry: &JobEntry, event: JobEventKind) {
        self.emit_view(entry, event, self.view(entry)).await;
    }

    /// [`Self::emit`] with the view given.
    pub(super) async fn emit_view(&self, entry: &JobEntry, event: JobEventKind, job: JobView) {
        let mut seq = None;
        if let Some(registry) = &self.registry {
            let floor = now_ms() * 1000;
            match serde_json::to_string(&job) {
                Ok(json) => match registry.publish_event(job.id, event, &json, floor).await {
                    Ok(published) => seq = Some(published),
                    Err(err) => tracing::warn!(job = %job.id, "publishing {event}: {err}"),
                },
                Err(err) => tracing::warn!(job = %job.id, "encoding {event}: {err}"),
            }
        }
        let seq = seq.unwrap_or_else(|| entry.events.next_local_seq(now_ms()));
        entry.events.deliver(JobEvent { seq, event, job });
    }

    /// Takes over the registry's record of a job another pod changed: its
    /// end, which wins over an end this pod decided alone, or a forward
    /// status.
    pub(super) async fn follow_registry_record(&self, entry: &JobEntry) {
        let Some(registry) = &self.registry else {
            return;
        };
        let id = entry.record().id;
        if let Ok(Some(json)) = registry.record(id).await {
            if let Ok(remote) = serde_json::from_str::<JobRecord>(&json) {
                let mut record = lock(&entry.record);
                if remote.status.is_terminal() {
                    record.status = remote.status;
                    record.error = remote.error;
                } else if record.advance(remote.status) {
                    record.error = remote.error;
                }
                record.playable |= remote.playable;
                record.progress = record.progress.max(remote.progress);
                record.updated_at_ms = record.updated_at_ms.max(remote.updated_at_ms);
                warning::merge(&mut record.warnings, remote.warnings);
            }
        }
    }

    /// The job this pod knows as `id`, or, in a cluster, the one the
    /// registry (or storage) knows, adopted now: a request may reach a pod
    /// before the job's announcement does.
    pub(super) async fn find_or_adopt(self: &Arc<Self>, id: JobId) -> Option<Arc<JobEntry>> {
        if let Some(entry) = self.entry(id) {
            return Some(entry);
        }
        self.registry.as_ref()?;
        self.adopt(id).await;
        self.entry(id)
    }

    /// Joins a job another pod announced (or that was found on storage).
    pub(super) async fn adopt(self: &Arc<Self>, id: JobId) {
        if self.entry(id).is_some() {
            return;
        }
        let mut record: Option<JobRecord> = None;
        if let Some(registry) = &self.registry {
            if let Ok(Some(json)) = registry.record(id).await {
                record = serde_json::from_str(&json).ok();
            }
        }
        if record.is_none() {
            record = self.stored_record(id);
        }
        let Some(record) = record else {
            return;
        };
        let entry = JobEntry::new(record.clone(), false);
        {
            let mut jobs = write(&self.jobs);
            if jobs.contains_key(&id) {
                return;
            }
            jobs.insert(id, entry.clone());
        }
        if let Some(registry) = &self.registry {
            for event in registry.history(id).await.unwrap_or_default() {
                self.apply_remote_event(&entry, event);
            }
        }
        self.gather_warnings(&entry).await;
        if !record.status.is_terminal() {
            self.spawn_start(entry);
        }
    }

    /// Mirrors another pod's event: the record follows its status, and this
    /// pod's subscribers get it.
    /// Returns true when the event says the job was canceled (the caller
    /// stops this pod's work on it: a missed `cancel` notice is caught up).
    fn apply_remote_event(&self, entry: &JobEntry, event: RemoteEvent) -> bool {
        take_over(&mut lock(&entry.record), &event.view);
        // The event says what its sender saw; this pod's own view may be
        // further along, and re-rendering with it would make a stream's
        // progress values repeat or jump.
        let mut job = self.view(entry);
        if let Some(progress) = event.view.progress {
            job.progress = progress;
        }
        if event.kind.is_terminal() {
            entry.started.notify_waiters();
        }
        entry.events.deliver(JobEvent {
            seq: event.seq,
            event: event.kind,
            job,
        });
        event.kind == JobEventKind::Canceled
    }

    /// Applies the registry's history of one job again (events already
    /// seen are skipped by id); false when Redis could not be read.
    pub(super) async fn catch_up_job(&self, entry: &JobEntry) -> bool {
        let Some(registry) = &self.registry else {
            return true;
        };
        let id = entry.record().id;
        let Ok(history) = registry.history(id).await else {
            return false;
        };
        for event in history {
            if self.apply_remote_event(entry, event) {
                self.worker.cancel_job(id).await;
            }
        }
        true
    }

    /// Catches up on events this pod may have missed (pub/sub drops what is
    /// sent while a subscriber reconnects, and a pod cut off from Redis hears
    /// nothing): for every job whose stream here has not ended, the
    /// registry's history is applied again; then the ends decided while Redis
    /// was away are settled.
    async fn catch_up(&self) {
        if self.registry.is_none() {
            return;
        }
        for entry in self.entries() {
            let record = entry.record();
            // Jobs that ended before this pod knew them have nothing to
            // catch up on.
            let ended_earlier = record.status.is_terminal() && entry.events.is_empty();
            if entry.events.ended() || ended_earlier {
                continue;
            }
            if !self.catch_up_job(&entry).await {
                return; // Redis away: try at the next tick
            }
        }
        self.confirm_ends().await;
    }

    /// What other pods finished, from storage: the outputs on storage are
    /// done here too (progress, playlists, and the job's end once every
    /// unit is published), whether or not their notices reached this pod.
    async fn converge_from_storage(&self) {
        let found = self.worker.catch_up_from_storage().await;
        if found > 0 {
            tracing::debug!("{found} unit(s) found done on storage");
        }
    }

    async fn on_incoming(self: &Arc<Self>, incoming: Incoming) {
        match incoming {
            Incoming::New(id) => self.adopt(id).await,
            Incoming::Planned(id) => {
                if self.entry(id).is_none() {
                    self.adopt(id).await;
                }
                if let Some(entry) = self.entry(id) {
                    entry.planned.notify_waiters();
                }
            }
            Incoming::Cancel(id) => {
                self.worker.cancel_job(id).await;
                if let Some(entry) = self.entry(id) {
                    self.follow_registry_record(&entry).await;
                }
            }
            Incoming::Event(event) => {
                let job = event.job;
                if self.entry(job).is_none() {
                    self.adopt(job).await;
                }
                if let Some(entry) = self.entry(job) {
                    if self.apply_remote_event(&entry, event) {
                        self.worker.cancel_job(job).await;
                    }
                }
            }
            Incoming::Resync => {
                if let Err(err) = self.resume_from_storage() {
                    tracing::warn!("scanning storage for jobs: {err}");
                }
                self.converge_from_storage().await;
                self.catch_up().await;
            }
            Incoming::Converge => {
                // Cut off from Redis: other pods' notices do not arrive,
                // storage still shows what they publish.
                if self.worker.mode() == Mode::Local {
                    self.converge_from_storage().await;
                }
            }
        }
    }
}

/// Follows what other pods say, and rescans storage now and then for jobs
/// whose announcement was missed (pub/sub does not queue for absent
/// listeners) and for units other pods published; every
/// [`CONVERGE_EVERY`] while the pod works alone (Redis away).
pub(super) async fn follow_cluster(
    manager: Weak<JobManager>,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    stop: CancellationToken,
) {
    let mut rescan = tokio::time::interval(STORAGE_RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut converge = tokio::time::interval(CONVERGE_EVERY);
    converge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = incoming.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = rescan.tick() => Incoming::Resync,
            _ = converge.tick() => Incoming::Converge,
        };
        let Some(manager) = manager.upgrade() else {
            return;
        };
        manager.on_incoming(message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{JobMode, JobSpec, JobStatus};

    fn record(status: JobStatus, progress: f64) -> JobRecord {
        JobRecord {
            id: JobId::nil(),
            spec: JobSpec {
                source: crate::source::Source::Url("http://example.com/a.mp4".into()),
                settings: Default::default(),
                priority: 0,
                mode: JobMode::Ingest,
                callback_url: None,
            },
            status,
            error: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            playable: false,
            progress,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_remote_view_moves_the_record_forward_only_where_it_may() {
        let mut local = record(JobStatus::Processing, 30.0);
        take_over(
            &mut local,
            &RemoteView {
                status: Some(JobStatus::Playable),
                playable: true,
                error: None,
                progress: Some(12.0),
                warnings: Vec::new(),
            },
        );
        assert_eq!(local.status, JobStatus::Playable);
        assert!(local.playable);
        assert_eq!(local.progress, 30.0, "progress never goes back");
        // Nothing said: nothing changes (playable is never taken back).
        take_over(&mut local, &RemoteView::default());
        assert_eq!(local.status, JobStatus::Playable);
        assert!(local.playable);
        // A job that ended here keeps its status, takes the error.
        let mut ended = record(JobStatus::Canceled, 50.0);
        take_over(
            &mut ended,
            &RemoteView {
                status: Some(JobStatus::Failed),
                playable: false,
                error: Some("bad source".into()),
                progress: Some(60.0),
                warnings: Vec::new(),
            },
        );
        assert_eq!(ended.status, JobStatus::Canceled);
        assert_eq!(ended.error.as_deref(), Some("bad source"));
        assert_eq!(ended.progress, 60.0);
    }

    #[test]
    fn a_remote_view_adds_its_warnings_once() {
        let warning = JobWarning {
            kind: crate::warning::WarningKind::DamagedSource,
            unit: Some("video/240p/1".into()),
            rendition: Some("240p".into()),
            track: None,
            start: 4.0,
            end: 8.0,
            frames_filled: 13,
            silence_filled: 0.0,
            message: "segment 1 of 240p".into(),
        };
        let remote = RemoteView {
            warnings: vec![warning.clone()],
            ..RemoteView::default()
        };
        // Even on a job that ended here: a late warning still counts.
        let mut local = record(JobStatus::Done, 100.0);
        take_over(&mut local, &remote);
        take_over(&mut local, &remote);
        assert_eq!(local.warnings, vec![warning]);
        assert_eq!(local.status, JobStatus::Done);
    }
}
