//! Why a unit's attempt failed, as a kind callers can match (the pod's
//! readiness reacts to a full disk) and a message for people (job errors,
//! logs). Built from the typed errors of encoding and storage; nothing
//! downstream reads the message to decide anything.

use crate::encode::EncodeError;
use crate::ffmpeg::RunError;
use crate::storage::{PlaylistError, StorageError};
use std::fmt;

/// What kind of failure a unit's attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The storage had no room left (disk full or quota exceeded), for our
    /// own writes or ffmpeg's.
    DiskFull,
    /// Another storage error: permissions, a lost mount, a missing folder.
    Storage,
    /// ffmpeg could not be started, or exited with an error or a signal.
    EncoderFailed,
    /// ffmpeg stopped making progress and was killed.
    EncoderStalled,
    /// The output failed verification before publishing: wrong frame count,
    /// no keyframe first, wrong size, an incomplete audio playlist.
    BadOutput,
    /// The pod's proxy could not fetch a URL source: a redirect or address
    /// the egress policy refuses, an origin that answered an error or could
    /// not be reached.
    SourceFetch,
    /// The source yields no decodable frame for the unit, the same way
    /// twice (encode/damage.rs): trying again cannot help.
    Undecodable,
}

impl FailureKind {
    /// True when the source is to blame: another attempt (here or on
    /// another pod) cannot succeed, so the unit fails for good at once, and
    /// the pod is not failing (its failure circuit does not count it).
    /// Every other kind is retried with backoff up to the attempts limit.
    pub fn is_source_fault(self) -> bool {
        matches!(self, FailureKind::Undecodable)
    }
}

/// A failed attempt of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for UnitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&StorageError> for UnitFailure {
    fn from(error: &StorageError) -> Self {
        let kind = if error.is_disk_full() {
            FailureKind::DiskFull
        } else {
            FailureKind::Storage
        };
        UnitFailure {
            kind,
            message: error.to_string(),
        }
    }
}

impl From<&PlaylistError> for UnitFailure {
    fn from(error: &PlaylistError) -> Self {
        match error {
            PlaylistError::Read(storage) => storage.into(),
            PlaylistError::Parse { .. } => UnitFailure {
                kind: FailureKind::BadOutput,
                message: error.to_string(),
            },
        }
    }
}

impl From<&EncodeError> for UnitFailure {
    fn from(error: &EncodeError) -> Self {
        let kind = match error {
            EncodeError::Verify { .. } => FailureKind::BadOutput,
            EncodeError::Undecodable { .. } => FailureKind::Undecodable,
            EncodeError::Run { error: run, .. } if run.is_disk_full() => FailureKind::DiskFull,
            EncodeError::Run {
                error: RunError::Stalled { .. },
                ..
            } => FailureKind::EncoderStalled,
            EncodeError::Run { .. } => FailureKind::EncoderFailed,
            EncodeError::Fetch { .. } => FailureKind::SourceFetch,
        };
        UnitFailure {
            kind,
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;

    #[test]
    fn a_full_disk_is_told_apart() {
        // ffmpeg's stderr on a full disk, as a failed run carries it.
        let ffmpeg = EncodeError::Run {
            what: "segment 1 of 240p".into(),
            error: RunError::Failed {
                program: "ffmpeg",
                status: std::process::ExitStatus::from_raw(256),
                stderr: "Error writing trailer of /data/jobs/x/.tmp/a-240p-seg_00001.ts: \
                         No space left on device"
                    .into(),
            },
        };
        assert_eq!(UnitFailure::from(&ffmpeg).kind, FailureKind::DiskFull);
        // Our own storage errors carry the errno.
        let ours = StorageError::new(
            "writing",
            Path::new("/data/jobs/x/.tmp/index.m3u8"),
            std::io::Error::from_raw_os_error(nix::errno::Errno::EDQUOT as i32),
        );
        assert_eq!(UnitFailure::from(&ours).kind, FailureKind::DiskFull);
        let denied = StorageError::new(
            "writing",
            Path::new("/x"),
            std::io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32),
        );
        assert_eq!(UnitFailure::from(&denied).kind, FailureKind::Storage);
        let killed = EncodeError::Run {
            what: "thumbnail".into(),
            error: RunError::Failed {
                program: "ffmpeg",
                status: std::process::ExitStatus::from_raw(9),
                stderr: String::new(),
            },
        };
        assert_eq!(UnitFailure::from(&killed).kind, FailureKind::EncoderFailed);
        assert!(!FailureKind::EncoderFailed.is_source_fault());
        let undecodable = EncodeError::Undecodable {
            what: "segment 1 of 240p".into(),
            media: "video frame",
            start: 4.0,
            end: 8.0,
        };
        let failure = UnitFailure::from(&undecodable);
        assert_eq!(failure.kind, FailureKind::Undecodable);
        assert!(failure.kind.is_source_fault());
        assert!(failure
            .message
            .contains("no decodable video frame from 4.000 s"));
    }
}
