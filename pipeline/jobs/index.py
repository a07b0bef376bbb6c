"""The job index: which jobs exist, newest first, overall and per status, without scanning keys.

Every script that writes a job's state ends by calling `index_job` (the Lua below, prepended to the
script), so the index moves in the same atomic step as the state it describes: a job is listed under
exactly the status its hash holds. Scores are Redis's own clock (TIME in µs, exact in a Lua double), so
replicas with skewed clocks still sort alike and writes within one millisecond keep their order. Each
write also trims the ZSETs it adds to: entries older than the state TTL (their hashes have expired) and
all but the newest JOBS_INDEXED. The ZSETs carry the TTL too.
"""

from __future__ import annotations

from pipeline.jobs.keys import JOB_STATUSES, JOBS_INDEXED, JOBS_RECENT_KEY, jobs_by_status_key

# The keys `index_job` writes, in the order it expects them: recent, then one per status.
INDEX_KEYS: tuple[str, ...] = (JOBS_RECENT_KEY, *(jobs_by_status_key(status) for status in JOB_STATUSES))

# index_job(state key, job id, state ttl s, first KEYS position of INDEX_KEYS)
INDEX_FUNCTION = """
local function index_job(state, job_id, ttl_s, first)
  local time = redis.call('TIME')
  local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local score = string.format('%d', now_us)
  local oldest = string.format('(%d', now_us - tonumber(ttl_s) * 1000000)
  local function add(key)
    redis.call('ZADD', key, score, job_id)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', oldest)
    redis.call('ZREMRANGEBYRANK', key, 0, -(KEPT + 1))
    redis.call('EXPIRE', key, ttl_s)
  end
  add(KEYS[first])
  local status = redis.call('HGET', state, 'status')
  for i, name in ipairs({STATUSES}) do
    local key = KEYS[first + i]
    if name == status then add(key) else redis.call('ZREM', key, job_id) end
  end
end
""".replace("KEPT", str(JOBS_INDEXED)).replace("{STATUSES}", "{" + ", ".join(f"'{s}'" for s in JOB_STATUSES) + "}")


def index_key(status: str | None) -> str:
    """The ZSET to list: every job (None) or those with `status`; ValueError on an unknown status."""
    if status is None:
        return JOBS_RECENT_KEY
    if status not in JOB_STATUSES:
        raise ValueError(f"status must be one of {', '.join(JOB_STATUSES)}, not {status!r}")
    return jobs_by_status_key(status)
