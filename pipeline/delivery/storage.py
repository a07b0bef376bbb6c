"""Where finished assets go: the `ObjectStore` protocol, a local-directory store and Supabase Storage.

Keys derive from the job (`{shop}/{product_handle}/{job_id}/{filename}`), so a re-run overwrites
instead of duplicating. Failures leave as the error tree: `TransientError("storage_unavailable")`
for the statuses `is_retryable_status` names (5xx, 408, 425, 429), timeouts and connection errors
(retry the job), `JobRejected("storage_failed")` for the other, permanent 4xx. Supabase answers most
errors with HTTP 400 and the real status as a string in the body's `statusCode` (integrations.md
§1.4); storage3 surfaces it as `StorageApiError.status`.
Both stores are synchronous: async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx
from pydantic import SecretStr
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.types import CreateOrUpdateBucketOptions, FileOptions
from storage3.utils import StorageException

from pipeline.assets.formats import CONTENT_TYPES
from pipeline.errors import JobRejected, Shop3dError, TransientError, is_retryable_status
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_FILE_SIZE_LIMIT = 50 * 1024 * 1024   # hosted Supabase Free plan's global cap; presets stay far below
_SEGMENT = re.compile(r"^[A-Za-z0-9._:-]+$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class StoredObject:
    """An object as stored: its key, an absolute URL that serves it, and its size in bytes."""

    key: str
    url: str
    size: int


class ObjectStore(Protocol):
    """Blob storage for job outputs; every method may raise TransientError or JobRejected."""

    def ensure_ready(self) -> None:
        """Idempotent start-up set-up (create the directory or bucket)."""

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store `data` under `key`, overwriting; returns where it can be fetched."""

    def url_for(self, key: str) -> str:
        """An absolute URL for `key` (public, or signed with the configured lifetime)."""

    def close(self) -> None: ...


class JobIdentity(Protocol):
    """The job fields a key is made of (pipeline.jobs.envelopes.Job has them, read-only: it is frozen)."""

    @property
    def shop(self) -> str: ...
    @property
    def product_handle(self) -> str: ...
    @property
    def job_id(self) -> str: ...


def object_key(job: JobIdentity, filename: str) -> str:
    """`{shop}/{product_handle}/{job_id}/{filename}`; ValueError on a segment that could escape its prefix."""
    segments = (job.shop, job.product_handle, job.job_id)
    for segment in segments:
        if not _SEGMENT.match(segment) or not segment.strip(".") or ".." in segment:
            raise ValueError(f"unsafe storage key segment {segment[:80]!r}")
    if not _FILENAME.match(filename):
        raise ValueError(f"unsafe file name {filename[:80]!r}")
    return "/".join((*segments, filename))


def check_key(key: str) -> str:
    """Reject keys that are absolute, empty in a segment, or use '.'/'..' (they could leave the root)."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts) \
            or any(ord(ch) < 32 for ch in key):
        raise ValueError(f"invalid storage key {key[:120]!r}")
    return key


class LocalObjectStore:
    """Files under `root` (the embedded choice for one machine); URLs are `base_url/key` or file://."""

    def __init__(self, root: Path, base_url: str | None = None) -> None:
        self.root = Path(root)
        self.base_url = base_url.rstrip("/") if base_url else None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def ensure_ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Write atomically (temp file in the same directory, fsync, rename): readers never see half a file."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from a web server serving root
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TransientError("storage_unavailable", f"cannot write {key}: {exc.strerror}") from exc
        logger.info("stored %s locally (%d bytes, %s)", key, len(data), content_type)
        return StoredObject(key=key, url=self.url_for(key), size=len(data))

    def url_for(self, key: str) -> str:
        if self.base_url:
            return f"{self.base_url}/{quote(check_key(key))}"
        return self._path(key).resolve().as_uri()

    def close(self) -> None:
        """Nothing to release."""


class DirectoryStore(LocalObjectStore):
    """Files named by the key's last segment directly under `root`: the CLI's `--out DIR`, where one
    run writes `model.glb` beside `summary.json` rather than a `{shop}/{handle}/{job_id}/` tree."""

    def _path(self, key: str) -> Path:
        return self.root / check_key(key).rsplit("/", 1)[-1]


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def storage_error(exc: Exception, action: str, key: str, secret: str = "") -> Shop3dError:
    """Sort a storage3/httpx failure into the error tree; the message never carries `secret`."""
    if isinstance(exc, StorageApiError):
        status = str(exc.status)
        detail = _redact(f"{exc.code}: {exc.message}", secret)[:200]
        if is_retryable_status(status):
            return TransientError("storage_unavailable", f"storage {action} of {key} got {status} ({detail})",
                                  status=status)
        return JobRejected("storage_failed", f"storage {action} of {key} refused with {status} ({detail})",
                           status=status)
    if isinstance(exc, httpx.TransportError):  # connect/read/write errors and timeouts
        return TransientError("storage_unavailable", f"storage {action} of {key} failed: {type(exc).__name__}")
    # Anything else (an unexpected response shape) names its type only: its text is not ours to vouch for.
    return JobRejected("storage_failed", f"storage {action} of {key} failed: {type(exc).__name__}")


