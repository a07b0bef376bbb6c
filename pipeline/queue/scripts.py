"""The Lua scripts behind the reliable queue: each step that moves a message is one atomic script.

Atomicity is what makes the design safe with several replicas: a message is always in exactly one
place (the backend queue, one processing list, the delayed ZSET or the dead list), and the checks
that decide where it goes (job completed? lock free? heartbeat alive?) run in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from pipeline.jobs.index import INDEX_FUNCTION

# Admit a taken job. KEYS: state, lock, processing, delayed.
# ARGV: consumer, lock ttl ms, raw, due time for a busy copy (unix s), state ttl s.
# Returns {0, 0} completed already (acked), {1, 0} another consumer runs it (deferred), {2, attempt}.
# The attempt counter is a field of the job's own hash, so it expires with the job however the
# message ends (a global hash would keep the counter of a message that was lost forever).
CLAIM = """
if redis.call('HGET', KEYS[1], 'status') == 'completed' then
  redis.call('LREM', KEYS[3], 1, ARGV[3])
  return {0, 0}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('LREM', KEYS[3], 1, ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
  return {1, 0}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'claims', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {2, attempt}
"""

# Settle a claimed message. KEYS: heartbeat, processing, lock, state, queue, delayed, dead, dead_info,
# then INDEX_KEYS (the job index moves with the state).
# ARGV: mode (ack|retry|dead|release), raw, job_id ('' if unknown), consumer, state ttl s, retry due
#       time (unix s), dead-letter info JSON, dead letters kept, then state field/value pairs.
# Returns 1 settled, 0 the message is no longer in this consumer's list, -1 the heartbeat had lapsed:
# the message (if still ours) went back to the queue instead, so nobody acks it twice (self-fencing).
# The dead list keeps its newest ARGV[8] entries; a dropped raw loses its info entry unless another
# copy of the same bytes is still listed (the info hash is keyed by the raw's sha1).
SETTLE = INDEX_FUNCTION + """
local hb, proc, lock, state, queue, delayed, dead, dead_info = unpack(KEYS)
local mode, raw, job_id, consumer = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function release_lock()
  if job_id ~= '' and redis.call('GET', lock) == consumer then redis.call('DEL', lock) end
end
if mode ~= 'release' and redis.call('EXISTS', hb) == 0 then
  if redis.call('LREM', proc, 1, raw) == 1 then redis.call('RPUSH', queue, raw) end
  release_lock()
  return -1
end
if redis.call('LREM', proc, 1, raw) == 0 then
  release_lock()
  return 0
end
if mode == 'release' then
  redis.call('RPUSH', queue, raw)
  if job_id ~= '' and redis.call('HINCRBY', state, 'claims', -1) <= 0 then redis.call('HDEL', state, 'claims') end
elseif mode == 'retry' then
  redis.call('ZADD', delayed, ARGV[6], raw)
elseif mode == 'dead' then
  redis.call('LPUSH', dead, raw)
  redis.call('HSET', dead_info, redis.sha1hex(raw), ARGV[7])
  while redis.call('LLEN', dead) > tonumber(ARGV[8]) do
    local dropped = redis.call('RPOP', dead)
    if not redis.call('LPOS', dead, dropped) then redis.call('HDEL', dead_info, redis.sha1hex(dropped)) end
  end
  if job_id ~= '' then redis.call('HDEL', state, 'claims') end
else
  if job_id ~= '' then redis.call('HDEL', state, 'claims') end
end
release_lock()
if job_id ~= '' and #ARGV >= 9 then
  if mode ~= 'retry' then redis.call('HDEL', state, 'retry_at') end
  redis.call('HSET', state, unpack(ARGV, 9))
end
if job_id ~= '' and mode == 'retry' then
  -- The next claim clears `error`; the history keeps why each retried attempt failed.
  local fields = {}
  for i = 9, #ARGV - 1, 2 do fields[ARGV[i]] = ARGV[i + 1] end
  local event = {event = 'retry', attempt = tonumber(redis.call('HGET', state, 'attempts')), at = fields['updated_at']}
  if fields['error'] then event.error = cjson.decode(fields['error']) end
  local previous = redis.call('HGET', state, 'history')
  local history = {}
  if previous then history = cjson.decode(previous) end
  table.insert(history, event)
  redis.call('HSET', state, 'history', cjson.encode(history))
end
if job_id ~= '' then
  redis.call('EXPIRE', state, ARGV[5])
  index_job(state, job_id, ARGV[5], 9)
end
return 1
"""

# Requeue a dead consumer's list. KEYS: its heartbeat, its processing list, queue. Returns the count.
# LEFT->RIGHT keeps the order: its oldest claim lands rightmost, so it is taken first, ahead of the backlog.
REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
"""

# Move due retries back to the consumption end. KEYS: delayed, queue. ARGV: now (unix s), batch size.
# Pushed latest-due first, so the earliest-due ends rightmost and runs first.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = #due, 1, -1 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('RPUSH', KEYS[2], due[i])
end
return #due
"""

# Put one message of this consumer's list back at the consumption end. KEYS: processing, queue. ARGV: raw.
HAND_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# Extend the job locks this consumer still holds. KEYS: lock keys. ARGV: consumer, ttl ms.
RENEW_LOCKS = """
local renewed = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
"""


@dataclass(frozen=True)
class QueueScripts:
    """The scripts registered on one client (EVALSHA, reloaded by redis-py after a Redis restart)."""

    claim: AsyncScript
    settle: AsyncScript
    reap: AsyncScript
    promote: AsyncScript
    hand_back: AsyncScript
    renew_locks: AsyncScript

    @classmethod
    def register(cls, redis: aioredis.Redis) -> QueueScripts:
        """Register without a round trip (the first call loads each script)."""
        return cls(claim=redis.register_script(CLAIM), settle=redis.register_script(SETTLE),
                   reap=redis.register_script(REAP), promote=redis.register_script(PROMOTE),
                   hand_back=redis.register_script(HAND_BACK),
                   renew_locks=redis.register_script(RENEW_LOCKS))

# Put a dead letter back on the queue for an operator. KEYS: dead, dead_info, state, queue, INDEX_KEYS.
# ARGV: raw, job id ('' if unknown), state ttl s, now (ISO), who asked. Returns 1, or 0 if it is no
# longer dead-lettered. The job keeps its id and hash; its attempts restart (the claims counter goes),
# the last error and attempt count move into `history` with the requeue, and the `failed` delivery
# record is cleared so the new outcome is reported.
REQUEUE_DEAD = INDEX_FUNCTION + """
local dead, dead_info, state, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local raw, job_id, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('LREM', dead, 1, raw) == 0 then return 0 end
if not redis.call('LPOS', dead, raw) then redis.call('HDEL', dead_info, redis.sha1hex(raw)) end
if job_id ~= '' then
  local previous = redis.call('HMGET', state, 'attempts', 'error', 'history')
  local event = {event = 'requeued', at = now, by = ARGV[5]}
  if previous[1] then event.previous_attempts = tonumber(previous[1]) end
  if previous[2] then event.previous_error = cjson.decode(previous[2]) end
  local history = {}
  if previous[3] then history = cjson.decode(previous[3]) end
  table.insert(history, event)
  redis.call('HDEL', state, 'claims', 'error', 'retry_at', 'finished_at', 'webhook_failed', 'webhook_failed_error')
  redis.call('HSET', state, 'status', 'queued', 'stage', 'requeued', 'progress', '0', 'attempts', '0',
             'history', cjson.encode(history), 'updated_at', now)
  redis.call('EXPIRE', state, ttl)
  index_job(state, job_id, ttl, 5)
end
redis.call('LPUSH', queue, raw)
return 1
"""
