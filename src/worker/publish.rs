//! Moving verified outputs into place, and publishing an audio track while
//! it is still being encoded.
//!
//! A video segment or the thumbnail is one rename. An audio track is
//! published as ffmpeg's hls muxer finishes segments (copied, with an EVENT
//! playlist of ours), because a long source's audio takes minutes and a
//! player needs only its first segment; the track is done when the final
//! publish writes its playlist with ENDLIST, last. Nothing here replaces a
//! playlist that has ENDLIST with a growing one.

use super::job_run::JobRun;
use super::lease::LeaseGuard;
use super::{Shared, UnitFailure};
use crate::coord::Lease;
use crate::encode::{Batch, EncodeError, Verified};
use crate::ffmpeg::RunControl;
use crate::hls;
use crate::storage::{self, AudioWorkDir, StorageError};
use m3u8_rs::MediaPlaylist;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often a running audio encode is looked at for finished segments.
const AUDIO_TRICKLE_INTERVAL: Duration = Duration::from_millis(100);

impl Shared {
    /// Moves verified outputs into place and completes their leases
    /// (`seconds`: how long the batch's encode took, for the log).
    pub(super) async fn publish(
        &self,
        job: &Arc<JobRun>,
        batch: &Batch,
        leases: &[Lease],
        seconds: f64,
    ) {
        match batch {
            Batch::Video { segment, outputs } => {
                for (output, lease) in outputs.iter().zip(leases) {
                    let target = job.layout.segment(&output.rendition.name, segment.index);
                    match self.publish_file(&output.tmp_path, &target) {
                        Ok(()) => self.complete(job, lease, seconds).await,
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
                    Ok(()) => self.complete(job, &leases[0], seconds).await,
                    Err(err) => self.fail_leases(job, leases, &(&err).into()).await,
                }
            }
            Batch::Audio { track, work } => {
                let result = self.publish_audio(job, *track, work);
                let _ = std::fs::remove_dir_all(work.path());
                match result {
                    Ok(()) => self.complete(job, &leases[0], seconds).await,
                    Err(failure) => self.fail_leases(job, leases, &failure).await,
                }
            }
        }
    }

    fn publish_file(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        let bytes = std::fs::metadata(from).map(|m| m.len()).unwrap_or(0);
        let seconds = storage::publish(from, to)?;
        self.metrics.storage_write_seconds.observe(seconds);
        self.metrics.bytes_written.inc_by(bytes);
        Ok(())
    }

    /// Publishes a verified audio rendition: every segment, then its final
    /// playlist (whose ENDLIST marks the unit done).
    fn publish_audio(
        &self,
        job: &JobRun,
        track: usize,
        work: &AudioWorkDir,
    ) -> Result<(), UnitFailure> {
        let playlist =
            storage::read_playlist(&work.playlist()).map_err(|e| UnitFailure::from(&e))?;
        for segment in &playlist.segments {
            let name = hls::file_name(&segment.uri);
            self.publish_file(&work.file(&name), &job.layout.audio_segment(track, &name))
                .map_err(|e| UnitFailure::from(&e))?;
        }
        job.layout
            .write_atomic(
                &job.layout.audio_playlist(track),
                &hls::audio_playlist(&playlist, true),
            )
            .map_err(|e| UnitFailure::from(&e))
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
        // must not publish over the taker's files.
        if !guard.confirm_held().await {
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
    /// check), then our EVENT playlist listing them all.
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
            job.layout
                .write_atomic(&job.layout.audio_segment(track, &name), &bytes)?;
            self.metrics.bytes_written.inc_by(bytes.len() as u64);
        }
        let target = job.layout.audio_playlist(track);
        // Another pod may have finished the track (after a takeover): never
        // replace a final playlist with a growing one.
        if !storage::is_finished_playlist(&target) {
            job.layout
                .write_atomic(&target, &hls::audio_playlist(playlist, false))?;
        }
        Ok(())
    }
}
