"""The job contract and the queue envelopes around it (ARCHITECTURE.md "Queue input", integrations.md §2).

`parse_message(raw)` accepts the three envelopes the backend may LPUSH (a bare job object, the earlier
README's `{"task","id","args","kwargs"}`, a real Celery message of protocol v1 or v2 from Python celery
or celery-node) and returns a `ParsedMessage` holding the raw bytes unchanged (LREM needs them) and a
validated `Job`. Only JSON bodies are read; pickle, msgpack and yaml are refused, never decoded. Every
refusal is a `JobRejected` with a stable code; when the message names a job id, the rejection carries it
in `details["job_id"]` so the failure can be recorded on that job and reported to the backend.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from pipeline.assets.formats import OutputFormat
from pipeline.errors import JobRejected

TASK_NAME = "generate_3d_model"
MAX_MESSAGE_BYTES = 1024 * 1024   # jobs are a few hundred bytes; anything near this is not a job
MAX_IMAGE_URLS = 8
MAX_URL_CHARS = 4096
MAX_METADATA_BYTES = 16 * 1024    # metadata travels in job state and webhooks: keep it small
MAX_ERRORS_REPORTED = 8           # a rejection names at most this many offending fields

Envelope = Literal["bare", "task", "celery_v1", "celery_v2"]
Quality = Literal["fast", "balanced", "quality"]


def _check_path_segment(value: str) -> str:
    """Ids and slugs become storage keys and Redis keys: '..' or a dots-only name could escape a prefix."""
    if ".." in value or not value.strip("."):
        raise ValueError("must not contain '..' or consist of dots only")
    return value


def _number_to_str(value: Any) -> Any:
    """Shopify ids may arrive as legacy integers; accept them as their decimal string (never bools)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


JobId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"),
                  AfterValidator(_check_path_segment)]
KeySegment = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$"),
                       AfterValidator(_check_path_segment)]
ExternalId = Annotated[str, BeforeValidator(_number_to_str),
                       StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
_JOB_ID_CHECK: TypeAdapter[str] = TypeAdapter(JobId)
ImageUrl = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_URL_CHARS)]


