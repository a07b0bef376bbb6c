"""The exception tree: codes are checked, errors survive pickling (they cross Ray process boundaries),
and unknown exceptions never leak their message."""

from __future__ import annotations

import pickle

import pytest

from pipeline.errors import ERROR_CODES, JobRejected, Shop3dError, TransientError, error_from_exception


@pytest.mark.parametrize("error", [JobRejected("no_foreground", "nothing left", url="https://x/a.jpg"),
                                   TransientError("image_unreachable", "down")])
def test_errors_round_trip_through_pickle_with_code_and_details(error: Shop3dError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.code, copy.message, copy.details) == (error.code, error.message, error.details)
    assert copy.to_dict() == error.to_dict()


def test_unknown_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        JobRejected("made_up", "x")


def test_unexpected_exceptions_become_internal_error_naming_only_the_type() -> None:
    error = error_from_exception(KeyError("https://bucket/key?token=SECRET"))
    assert error.code == "internal_error" and "SECRET" not in error.message and "KeyError" in error.message


def test_every_code_has_a_meaning() -> None:
    assert all(isinstance(text, str) and len(text) > 10 for text in ERROR_CODES.values())
