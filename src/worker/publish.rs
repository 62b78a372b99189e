//! Moving verified outputs into place, and publishing an audio track while
//! it is still being encoded.
//!
//! Every output is published with no-replace semantics
//! ([`storage::publish`]): the first complete copy of a name wins, and a
//! batch that finds its output already there drops its copy, counts it
//! (`segswarm_duplicate_outputs_total`) and still completes its lease,
//! because the unit is done. A batch whose leases could not be confirmed
//! (Redis away, local claims during a fallback) publishes the same way and
//! is counted (`segswarm_unconfirmed_publishes_total`).
//!
//! A video segment or the thumbnail is one publish. An audio track is
//! published as ffmpeg's hls muxer finishes segments (copied, with an EVENT
//! playlist of ours), because a long source's audio takes minutes and a
//! player needs only its first segment; the track is done when the final
//! publish writes its playlist with ENDLIST, last. The final publish finds
//! the segments it copied early already there (its own copies, not another
//! writer's: not counted); the track is a duplicate only when another
//! writer had already published its final playlist. Audio playlists only
//! grow, like every media playlist ([`crate::playlists::growth`]).

use super::job_run::JobRun;
use super::lease::LeaseGuard;
use super::{Shared, UnitFailure};
use crate::coord::{Lease, LeaseCheck};
use crate::encode::{Batch, EncodeError, Verified};
use crate::ffmpeg::RunControl;
use crate::hls;
use crate::playlists::growth::{self, MediaState};
use crate::storage::{self, AudioWorkDir, Published, StorageError};
use m3u8_rs::MediaPlaylist;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often a running audio encode is looked at for finished segments.
const AUDIO_TRICKLE_INTERVAL: Duration = Duration::from_millis(100);

impl Shared {
    /// Moves verified outputs into place and completes their leases.
    /// `check` is what the leases' confirmation found (never lost here);
    /// `seconds`: how long the batch's encode took, for the log.
    pub(super) async fn publish(
        &self,
        job: &Arc<JobRun>,
        batch: &Batch,
        leases: &[Lease],
        check: LeaseCheck,
        seconds: f64,
    ) {
        let confirmed = check == LeaseCheck::Held;
        match batch {
            Batch::Video { segment, outputs } => {
                for (output, lease) in outputs.iter().zip(leases) {
                    let target = job.layout.segment(&output.rendition.name, segment.index);
                    match self.publish_file(&output.tmp_path, &target) {
                        Ok(published) => {
                            self.settle(job, lease, published, confirmed, seconds).await
                        }
                        Err(err) => {
                            let _ = std::fs::remove_file(&output.tmp_path);
                            let failure = UnitFailure::from(&err);
                            self.fail_leases(job, std::slice::from_ref(lease), &failure)
                                .await
                        }
                    }
                }
            }
            Batch::Thumbnail { tmp_path } => {
                match self.publish_file(tmp_path, &job.layout.thumbnail()) {
                    Ok(published) => {
                        self.settle(job, &leases[0], published, confirmed, seconds)
                            .await
                    }
                    Err(err) => {
                        let _ = std::fs::remove_file(tmp_path);
                        self.fail_leases(job, leases, &(&err).into()).await
                    }
                }
            }
            Batch::Audio { track, work } => {
                let result = self.publish_audio(job, *track, work);
                let _ = std::fs::remove_dir_all(work.path());
                match result {
                    Ok(published) => {
                        self.settle(job, &leases[0], published, confirmed, seconds)
                            .await
                    }
                    Err(failure) => self.fail_leases(job, leases, &failure).await,
                }
            }
        }
    }

    /// Counts what a publish found, then completes the lease: the unit is
    /// done whoever's copy is on storage.
    async fn settle(
        &self,
        job: &Arc<JobRun>,
        lease: &Lease,
        published: Published,
        confirmed: bool,
        seconds: f64,
    ) {
        if !confirmed {
            self.metrics.unconfirmed_publishes.inc();
        }
        if published == Published::AlreadyThere {
            self.metrics
                .duplicate_outputs
                .with_label_values(&[lease.unit.kind()])
                .inc();
            tracing::info!(job = %job.id(), unit = %lease.unit, confirmed, "output already published by another writer; this copy dropped");
        }
        self.complete(job, lease, seconds).await
    }

    fn publish_file(&self, from: &Path, to: &Path) -> Result<Published, StorageError> {
        let bytes = std::fs::metadata(from).map(|m| m.len()).unwrap_or(0);
        let publication = storage::publish(from, to)?;
        self.metrics
            .storage_write_seconds
            .observe(publication.seconds);
        if publication.published == Published::Won {
            self.metrics.bytes_written.inc_by(bytes);
        }
        Ok(publication.published)
    }

