//! Reading every claim of a job (SCAN of its claim keys, then each value):
//! what `holders` and `claim_tokens` answer from. Read-only: it never
//! claims, renews or deletes a key.

use super::{unavailable, RedisCoordinator};
use crate::coord::CoordError;
use crate::redis_link::keys::JobKeys;
use crate::JobId;

/// One claim as stored in Redis: the unit's key suffix and the value
/// `<token> <worker_id>`.
pub(super) struct StoredClaim {
    pub(super) unit: String,
    pub(super) token: String,
    pub(super) worker_id: String,
}

impl RedisCoordinator {
    /// SCANs the job's claim keys and reads each value (`<token>
    /// <worker_id>`). A key that expired between the two steps is skipped.
    pub(super) async fn claims(&self, job: JobId) -> Result<Vec<StoredClaim>, CoordError> {
        let keys = JobKeys::new(job);
        let claim_prefix = keys.claim_prefix();
        let pattern = format!("{claim_prefix}*");
        let fut = async {
            let mut conn = self.pool.get().await?;
            let mut names: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(200)
                    .query_async(&mut *conn)
                    .await?;
                names.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            let mut claims = Vec::new();
            for name in names {
                let value: Option<String> = ::redis::cmd("GET")
                    .arg(&name)
                    .query_async(&mut *conn)
                    .await?;
                let parts = value.as_deref().and_then(|v| v.split_once(' '));
                if let (Some(unit), Some((token, worker))) =
                    (name.strip_prefix(&claim_prefix), parts)
                {
                    claims.push(StoredClaim {
                        unit: unit.to_string(),
                        token: token.to_string(),
                        worker_id: worker.to_string(),
                    });
                }
            }
            Ok(claims)
        };
        self.bounded(fut)
            .await
            .map_err(|err| unavailable(format!("claims of job {job}"), err))
    }
}
