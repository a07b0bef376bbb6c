"""Where finished assets go: the `ObjectStore` protocol, a local-directory store and Supabase Storage.

Keys derive from the job (`{shop}/{product_handle}/{job_id}/{filename}`), so a re-run overwrites
instead of duplicating. Failures leave as the error tree: `TransientError("storage_unavailable")`
for the statuses `is_retryable_status` names (5xx, 408, 425, 429), timeouts and connection errors
(retry the job), `JobRejected("storage_failed")` for the other, permanent 4xx. Supabase answers most
errors with HTTP 400 and the real status as a string in the body's `statusCode` (integrations.md
§1.4); storage3 surfaces it as `StorageApiError.status`. Set-up (`ensure_ready`) raises
`StorageMisconfigured` (pipeline/delivery/buckets.py) when a setting or the bucket must change.
Both stores are synchronous: async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
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
from pipeline.delivery.buckets import BucketInfo, BucketNeeds, StorageMisconfigured, check_bucket, creation_refused
from pipeline.errors import JobRejected, Shop3dError, TransientError, is_retryable_status
from pipeline.settings import DEFAULT_FILE_SIZE_LIMIT, LARGEST_ASSET_BYTES, Settings

logger = logging.getLogger(__name__)

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
        """Idempotent start-up set-up (create the directory or bucket, or check the existing bucket);
        StorageMisconfigured when the settings or the bucket must change, a Shop3dError when storage failed."""

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
    `file_size_limit` is what a bucket we create gets; an existing bucket must accept the largest
    preset budget (or `file_size_limit`, when a caller asks for less).
    """

    def __init__(self, url: str, service_role_key: SecretStr, bucket: str, *, public: bool = True,
                 signed_url_ttl_s: int = 7 * 24 * 3600, upsert: bool = True, timeout_s: float = 60.0,
                 file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT, cache_control_s: int = 3600) -> None:
        self.url, self.bucket, self.public = url.rstrip("/"), bucket, public
        self.signed_url_ttl_s, self.upsert = signed_url_ttl_s, upsert
        self.file_size_limit, self.cache_control_s = file_size_limit, cache_control_s
        self.needs = BucketNeeds(public=public, largest_file=min(file_size_limit, LARGEST_ASSET_BYTES),
                                 content_types=tuple(sorted(set(CONTENT_TYPES.values()))))
        self._secret = service_role_key.get_secret_value()
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                  follow_redirects=False, http2=True)
        headers = {"apikey": self._secret, "Authorization": f"Bearer {self._secret}"}
        self._client = SyncStorageClient(f"{self.url}/storage/v1/", headers, http_client=self._http)

    def __repr__(self) -> str:
        return f"SupabaseObjectStore(url={self.url!r}, bucket={self.bucket!r}, public={self.public})"

    def _fail(self, exc: Exception, action: str, key: str) -> Shop3dError:
        error = storage_error(exc, action, key, self._secret)
        logger.warning("%s [%s]", error.message, error.code)   # the message already says what failed
        return error

    def ensure_ready(self) -> None:
        """Check the existing bucket against `self.needs`, or create it with them; StorageMisconfigured names
        every mismatch (or the setting behind a refused creation), a Shop3dError is storage failing.

        The bucket is read first: the server answers a creation whose size limit is above the project's
        global limit with 413 even when the bucket already exists (integrations.md §1.7).
        """
        existing = self._read_bucket()
        if existing is None:
            if self._create_bucket():
                return
            existing = self._read_bucket()   # another replica created it meanwhile (409)
            if existing is None:
                raise JobRejected("storage_failed", f"storage bucket {self.bucket} exists but cannot be read")
        check_bucket(self.bucket, existing, self.needs)
        if existing.public and not self.public:
            logger.info("storage bucket %s is public: signed URLs work, and its objects are also readable at "
                        "their public URLs", self.bucket)
        logger.info("storage bucket %s exists and suits the settings (public=%s, file_size_limit=%s)",
                    self.bucket, existing.public, existing.file_size_limit)

    def _read_bucket(self) -> BucketInfo | None:
        """The bucket's settings, or None when there is no such bucket."""
        try:
            return self._client.get_bucket(self.bucket)
        except StorageApiError as exc:
            if str(exc.status) == "404":
                return None
            raise self._fail(exc, "bucket lookup", self.bucket) from exc
        except _STORAGE_FAILURES as exc:
            raise self._fail(exc, "bucket lookup", self.bucket) from exc

    def _create_bucket(self) -> bool:
        """Create the bucket with `self.needs`; False when it already exists (409)."""
        options: CreateOrUpdateBucketOptions = {"public": self.public, "file_size_limit": self.file_size_limit,
                                                "allowed_mime_types": list(self.needs.content_types)}
        try:
            self._client.create_bucket(self.bucket, options=options)
        except StorageApiError as exc:
            status = str(exc.status)
            if status == "409":
                return False
            refused = creation_refused(self.bucket, status, _redact(f"{exc.code}: {exc.message}", self._secret)[:200],
                                       self.file_size_limit, self.needs)
            if refused is not None:
                raise refused from exc
            raise self._fail(exc, "bucket creation", self.bucket) from exc
        except _STORAGE_FAILURES as exc:
            raise self._fail(exc, "bucket creation", self.bucket) from exc
        logger.info("created storage bucket %s (public=%s, file_size_limit=%d)", self.bucket, self.public,
                    self.file_size_limit)
        return True

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
                                   signed_url_ttl_s=settings.supabase_signed_url_ttl_s,
                                   file_size_limit=settings.supabase_file_size_limit)
    return LocalObjectStore(settings.local_storage_dir, settings.local_storage_base_url)


