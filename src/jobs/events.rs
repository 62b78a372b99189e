//! A job's event stream on this pod: the [`JobEvent`] type and the per-job
//! [`EventLog`] that late subscribers read and live subscribers follow.
//!
//! Owns the history (the last [`HISTORY_LIMIT`] events, in id order, each id
//! once, one terminal event at most and last), the broadcast channel, the highest id seen, local id generation and
//! the stream's monotonic progress filter. It never decides whether an event
//! happens and never talks to Redis: the job manager emits, the registry
//! carries events between pods.

use super::model::JobEventKind;
use super::view::JobView;
use crate::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Most events kept per job for late subscribers, here and in the registry
/// (progress is throttled to 50 steps, so this holds a whole job's history).
pub(crate) const HISTORY_LIMIT: usize = 256;

/// One entry of a job's event stream.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// Increasing per job; the SSE `id`.
    pub seq: u64,
    /// The SSE event name.
    pub event: JobEventKind,
    pub job: JobView,
}

/// The events of one job that this pod hands to its subscribers.
pub(super) struct EventLog {
    state: Mutex<LogState>,
    sender: broadcast::Sender<JobEvent>,
    /// The highest event id seen for this job (delivered or not).
    last_seq: AtomicU64,
}

struct LogState {
    /// Delivered events, in id order, at most [`HISTORY_LIMIT`].
    history: Vec<JobEvent>,
    /// Progress of the last `progress` event delivered (-1 before the first).
    delivered_progress: f64,
    /// A terminal event was delivered: the stream is over, and nothing
    /// more is delivered (a second end, from this pod's own decision and
    /// another pod's, or a late event).
    ended: bool,
}

impl EventLog {
    pub(super) fn new() -> EventLog {
        let (sender, _) = broadcast::channel(HISTORY_LIMIT);
        EventLog {
            state: Mutex::new(LogState {
                history: Vec::new(),
                delivered_progress: -1.0,
                ended: false,
            }),
            sender,
            last_seq: AtomicU64::new(0),
        }
    }

    /// The highest event id seen.
    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// An id for an event made here without the registry: above every id
    /// seen and above the clock (`now_ms` × 1000), so ids keep growing across
    /// pod restarts and a client's Last-Event-ID from before one skips
    /// nothing.
    pub(super) fn next_local_seq(&self, now_ms: u64) -> u64 {
        let floor = now_ms * 1000;
        let previous = self.last_seq.load(Ordering::Relaxed);
        let seq = floor.max(previous + 1);
        self.last_seq.fetch_max(seq, Ordering::Relaxed);
        seq
    }

    /// Hands an event to this pod's subscribers, once, in id order. Not
    /// delivered (false): anything after a terminal event (exactly one end
    /// per stream), an id already in the history, or a `progress`
    /// event whose value is not above the last one delivered (pods report
    /// steps concurrently; one that was overtaken on its way adds nothing,
    /// and a stream's progress never goes back).
    pub(super) fn deliver(&self, mut event: JobEvent) -> bool {
        {
            let mut state = lock(&self.state);
            if state.ended {
                return false;
            }
            // The end comes last in every stream: one that arrives after
            // events with higher ids (this pod's own, made while it was cut
            // off from Redis) takes the next id here.
            let highest = state.history.last().map_or(0, |e| e.seq);
            if event.event.is_terminal() && event.seq <= highest {
                event.seq = highest + 1;
            }
            self.last_seq.fetch_max(event.seq, Ordering::Relaxed);
            if event.event == JobEventKind::Progress {
                if event.job.progress <= state.delivered_progress {
                    return false;
                }
                state.delivered_progress = event.job.progress;
            }
            if state.history.iter().any(|e| e.seq == event.seq) {
                return false;
            }
            state.ended = event.event.is_terminal();
            state.history.push(event.clone());
            state.history.sort_by_key(|e| e.seq);
            if state.history.len() > HISTORY_LIMIT {
                state.history.remove(0);
            }
        }
        let _ = self.sender.send(event);
        true
    }

    /// The live receiver and the history after `after`; the receiver is
    /// subscribed before the history is read, so no event falls between
    /// them (duplicates are filtered by `seq`).
    pub(super) fn subscribe(&self, after: u64) -> (Vec<JobEvent>, broadcast::Receiver<JobEvent>) {
        let receiver = self.sender.subscribe();
        let history = lock(&self.state)
            .history
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        (history, receiver)
    }

