"""Errors that come back through DeploymentHandles, sorted into the pipeline's families.

A Shop3dError raised in a replica arrives wrapped in a RayTaskError; a replica that died (SIGKILL,
OOM, node loss) shows up as an actor error. The first is unwrapped so its code survives; the second is
a TransientError("worker_lost"), so the queue retries the job instead of dead-lettering it.
"""

from __future__ import annotations

from typing import NoReturn

from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions

from pipeline.errors import Shop3dError, TransientError

_REPLICA_GONE: tuple[type[BaseException], ...] = (
    ray_exceptions.RayActorError,          # includes ActorDiedError
    ray_exceptions.ActorUnavailableError,
    ray_exceptions.NodeDiedError,
    ray_exceptions.WorkerCrashedError,
    ray_exceptions.ObjectLostError,
    serve_exceptions.DeploymentUnavailableError,
)


def sort_remote_error(exc: BaseException) -> Shop3dError | None:
    """The Shop3dError inside `exc`, `worker_lost` for a dead replica, else None (the caller re-raises
    `exc` unchanged, and the worker files it as `internal_error`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Shop3dError):
            # RayTaskError subclasses the cause's class but may not carry its fields; prefer the cause.
            cause = getattr(current, "cause", None)
            return cause if isinstance(cause, Shop3dError) else current
        if isinstance(current, _REPLICA_GONE):
            return TransientError("worker_lost", f"a pipeline replica was lost ({type(current).__name__})")
        current = getattr(current, "cause", None) or current.__cause__
    return None


def raise_sorted(exc: BaseException) -> NoReturn:
    """Raise the sorted error chained to `exc`, or `exc` itself unchanged when it is not recognised (never an
    exception caused by itself)."""
    known = sort_remote_error(exc)
    if known is None:
        raise exc
    raise known from exc
