//! What other pods say, as this pod reads it off Redis: control notices
//! (`new <job>`, `planned <job>`, `cancel <job>`) and job events
//! (`<seq> <origin> <name> <job JSON>`, written by
//! [`super::scripts::PUBLISH`]), typed into [`Incoming`] and [`RemoteEvent`].
//!
//! Parsing only: a message that does not read as one of these (an unknown
//! event name, JSON that is not a job view) is dropped with a debug log.
//! It never acts on what it reads.

use crate::jobs::model::JobEventKind;
use crate::jobs::view::RemoteView;
use crate::JobId;

/// What another pod said.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A job was submitted somewhere.
    New(JobId),
    /// A job's plan was published (its planner probed and planned it).
    Planned(JobId),
    /// A job was canceled somewhere.
    Cancel(JobId),
    /// A job event emitted by another pod.
    Event(RemoteEvent),
    /// The subscription was (re)established, or the periodic rescan is due:
    /// notices may have been missed.
    Resync,
    /// The quick storage check of a pod working alone (Redis away) is due.
    Converge,
}

/// A job event as a pod published it (live, or read back from the history).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEvent {
    pub job: JobId,
    /// The cluster-wide event id.
    pub seq: u64,
    pub kind: JobEventKind,
    /// The sender's view of the job when it sent the event.
    pub view: RemoteView,
}

/// Reads a message of the control channel.
pub(super) fn parse_control(payload: &str) -> Option<Incoming> {
    let (verb, job) = payload.split_once(' ')?;
    let job = job.parse().ok()?;
    match verb {
        "new" => Some(Incoming::New(job)),
        "planned" => Some(Incoming::Planned(job)),
        "cancel" => Some(Incoming::Cancel(job)),
        _ => None,
    }
}

/// Reads `<seq> <origin> <name> <job JSON>` into (origin, event).
pub(super) fn parse_event(job: JobId, message: &str) -> Option<(&str, RemoteEvent)> {
    let mut parts = message.splitn(4, ' ');
    let seq = parts.next()?.parse().ok()?;
    let origin = parts.next()?;
    let name = parts.next()?;
    let json = parts.next()?;
    let Some(kind) = JobEventKind::parse(name) else {
        tracing::debug!(%job, seq, origin, "dropping an event of unknown kind {name:?}");
        return None;
    };
    let view = match serde_json::from_str(json) {
        Ok(view) => view,
        Err(err) => {
            tracing::debug!(%job, seq, origin, "dropping a {kind} event: {err}");
            return None;
        }
    };
    Some((
        origin,
        RemoteEvent {
            job,
            seq,
            kind,
            view,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::JobStatus;

    fn job() -> JobId {
        "6f1c1b8e-8d0a-4c56-9a53-0d1f3c2b4a10".parse().unwrap()
    }

    #[test]
    fn an_event_message_reads_as_a_typed_event() {
        let message = r#"1712345678000001 pod-a thumbnail_ready {"id":"x","status":"processing","progress":12.5,"playable":false,"error":null,"ladder":["240p", "360p"]}"#;
        let (origin, event) = parse_event(job(), message).unwrap();
        assert_eq!(origin, "pod-a");
        assert_eq!(
            event,
            RemoteEvent {
                job: job(),
                seq: 1712345678000001,
                kind: JobEventKind::ThumbnailReady,
                view: RemoteView {
                    status: Some(JobStatus::Processing),
                    playable: false,
                    error: None,
                    progress: Some(12.5),
                    warnings: Vec::new(),
                },
            }
        );
        let (_, failed) = parse_event(
            job(),
            r#"7 pod-b failed {"status":"failed","error":"bad source"}"#,
        )
        .unwrap();
        assert_eq!(failed.kind, JobEventKind::Failed);
        assert_eq!(failed.view.error.as_deref(), Some("bad source"));
        assert_eq!(failed.view.progress, None);
    }

    #[test]
    fn unknown_names_and_broken_messages_are_dropped() {
        assert_eq!(
            parse_event(job(), r#"7 pod-b exploded {"status":"done"}"#),
            None
        );
        assert_eq!(parse_event(job(), r#"7 pod-b done {"status":"#), None);
        assert_eq!(
            parse_event(job(), r#"7 pod-b done {"status":"lost"}"#),
            None
        );
        assert_eq!(parse_event(job(), r#"x pod-b done {}"#), None);
        assert_eq!(parse_event(job(), "7 pod-b done"), None);
        assert_eq!(parse_event(job(), ""), None);
    }

    #[test]
    fn control_notices() {
        let id = job();
        assert!(matches!(parse_control(&format!("new {id}")), Some(Incoming::New(j)) if j == id));
        assert!(
            matches!(parse_control(&format!("cancel {id}")), Some(Incoming::Cancel(j)) if j == id)
        );
        assert!(
            matches!(parse_control(&format!("planned {id}")), Some(Incoming::Planned(j)) if j == id)
        );
        assert!(parse_control(&format!("pause {id}")).is_none());
        assert!(parse_control("new not-a-uuid").is_none());
    }
}
