"""How the ingress sorts what comes back through DeploymentHandles: a replica's Shop3dError keeps its code, a
lost replica is the retried `worker_lost`, and anything else is re-raised unchanged, never as its own cause."""

from __future__ import annotations

import pytest
from ray import exceptions as ray_exceptions

from deployments.remote_errors import raise_sorted, sort_remote_error
from pipeline.errors import JobRejected, TransientError


def test_a_shop3d_error_inside_a_chain_keeps_its_code() -> None:
    inner = JobRejected("export_failed", "GLB over budget")
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert sort_remote_error(outer) is inner


def test_a_lost_replica_is_worker_lost() -> None:
    error = sort_remote_error(ray_exceptions.ActorDiedError())
    assert isinstance(error, TransientError) and error.code == "worker_lost"


def test_an_unknown_error_is_reraised_unchanged_and_not_its_own_cause() -> None:
    original = KeyError("no such thing")
    assert sort_remote_error(original) is None
    with pytest.raises(KeyError) as caught:
        raise_sorted(original)
    assert caught.value is original
    assert caught.value.__cause__ is not caught.value


def test_a_sorted_error_is_chained_to_what_came_back() -> None:
    lost = ray_exceptions.ActorDiedError()
    with pytest.raises(TransientError) as caught:
        raise_sorted(lost)
    assert caught.value.__cause__ is lost and caught.value.code == "worker_lost"
