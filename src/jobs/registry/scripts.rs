//! The registry's Lua scripts, one per operation that must be atomic.
//!
//! Each touches only the keys of one job (one hash tag), which the caller
//! passes as KEYS; no key name is spelled here. They decide nothing about a
//! job beyond what their doc says: the job manager makes the decisions.

/// KEYS: job hash. ARGV: new status, record JSON. Sets the status unless the
/// job already ended or the change goes backwards; 1 when it changed.
pub(super) const TRANSITION: &str = r"
local current = redis.call('HGET', KEYS[1], 'status')
local ended = {done = true, partial = true, failed = true, canceled = true}
if current and ended[current] then return 0 end
if current == ARGV[1] then return 0 end
if ARGV[1] == 'processing' and current and current ~= 'queued' then return 0 end
if ARGV[1] == 'playable' and current and current ~= 'queued' and current ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'record', ARGV[2])
return 1
";

/// KEYS: seq, history. ARGV: channel, origin, name, job JSON, history
/// limit, a clock floor for the id. Event ids grow and stay above the clock
/// floor, so ids of events a pod made alone (Redis away) still order.
///
/// Writes the event message `<seq> <origin> <name> <job JSON>` that
/// [`super::wire::parse_event`] reads.
pub(super) const PUBLISH: &str = r"
local seq = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, tonumber(ARGV[6]))
redis.call('SET', KEYS[1], string.format('%.0f', seq))
local message = string.format('%.0f', seq) .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
redis.call('RPUSH', KEYS[2], message)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[1], message)
return string.format('%.0f', seq)
";

/// KEYS: job hash. ARGV: step, this pod's percentage. Returns {1, value}
/// when the step is new (this pod reports it, with `value`, never below a
/// value already reported: pods' views of a job lag each other a little),
/// else {0, the highest value reported}.
pub(super) const PROGRESS: &str = r"
local last = tonumber(redis.call('HGET', KEYS[1], 'progress_step') or '-1')
local reported = tonumber(redis.call('HGET', KEYS[1], 'progress_value') or '0')
if tonumber(ARGV[1]) <= last then return {0, tostring(reported)} end
local value = math.max(reported, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'progress_step', ARGV[1], 'progress_value', tostring(value))
return {1, tostring(value)}
";