class Job(BaseModel):
    """One request to turn a product's photos into a 3D model; immutable once parsed.

    Unknown fields are ignored (the backend may add some); mistyped or missing ones raise. `shop`,
    `product_handle` and `job_id` are path-safe because object keys are `{shop}/{product_handle}/{job_id}/…`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: JobId
    shop: KeySegment
    product_id: ExternalId
    product_handle: KeySegment
    variant_id: ExternalId | None = None
    image_urls: tuple[ImageUrl, ...] = Field(min_length=1, max_length=MAX_IMAGE_URLS)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # None (absent or null, as backends serialise an unset option): the service's DEFAULT_QUALITY and
    # DEFAULT_FORMATS, filled in where the job enters the job path (pipeline.run.stages.JobDefaults).
    quality: Quality | None = None
    formats: tuple[OutputFormat, ...] | None = Field(default=None, min_length=1)

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, ensure_ascii=False).encode())
        except (TypeError, ValueError):
            raise ValueError("metadata must be JSON-serialisable") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}")
        return value

    @field_validator("formats")
    @classmethod
    def _dedupe_formats(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class ParsedMessage:
    """A queue entry that holds a valid job; `raw` is the exact bytes taken from Redis (for LREM)."""

    raw: bytes
    job: Job
    envelope: Envelope
    task_id: str | None   # the Celery / envelope id; the business id is job.job_id


def parse_message(raw: bytes) -> ParsedMessage:
    """Decode any accepted envelope and validate its job; raises JobRejected with a stable code.

    Codes: malformed_message (size, UTF-8, JSON, base64, shape), unsupported_encoding (non-JSON
    Celery body), unknown_task, invalid_job (the message lists the offending fields).
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise JobRejected("malformed_message", f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    message = _load_json(raw, "message")
    if not isinstance(message, dict):
        raise JobRejected("malformed_message", f"message is a JSON {_json_type(message)}, not an object")
    if "body" in message and ("headers" in message or "properties" in message):
        envelope, task, task_id, fields = _unwrap_celery(message)
    elif "task" in message:
        envelope, task, task_id = "task", message.get("task"), _optional_str(message.get("id"))
        fields = _job_fields(message.get("args"), message.get("kwargs"), task_id)
    else:
        envelope, task, task_id, fields = "bare", TASK_NAME, None, message
    _check_task_name(task)
    return ParsedMessage(raw=raw, job=validate_job(fields, fallback_id=task_id), envelope=envelope,
                         task_id=task_id)


def validate_job(fields: dict[str, Any], *, fallback_id: str | None = None) -> Job:
    """Build a Job from its fields; `job_id` defaults to `fallback_id` (the Celery id). Raises invalid_job."""
    if "job_id" not in fields and fallback_id is not None:
        fields = {**fields, "job_id": fallback_id}
    try:
        return Job.model_validate(fields)
    except ValidationError as exc:
        names, summary = _describe_errors(exc)
        raise JobRejected("invalid_job", f"invalid job: {summary}",
                          **_id_details(fields.get("job_id"), fallback_id), fields=names) from None


def to_queue_message(job: Job) -> bytes:
    """The earlier README's manual-test envelope for `job` (used by `shop3d submit` and POST /jobs).

    The envelope id is the job id, so the same job always gives the same bytes.
    """
    kwargs = {name: value for name, value in job.model_dump(mode="json").items() if value is not None}
    envelope = {"task": TASK_NAME, "id": job.job_id, "args": [], "kwargs": kwargs}
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def _unwrap_celery(message: dict[str, Any]) -> tuple[Envelope, Any, str | None, dict[str, Any]]:
    """(envelope, task name, Celery id, job fields) of a kombu message; v2 names the task in headers."""
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        raise JobRejected("malformed_message", "Celery headers/properties are not objects")
    task_id = _optional_str(headers.get("id") or properties.get("correlation_id")
                            or properties.get("correlationId"))
    ours = headers.get("task") == TASK_NAME
    # An id is worth keeping on a refusal only when the envelope says the job is ours.
    details = _id_details(None, task_id) if ours else {}
    body = _decode_celery_body(message, properties, details)
    if "task" in headers:
        if not isinstance(body, list) or len(body) < 2:
            raise JobRejected("malformed_message", "Celery v2 body is not [args, kwargs, embed]", **details)
        return "celery_v2", headers["task"], task_id, _job_fields(body[0], body[1], task_id)
    if isinstance(body, dict) and "task" in body:
        v1_id = _optional_str(body.get("id"))
        return "celery_v1", body["task"], v1_id, _job_fields(body.get("args"), body.get("kwargs"), v1_id)
    raise JobRejected("malformed_message", "Celery message names no task")


def _decode_celery_body(message: dict[str, Any], properties: dict[str, Any], details: dict[str, Any]) -> Any:
    """The JSON value inside a kombu body; anything but JSON (pickle, msgpack, yaml) is refused unread."""
    content_type = str(message.get("content-type", "application/json")).split(";")[0].strip().lower()
    if content_type != "application/json":
        raise JobRejected("unsupported_encoding", f"body content type {content_type[:64]!r} is not JSON",
                          **details)
    if str(message.get("content-encoding", "utf-8")).lower() not in ("utf-8", "utf8"):
        raise JobRejected("unsupported_encoding", "body content encoding is not utf-8", **details)
    body = message["body"]
    if not isinstance(body, str):
        return body   # a producer that embedded the JSON value directly
    body_encoding = properties.get("body_encoding", "base64")
    if body_encoding != "base64":
        raise JobRejected("unsupported_encoding", f"body encoding {str(body_encoding)[:32]!r} is not base64",
                          **details)
    try:
        decoded = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise JobRejected("malformed_message", "Celery body is not valid base64", **details) from None
    return _load_json(decoded, "Celery body", details)


def _job_fields(args: Any, kwargs: Any, task_id: str | None) -> dict[str, Any]:
    """The job's fields from a task call: kwargs, or a single dict positional argument."""
    details = _id_details(None, task_id)
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise JobRejected("malformed_message", "task args must be a list and kwargs an object", **details)
    if not kwargs and len(args) == 1 and isinstance(args[0], dict):
        return args[0]   # generate_3d_model(job) called positionally
    if args:
        raise JobRejected("malformed_message", "positional task arguments are not supported; send kwargs",
                          **_id_details(kwargs.get("job_id"), task_id))
    return kwargs


def _check_task_name(task: Any) -> None:
    if task != TASK_NAME:
        name = str(task)[:64] if isinstance(task, str) else f"<{_json_type(task)}>"
        raise JobRejected("unknown_task", f"task {name!r} is not {TASK_NAME!r}")


def _load_json(data: bytes, what: str, details: dict[str, Any] | None = None) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise JobRejected("malformed_message", f"{what} is not UTF-8", **(details or {})) from None
    except (ValueError, RecursionError):
        raise JobRejected("malformed_message", f"{what} is not valid JSON", **(details or {})) from None


def _id_details(job_id: Any, fallback_id: str | None) -> dict[str, Any]:
    """{"job_id": …} for a rejection when a usable id is known (a bad id must not reach Redis keys)."""
    for candidate in (job_id, fallback_id):
        if isinstance(candidate, str) and _is_valid_job_id(candidate):
            return {"job_id": candidate}
    return {}


def _is_valid_job_id(value: str) -> bool:
    try:
        _JOB_ID_CHECK.validate_python(value)   # the model's own rule for job_id
    except ValidationError:
        return False
    return True


def _describe_errors(exc: ValidationError) -> tuple[list[str], str]:
    """(field names, short summary) of a ValidationError; input values are never echoed."""
    names: list[str] = []
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = ".".join(str(part) for part in error["loc"]) or "job"
        names.append(name)
        parts.append(f"{name[:64]}: {error['msg'][:120]}")
    hidden = len(parts) - MAX_ERRORS_REPORTED
    summary = "; ".join(parts[:MAX_ERRORS_REPORTED]) + (f"; and {hidden} more" if hidden > 0 else "")
    return names[:MAX_ERRORS_REPORTED], summary


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null", dict: "object"}.get(type(value), type(value).__name__)