# ValueError covers a malformed JSON answer (json and pydantic errors derive from it); keys are checked first.
_STORAGE_FAILURES = (StorageException, httpx.HTTPError, ValueError)


class SupabaseObjectStore:
    """Supabase Storage through storage3 (supabase-py's storage client) with the service-role key.

    We build storage3's client with our own httpx.Client instead of `create_client`: no auth or
    realtime clients are needed, and timeouts and redirects are set here rather than library defaults.
    """

    def __init__(self, url: str, service_role_key: SecretStr, bucket: str, *, public: bool = True,
                 signed_url_ttl_s: int = 7 * 24 * 3600, upsert: bool = True, timeout_s: float = 60.0,
                 file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT, cache_control_s: int = 3600) -> None:
        self.url, self.bucket, self.public = url.rstrip("/"), bucket, public
        self.signed_url_ttl_s, self.upsert = signed_url_ttl_s, upsert
        self.file_size_limit, self.cache_control_s = file_size_limit, cache_control_s
        self._secret = service_role_key.get_secret_value()
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                  follow_redirects=False, http2=True)
        headers = {"apikey": self._secret, "Authorization": f"Bearer {self._secret}"}
        self._client = SyncStorageClient(f"{self.url}/storage/v1/", headers, http_client=self._http)

    def __repr__(self) -> str:
        return f"SupabaseObjectStore(url={self.url!r}, bucket={self.bucket!r}, public={self.public})"

    def _fail(self, exc: Exception, action: str, key: str) -> Shop3dError:
        error = storage_error(exc, action, key, self._secret)
        logger.warning("storage %s of %s failed: %s %s", action, key, error.code, error.message)
        return error

    def ensure_ready(self) -> None:
        """Create the bucket with its MIME allowlist and size limit; an existing bucket (409) is fine."""
        options: CreateOrUpdateBucketOptions = {"public": self.public, "file_size_limit": self.file_size_limit,
                                                "allowed_mime_types": sorted(set(CONTENT_TYPES.values()))}
        try:
            self._client.create_bucket(self.bucket, options=options)
            logger.info("created storage bucket %s (public=%s)", self.bucket, self.public)
        except StorageApiError as exc:
            if str(exc.status) != "409":
                raise self._fail(exc, "bucket creation", self.bucket) from exc
            logger.info("storage bucket %s already exists", self.bucket)
        except _STORAGE_FAILURES as exc:
            raise self._fail(exc, "bucket creation", self.bucket) from exc

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Upload with an explicit content type (storage3 would default to text/plain) and upsert."""
        check_key(key)
        options: FileOptions = {"content-type": content_type, "cache-control": str(self.cache_control_s),
                                "upsert": "true" if self.upsert else "false"}  # a str: storage3 encodes headers
        try:
            self._client.from_(self.bucket).upload(key, data, options)
            logger.info("stored %s in bucket %s (%d bytes, %s)", key, self.bucket, len(data), content_type)
        except StorageApiError as exc:
            if str(exc.status) != "409":
                raise self._fail(exc, "upload", key) from exc
            # Only without upsert: a re-delivered job finds its own earlier upload; keys are per job.
            logger.info("%s is already in bucket %s; keeping it", key, self.bucket)
        except _STORAGE_FAILURES as exc:
            raise self._fail(exc, "upload", key) from exc
        return StoredObject(key=key, url=self.url_for(key), size=len(data))

    def url_for(self, key: str) -> str:
        bucket = self._client.from_(self.bucket)
        if self.public:
            return bucket.get_public_url(check_key(key))
        check_key(key)
        try:
            signed = bucket.create_signed_url(key, self.signed_url_ttl_s)
        except _STORAGE_FAILURES as exc:
            raise self._fail(exc, "signing", key) from exc
        url = signed.get("signedURL")
        if not url:
            raise JobRejected("storage_failed", f"storage signing of {key} returned no URL")
        return url

    def close(self) -> None:
        self._http.close()


def make_object_store(settings: Settings) -> ObjectStore:
    """The store `settings.storage_backend` names, built once by the app builder or CLI."""
    if settings.storage_backend == "supabase":
        if not settings.supabase_url or settings.supabase_service_role_key is None:
            raise ValueError("STORAGE_BACKEND=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        return SupabaseObjectStore(settings.supabase_url, settings.supabase_service_role_key,
                                   settings.supabase_bucket_name, public=not settings.supabase_signed_urls,
                                   signed_url_ttl_s=settings.supabase_signed_url_ttl_s)
    return LocalObjectStore(settings.local_storage_dir, settings.local_storage_base_url)
