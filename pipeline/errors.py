"""The one exception tree of shop3d; callers catch by family, the queue sorts by family.

    Shop3dError                 base; carries a stable `code` and a safe `message`
    ├── JobRejected             terminal: retrying cannot help -> dead-letter at once, `failed` webhook
    └── TransientError          retryable: network blips, a storage 5xx, a GPU out of memory or faulty
                                -> retried up to the attempt limit, then dead-lettered with the same code

Messages are shown to shops and logged: they never contain secrets. Codes are the contract with the
backend (docs/backend-contract.md "Error codes"); add new ones to `ERROR_CODES` with a one-line meaning.
"""

from __future__ import annotations

from typing import Any

ERROR_CODES: dict[str, str] = {
    # queue message and job fields
    "malformed_message": "the queue entry is not valid JSON / UTF-8 / base64, or no known envelope",
    "unsupported_encoding": "a Celery message whose body is not JSON (pickle, msgpack, yaml); never decoded",
    "unknown_task": "a Celery-style message for a task name other than generate_3d_model",
    "invalid_job": "the job fields fail validation (missing, mistyped, empty image_urls, bad quality)",
    # image download
    "url_not_allowed": "the URL scheme is not http(s) or the URL is unparsable",
    "url_blocked": "the URL (or a redirect, or its DNS answer) points at a private/loopback/metadata address",
    "too_many_redirects": "the image URL redirected more times than allowed",
    "image_unreachable": "connection refused, DNS failure, timeout or HTTP 5xx while fetching (retried first)",
    "image_http_error": "the image server answered with a non-200, non-5xx status (404, 403, ...)",
    "content_type_not_allowed": "the image server sent a content type outside the image allowlist",
    "image_too_large": "the image body exceeds the byte cap",
    "empty_image": "the image body is empty",
    # image decode and matting
    "image_undecodable": "the bytes are not a complete image in an allowed format (truncated, HTML, ...)",
    "image_too_many_pixels": "the image exceeds the pixel limit (decompression bomb guard)",
    "image_too_small": "the image is smaller than the minimum side length",
    "no_foreground": "nothing is left after background removal",
    "no_usable_image": "several image URLs were given and none of them could be used",
    # model, export, delivery
    "model_failed": "the TripoSR model failed on this input",
    "gpu_out_of_memory": "the GPU ran out of memory even for this image alone at the smallest query chunk (retried)",
    "gpu_fault": "the GPU replica hit a CUDA fault (illegal address, device-side assert) and is replaced (retried)",
    "empty_mesh": "the reconstructed field has no surface at the threshold",
    "export_failed": "the mesh could not be exported",
    "storage_failed": "the storage backend refused the upload permanently (4xx)",
    "storage_unavailable": "the storage backend is unreachable or answered 5xx/429 (retried first)",
    "attempts_exhausted": "the job was claimed too many times (worker crashes) without finishing",
    "worker_lost": "a pipeline replica died or was unreachable while working on the job (retried)",
    "job_timeout": "the job did not finish within JOB_TIMEOUT_S (retried)",
    "internal_error": "an unexpected exception; the message names its type only",
}


# HTTP answers that mean "not now" rather than "never", besides every 5xx: the one rule that image
# downloads, storage uploads and webhook deliveries all retry by.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status: int | str) -> bool:
    """True for 408, 425, 429 and every 5xx; `status` may be a string (Supabase puts it in the body)."""
    try:
        code = int(status)
    except (TypeError, ValueError):
        return False
    return 500 <= code <= 599 or code in RETRYABLE_STATUSES


class Shop3dError(Exception):
    """A failure with a stable `code` (a key of ERROR_CODES) and a message safe to show a shop."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; add it to ERROR_CODES")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The `error` object of job state and webhooks."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Ray replicas); the default pickling would call cls(message).
        return (_rebuild_error, (type(self), self.code, self.message, self.details))


def _rebuild_error(cls: type[Shop3dError], code: str, message: str, details: dict[str, Any]) -> Shop3dError:
    return cls(code, message, **details)


class JobRejected(Shop3dError):
    """Terminal: the job (or its input) is bad; retrying gives the same answer."""


class TransientError(Shop3dError):
    """Retryable: the outside world failed; the same job may succeed on a later attempt."""


def error_from_exception(exc: BaseException) -> Shop3dError:
    """Map any exception to a Shop3dError; unknown ones become `internal_error` naming only the type.

    The original message of an unknown exception may hold URLs with tokens or keys, so it is not copied.
    """
    if isinstance(exc, Shop3dError):
        return exc
    return JobRejected("internal_error", f"unexpected {type(exc).__name__}")
