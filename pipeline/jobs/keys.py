"""Every Redis key shop3d owns, in one place (arq's constants module). All live under `shop3d:`.

Every key expires or is bounded: job hashes, locks and heartbeats carry a TTL; the dead-letter and
undelivered-webhook lists keep only their newest `*_KEPT` entries; the delayed ZSET and the processing
lists hold only messages in flight (each entry moves on: promoted when due, reaped when its consumer
dies) and vanish when empty. The backend's queue key itself is QUEUE_NAME (default `celery`) and is
not ours, so it has no prefix.

Keys touched by one script are not hash-tagged: the queue needs a single-node Redis (or Sentinel), as
the backend's fixed key name rules out Redis Cluster slots anyway (integrations.md §3.1).
"""

from __future__ import annotations

PREFIX = "shop3d:"

PROCESSING_PATTERN = PREFIX + "processing:*"   # SCAN pattern of every consumer's processing list
DELAYED_KEY = PREFIX + "delayed"               # ZSET raw message -> unix time it is due again
DEAD_KEY = PREFIX + "dead"                     # LIST of dead-lettered raw messages, newest on the left
DEAD_INFO_KEY = PREFIX + "dead:info"           # HASH sha1(raw) -> JSON {job_id, error, attempts, ts, consumer}
UNDELIVERED_WEBHOOKS_KEY = PREFIX + "webhooks:undelivered"  # LIST of JSON payloads whose delivery finally failed

# Caps of the two lists without a TTL: past it their oldest entries are dropped, a dead letter together
# with its `dead:info` entry. That entry is keyed by sha1 because Lua inside Redis can compute it, so
# the settle script trims both in one atomic step; the digest labels entries, it protects nothing.
DEAD_LETTERS_KEPT = 10_000
UNDELIVERED_WEBHOOKS_KEPT = 10_000


def processing_key(consumer: str) -> str:
    """The list a consumer's claimed-but-unsettled raw messages sit in."""
    return f"{PREFIX}processing:{consumer}"


def consumer_from_processing_key(key: str) -> str:
    """Inverse of `processing_key`."""
    return key.removeprefix(f"{PREFIX}processing:")


def heartbeat_key(consumer: str) -> str:
    """Exists (with a TTL) while the consumer is alive; when it expires, the reapers requeue its list."""
    return f"{PREFIX}consumer:{consumer}:alive"


def job_key(job_id: str) -> str:
    """The job-state hash (status, stage, progress, attempts, assets, error, timestamps); it has a TTL."""
    return f"{PREFIX}job:{job_id}"


def lock_key(job_id: str) -> str:
    """Held (`SET NX PX`, value = consumer) while one consumer runs the job, so two replicas never do."""
    return f"{PREFIX}job:{job_id}:lock"

# The job index: ZSETs of job ids scored by their last state write (unix µs), one of every job and one
# per status, written in the same script as the state (pipeline.jobs.index). Entries older than the
# state's TTL or past the newest JOBS_INDEXED are trimmed on each write, so listing never scans keys.
JOBS_RECENT_KEY = PREFIX + "jobs:recent"
JOB_STATUSES = ("queued", "processing", "completed", "failed")
JOBS_INDEXED = 10_000


def jobs_by_status_key(status: str) -> str:
    """The index ZSET of jobs whose current status is `status`."""
    return f"{PREFIX}jobs:status:{status}"