class StoreReadiness:
    """A serving replica's store set-up, which reports a failure instead of crashing the replica.

    Serve would retry a failing constructor a few times and give up, with no word on /health. Here a
    failed `ensure_ready` (a misconfigured bucket, storage unreachable) is logged once as an error,
    shown by `report()` and retried at most every `retry_interval_s`, so a fixed bucket is picked up
    without a restart. Jobs meanwhile fail with a retryable `storage_unavailable`.
    """

    def __init__(self, store: ObjectStore, *, retry_interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.retry_interval_s, self._clock = store, retry_interval_s, clock
        self.ready = False
        self.problem: str | None = None   # the last set-up failure, for the log and /health
        self._tried_at: float | None = None
        self._lock = threading.Lock()

    def check(self) -> str | None:
        """Run set-up unless it succeeded or was tried within the interval; the problem left, or None.
        Blocks on the network: call it from a thread in async code."""
        with self._lock:
            due = self._tried_at is None or self._clock() - self._tried_at >= self.retry_interval_s
            if self.ready or not due:
                return self.problem
            self._tried_at = self._clock()
            try:
                self.store.ensure_ready()
            except StorageMisconfigured as exc:
                self._failed(str(exc))
            except Shop3dError as exc:
                self._failed(f"{exc.message} [{exc.code}]")
            else:
                if self.problem is not None:
                    logger.info("storage set-up succeeded (it had failed: %s)", self.problem)
                self.ready, self.problem = True, None
            return self.problem

    def _failed(self, problem: str) -> None:
        if problem != self.problem:   # one error line per distinct problem, not one per retry
            logger.error("storage set-up failed (the replica runs; /health reports it, jobs are retried): %s",
                         problem)
        self.problem = problem

    def require(self) -> None:
        """Return when the store is set up (retrying set-up if due); else a retryable storage_unavailable."""
        problem = self.check()
        if problem is not None:
            raise TransientError("storage_unavailable", f"storage is not set up: {problem}")

    def report(self) -> dict[str, str]:
        """For a replica's `ready()`: `{"storage": "ready"}`, or `{"error": ...}`, which fails /health."""
        problem = self.check()
        return {"storage": "ready"} if problem is None else {"error": f"storage set-up failed: {problem}"}