    /// True when no event was delivered here.
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.state).history.is_empty()
    }

    /// True when a terminal event was delivered: the stream is over.
    pub(super) fn ended(&self) -> bool {
        lock(&self.state).ended
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::jobs::model::{JobMode, JobStatus};

    /// A view with only what the event log looks at set.
    pub(crate) fn view(progress: f64) -> JobView {
        JobView {
            id: crate::JobId::nil(),
            status: JobStatus::Processing,
            source: "http://example.com/a.mp4".into(),
            mode: JobMode::Ingest,
            priority: 0,
            ladder: vec!["240p".into()],
            segment_duration: 4,
            callback_url: None,
            created_at: String::new(),
            updated_at: String::new(),
            progress,
            playable: false,
            master_url: String::new(),
            thumbnail_url: String::new(),
            duration: None,
            audio_tracks: None,
            renditions: Vec::new(),
            error: None,
            warnings: Vec::new(),
        }
    }

    fn event(seq: u64, kind: JobEventKind, progress: f64) -> JobEvent {
        JobEvent {
            seq,
            event: kind,
            job: view(progress),
        }
    }

    fn seqs(log: &EventLog) -> Vec<u64> {
        log.subscribe(0).0.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_kept_once_each_in_id_order() {
        let log = EventLog::new();
        let (_, mut receiver) = log.subscribe(0);
        assert!(log.deliver(event(3, JobEventKind::Queued, 0.0)));
        assert!(log.deliver(event(1, JobEventKind::Processing, 0.0)));
        assert!(!log.deliver(event(3, JobEventKind::Queued, 0.0)));
        assert_eq!(seqs(&log), [1, 3]);
        assert_eq!(log.last_seq(), 3);
        // Live subscribers get each delivered event once, as delivered.
        assert_eq!(receiver.try_recv().unwrap().seq, 3);
        assert_eq!(receiver.try_recv().unwrap().seq, 1);
        assert!(receiver.try_recv().is_err());
        // History after a Last-Event-ID.
        let (after, _) = log.subscribe(1);
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn history_keeps_the_last_events_up_to_the_limit() {
        let log = EventLog::new();
        for seq in 1..=(HISTORY_LIMIT as u64 + 10) {
            assert!(log.deliver(event(seq, JobEventKind::ThumbnailReady, 0.0)));
        }
        let kept = seqs(&log);
        assert_eq!(kept.len(), HISTORY_LIMIT);
        assert_eq!(kept.first(), Some(&11));
        assert_eq!(kept.last(), Some(&(HISTORY_LIMIT as u64 + 10)));
    }

    #[test]
    fn progress_events_never_repeat_or_go_back() {
        let log = EventLog::new();
        assert!(log.deliver(event(1, JobEventKind::Progress, 4.0)));
        assert!(!log.deliver(event(2, JobEventKind::Progress, 4.0)));
        assert!(!log.deliver(event(3, JobEventKind::Progress, 3.5)));
        // Other kinds are not filtered by progress.
        assert!(log.deliver(event(4, JobEventKind::Playable, 3.0)));
        assert!(log.deliver(event(5, JobEventKind::Progress, 6.2)));
        assert_eq!(seqs(&log), [1, 4, 5]);
        // A filtered event's id still counts as seen.
        assert_eq!(log.last_seq(), 5);
        assert!(!log.ended());
        assert!(log.deliver(event(6, JobEventKind::Done, 100.0)));
        assert!(log.ended());
    }

    #[test]
    fn a_stream_ends_once() {
        let log = EventLog::new();
        let (_, mut receiver) = log.subscribe(0);
        assert!(log.deliver(event(5, JobEventKind::Processing, 0.0)));
        // This pod's own end (a local id), then another pod's end of the
        // same job and a late event, both refused.
        assert!(log.deliver(event(9000, JobEventKind::Done, 100.0)));
        assert!(!log.deliver(event(7000, JobEventKind::Done, 100.0)));
        assert!(!log.deliver(event(9500, JobEventKind::Failed, 100.0)));
        assert!(!log.deliver(event(9600, JobEventKind::ThumbnailReady, 100.0)));
        assert_eq!(seqs(&log), [5, 9000]);
        let delivered: Vec<u64> = std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|e| e.seq)
            .collect();
        assert_eq!(delivered, [5, 9000]);
    }

    #[test]
    fn a_late_end_with_a_lower_id_still_comes_last() {
        let log = EventLog::new();
        assert!(log.deliver(event(9000, JobEventKind::Progress, 40.0)));
        assert!(log.deliver(event(7000, JobEventKind::Done, 100.0)));
        assert_eq!(seqs(&log), [9000, 9001]);
        assert_eq!(log.last_seq(), 9001);
        assert!(log.ended());
    }

    #[test]
    fn local_ids_grow_above_the_clock_and_every_id_seen() {
        let log = EventLog::new();
        assert!(log.is_empty());
        assert_eq!(log.next_local_seq(5), 5000);
        assert_eq!(log.next_local_seq(5), 5001);
        log.deliver(event(9000, JobEventKind::Queued, 0.0));
        assert_eq!(log.next_local_seq(6), 9001);
        assert_eq!(log.next_local_seq(20), 20000);
    }
}
