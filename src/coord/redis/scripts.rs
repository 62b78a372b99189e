//! The Lua scripts of the Redis protocol, one per operation (see the key
//! table in the parent module). Each runs atomically on the one slot of its
//! job's hash tag. Claim values are `<token> <worker_id>`; a claim is "ours"
//! only when its token matches, which is what keeps a stale renew, release or
//! complete from touching a newer claim.
//!
//! Owns the script text only; the parent module passes keys and arguments
//! and reads the replies. Nothing here may delete or extend a claim without
//! comparing its token.

use ::redis::Script;

/// The Lua scripts of the protocol, one per operation, hashed once. No other
/// code writes the protocol's keys.
pub(super) struct Scripts {
    pub(super) claim: Script,
    pub(super) renew: Script,
    pub(super) complete: Script,
    pub(super) release: Script,
    pub(super) mark_done: Script,
    pub(super) unmark_done: Script,
    pub(super) peek: Script,
    pub(super) forget: Script,
    pub(super) heartbeat: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
            mark_done: Script::new(MARK_DONE),
            unmark_done: Script::new(UNMARK_DONE),
            peek: Script::new(PEEK),
            forget: Script::new(FORGET),
            heartbeat: Script::new(HEARTBEAT),
        }
    }
}

/// Whether `value` (a claim key's `<token> <worker_id>`) belongs to the token
/// in `ARGV[n]`. Inlined in the scripts that compare tokens.
macro_rules! owns {
    ($value:literal, $argv:literal) => {
        concat!(
            "(",
            $value,
            " and string.sub(",
            $value,
            ", 1, #ARGV[",
            $argv,
            "] + 1) == ARGV[",
            $argv,
            "] .. ' ')"
        )
    };
}

/// KEYS: done, claimed, then one claim key per unit.
/// ARGV: ttl ms, worker id, then (unit, token) per unit.
/// Returns one {status, detail} per unit: {'done', ''}, {'won', ''},
/// {'won', 'takeover'} or {'held', <holder>}.
const CLAIM: &str = r"
local out = {}
for i = 1, #KEYS - 2 do
  local unit = ARGV[1 + 2 * i]
  local token = ARGV[2 + 2 * i]
  local key = KEYS[2 + i]
  if redis.call('SISMEMBER', KEYS[1], unit) == 1 then
    out[i] = {'done', ''}
  elseif redis.call('SET', key, token .. ' ' .. ARGV[2], 'NX', 'PX', ARGV[1]) then
    if redis.call('SADD', KEYS[2], unit) == 0 then
      out[i] = {'won', 'takeover'}
    else
      out[i] = {'won', ''}
    end
  else
    local value = redis.call('GET', key) or ''
    local space = string.find(value, ' ', 1, true)
    out[i] = {'held', space and string.sub(value, space + 1) or ''}
  end
end
return out
";

/// KEYS: claim. ARGV: token, ttl ms. Returns 1 when renewed, 0 when lost.
const RENEW: &str = concat!(
    "local value = redis.call('GET', KEYS[1])\n",
    "if ",
    owns!("value", "1"),
    " then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n",
    "return 0\n"
);

/// KEYS: done, claimed, claim. ARGV: unit, token, channel.
/// Returns 1 when the claim was still ours, 0 when it had been lost.
const COMPLETE: &str = concat!(
    "redis.call('SADD', KEYS[1], ARGV[1])\n",
    "redis.call('SREM', KEYS[2], ARGV[1])\n",
    "local value = redis.call('GET', KEYS[3])\n",
    "local ours = 0\n",
    "if ",
    owns!("value", "2"),
    " then redis.call('DEL', KEYS[3]); ours = 1 end\n",
    "redis.call('PUBLISH', ARGV[3], 'done ' .. ARGV[1])\n",
    "return ours\n"
);

/// KEYS: claim, claimed, attempts. ARGV: unit, token, failed (1/0), channel.
/// Deletes the claim only if it is ours; a claim already gone also frees the
/// unit (the holder gave it back after it expired: no takeover). Returns the
/// attempt count.
const RELEASE: &str = concat!(
    "local value = redis.call('GET', KEYS[1])\n",
    "local ours = ",
    owns!("value", "2"),
    "\n",
    "if ours then redis.call('DEL', KEYS[1]) end\n",
    "if ours or not value then\n",
    "  redis.call('SREM', KEYS[2], ARGV[1])\n",
    "  redis.call('PUBLISH', ARGV[4], 'free ' .. ARGV[1])\n",
    "end\n",
    "if ARGV[3] == '1' then return redis.call('HINCRBY', KEYS[3], ARGV[1], 1) end\n",
    "return tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')\n"
);

/// KEYS: done. ARGV: unit, channel.
const MARK_DONE: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'done ' .. ARGV[1])
return 1
";

/// KEYS: done. ARGV: unit. Storage is the truth: a unit marked done whose
/// file is missing is taken off the done set so it can be claimed again.
const UNMARK_DONE: &str = r"
return redis.call('SREM', KEYS[1], ARGV[1])
";

/// KEYS: done, claim. ARGV: unit. Returns {done 0/1, claim PTTL}, read
/// atomically.
const PEEK: &str = r"
return {redis.call('SISMEMBER', KEYS[1], ARGV[1]), redis.call('PTTL', KEYS[2])}
";

/// KEYS: the job's long-lived keys. ARGV: seconds until they expire.
const FORGET: &str = r"
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return 1
";

/// KEYS: the pods hash. ARGV: worker id, slots, busy slots, TTL ms.
/// Records this pod as `<slots> <busy> <expires ms>` (Redis's clock, so
/// pods' clocks need not agree), drops pods whose entry expired, and
/// returns {pods, slots, busy} over the live ones. The hash itself expires
/// when no pod beats any more.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. (now + ttl))
local pods, slots, busy = 0, 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local s, b, e = string.match(all[i + 1], '^(%d+) (%d+) (%d+)$')
  if e == nil or tonumber(e) < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    pods = pods + 1
    slots = slots + tonumber(s)
    busy = busy + tonumber(b)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return {pods, slots, busy}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_inlined() {
        assert!(RENEW.contains("#ARGV[1] + 1) == ARGV[1] .. ' '"));
        assert!(COMPLETE.contains("#ARGV[2] + 1) == ARGV[2] .. ' '"));
    }
}
