"""The project's log lines go into the replica's Serve log file, the one the dashboard shows per replica.

Serve configures only its own `ray.serve` logger (the serve_config's `logging_config`: TEXT or JSON, the
level, `logs/serve/replica_<app>_<deployment>_<id>.log`) and stops it propagating. Our loggers
(`pipeline.*`, `deployments.*`) propagate to the root logger, which in a Ray worker writes to the
worker's stderr file, where nobody looks. Each replica therefore hands our records to `ray.serve`'s
handlers, stamped with the job they belong to (`pipeline.jobs.log_context`). The hand-over happens at
emit time, so a changed `logging_config` (Serve rebuilds its handlers) is followed without a restart.
"""

from __future__ import annotations

import logging

import ray

from pipeline.jobs.log_context import JobIdFilter

PROJECT_LOGGERS = ("pipeline", "deployments")
SERVE_LOGGER = "ray.serve"


class _ToServeLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(SERVE_LOGGER).handle(record)


def send_project_logs_to_replica_log() -> None:
    """Route `pipeline.*` and `deployments.*` records into this replica's Serve log, at Serve's level.
    Idempotent: a replica calls it from its constructor; outside a Ray worker process (a test driving a
    deployment class directly) it does nothing, so the caller's own logging stays as it was."""
    if not _in_ray_worker():
        return
    level = logging.getLogger(SERVE_LOGGER).level or logging.INFO
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _ToServeLog)]:
            logger.removeHandler(old)
        handler = _ToServeLog()
        handler.addFilter(JobIdFilter())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False   # once is enough: not again in the worker's stderr file


def _in_ray_worker() -> bool:
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