    /// Publishes a verified audio rendition: every segment (those copied
    /// while it was encoded are there already, and stay), then its final
    /// playlist (whose ENDLIST marks the unit done). [`Published::AlreadyThere`]
    /// when another writer had published the final playlist first.
    fn publish_audio(
        &self,
        job: &JobRun,
        track: usize,
        work: &AudioWorkDir,
    ) -> Result<Published, UnitFailure> {
        let playlist =
            storage::read_playlist(&work.playlist()).map_err(|e| UnitFailure::from(&e))?;
        for segment in &playlist.segments {
            let name = hls::file_name(&segment.uri);
            self.publish_file(&work.file(&name), &job.layout.audio_segment(track, &name))
                .map_err(|e| UnitFailure::from(&e))?;
        }
        let listed = MediaState {
            segments: playlist.segments.len(),
            finished: true,
        };
        let path = job.layout.audio_playlist(track);
        let bytes = hls::audio_playlist(&playlist, true);
        let written = growth::write_media(&job.layout, &path, &bytes, listed)
            .map_err(|e| UnitFailure::from(&e))?;
        Ok(if written {
            Published::Won
        } else {
            Published::AlreadyThere
        })
    }

    /// Runs an audio batch, publishing each segment ffmpeg has finished and
    /// a growing (EVENT) playlist while it runs, so the job plays after the
    /// track's first segment. Stops publishing when the lease is lost; the
    /// unit is done only when [`Shared::publish`] writes the final playlist.
    pub(super) async fn run_audio(
        &self,
        job: &Arc<JobRun>,
        guard: &LeaseGuard,
        batch: &Batch,
        track: usize,
        work: &AudioWorkDir,
        control: RunControl,
    ) -> Result<Verified, EncodeError> {
        let run = self.encoder.encode(batch, &job.plan, control);
        tokio::pin!(run);
        let mut published = 0;
        loop {
            tokio::select! {
                result = &mut run => return result,
                _ = tokio::time::sleep(AUDIO_TRICKLE_INTERVAL), if !guard.is_lost() => {
                    published = self.trickle_audio(job, guard, track, work, published).await;
                }
            }
        }
    }

    /// One look at a running audio encode: publishes the segments beyond
    /// the first `published` that ffmpeg has finished. Returns how many are
    /// published now.
    async fn trickle_audio(
        &self,
        job: &Arc<JobRun>,
        guard: &LeaseGuard,
        track: usize,
        work: &AudioWorkDir,
        published: usize,
    ) -> usize {
        // ffmpeg rewrites its playlist after each segment (whole, by
        // rename); one that has ENDLIST is left to the final publish.
        let Ok(playlist) = storage::read_playlist(&work.playlist()) else {
            return published;
        };
        if playlist.end_list || playlist.segments.len() <= published {
            return published;
        }
        // As before the final publish: a pod resumed after its lease expired
        // stops here. An unconfirmed lease may publish (nothing is replaced).
        if guard.confirm().await == LeaseCheck::Lost {
            return published;
        }
        match self.publish_audio_so_far(job, track, work, &playlist, published) {
            Ok(()) => {
                self.publish_playlists(job).await;
                playlist.segments.len()
            }
            // Not fatal: the final publish after the encode decides.
            Err(err) => {
                tracing::debug!(job = %job.id(), track, "publishing audio so far: {err}");
                published
            }
        }
    }

    /// Publishes the segments of ffmpeg's growing `playlist` beyond the
    /// first `published` (copies: ffmpeg's folder stays whole for the final
    /// check), then our EVENT playlist listing them all, unless the file on
    /// storage lists more or is final (another pod finished the track).
    fn publish_audio_so_far(
        &self,
        job: &JobRun,
        track: usize,
        work: &AudioWorkDir,
        playlist: &MediaPlaylist,
        published: usize,
    ) -> Result<(), StorageError> {
        for segment in &playlist.segments[published..] {
            let name = hls::file_name(&segment.uri);
            let from = work.file(&name);
            let bytes = std::fs::read(&from).map_err(|e| StorageError::new("reading", &from, e))?;
            let publication = job
                .layout
                .publish_bytes(&job.layout.audio_segment(track, &name), &bytes)?;
            if publication.published == Published::Won {
                self.metrics.bytes_written.inc_by(bytes.len() as u64);
            }
        }
        let listed = MediaState {
            segments: playlist.segments.len(),
            finished: false,
        };
        let path = job.layout.audio_playlist(track);
        let bytes = hls::audio_playlist(playlist, false);
        growth::write_media(&job.layout, &path, &bytes, listed)?;
        Ok(())
    }
}
