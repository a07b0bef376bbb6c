"""Which job a log line belongs to: the job's code path sets a context variable, and a filter stamps
it on every record as `shop3d_job_id`.

JSON logs (Ray Serve's replica logs in production) then carry the job as a field an operator can
filter on. It has its own name because Ray's JSON lines already use `job_id` for the Ray job. A
context variable follows the job into its asyncio tasks and into `asyncio.to_thread`, so lines from
library code that never sees the job (the HTTP client, the exporters) are stamped too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

LOG_FIELD = "shop3d_job_id"
_current_job_id: ContextVar[str | None] = ContextVar(LOG_FIELD, default=None)


@contextmanager
def job_logging(job_id: str) -> Iterator[None]:
    """Lines logged inside this block (and in tasks or threads it starts) belong to `job_id`."""
    token = _current_job_id.set(job_id)
    try:
        yield
    finally:
        _current_job_id.reset(token)


class JobIdFilter(logging.Filter):
    """Adds `shop3d_job_id` to records logged while a job is current (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _current_job_id.get()
        if job_id is not None and not hasattr(record, LOG_FIELD):
            setattr(record, LOG_FIELD, job_id)
        return True
