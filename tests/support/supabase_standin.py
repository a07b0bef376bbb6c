"""A STAND-IN for the Supabase Storage API, for tests only: a real local HTTP server, NOT the real server.

Supabase is third-party SaaS that cannot run in CI, so this in-memory server was written from
../shared/integrations.md §1.4 (the REST contract verified against the real server) and follows it:
buckets (create/get/list), upload by POST (multipart as storage3 sends it, or a raw body) and PUT,
`x-upsert`, download, public and signed URLs, info, and the quirk that errors come back as HTTP 400
with the real status as a STRING in the body's `statusCode`. From §1.7 (the real server, checked
later): bucket creation checks the requested `file_size_limit` against the server's global upload
limit (`upload_limit`, 50 MiB by default) BEFORE it checks for a duplicate, so an existing bucket
still gets 413; an invalid bucket name (`a/b`) gets `400 Invalid Input: Bucket name invalid`; a wrong
bearer token gets 403 `AccessDenied`; a public URL into a private bucket answers `Bucket not found`.
Assumed, not recorded: which names are invalid beyond `a/b` (storage-api's `isValidBucketName`
character set, without '/' and '\\'), and the message of a bad token.
`fail_next(status)` makes the next requests fail with a 5xx/429 to exercise retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote

from pipeline.testing.http_server import LocalHTTPServer, Request, Response

PREFIX = "/storage/v1"
DEFAULT_UPLOAD_LIMIT = 50 * 1024 * 1024   # the server's UPLOAD_FILE_SIZE_LIMIT default (integrations.md §1.7)
# storage-api's isValidBucketName: S3-safe characters, never '/' or '\\' (only `a/b` is recorded).
_BUCKET_NAME = re.compile(r"^[\w!.*'() &$@=;:+,?-]+$", re.ASCII)
ERRORS: dict[str, dict[str, str]] = {  # integrations.md §1.4 and §1.7 (bad_auth's error and message assumed)
    "no_auth": {"statusCode": "400", "error": "Error", "code": "InvalidRequest",
                "message": "headers must have required property 'authorization'"},
    "bad_auth": {"statusCode": "403", "error": "Unauthorized", "message": "invalid signature", "code": "AccessDenied"},
    "bad_bucket_name": {"statusCode": "400", "error": "Invalid Input", "message": "Bucket name invalid"},
    "duplicate": {"statusCode": "409", "error": "Duplicate", "message": "The resource already exists",
                  "code": "KeyAlreadyExists"},
    "duplicate_bucket": {"statusCode": "409", "error": "Duplicate", "message": "The resource already exists",
                         "code": "BucketAlreadyExists"},
    "no_bucket": {"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found",
                  "code": "NoSuchBucket"},
    "no_object": {"statusCode": "404", "error": "not_found", "message": "Object not found", "code": "NoSuchKey"},
    "too_large": {"statusCode": "413", "error": "Payload too large",
                  "message": "The object exceeded the maximum allowed size", "code": "EntityTooLarge"},
}
FAILURE_BODIES: dict[int, tuple[str, bytes]] = {
    500: ("application/json", b'{"statusCode":"500","error":"internal","message":"Internal Server Error"}'),
    503: ("text/plain", b"upstream connect error or disconnect/reset before headers"),  # a proxy's answer
    429: ("application/json", b'{"statusCode":"429","error":"too_many_requests","message":"Too Many Requests"}'),
}


@dataclass
class StoredBucket:
    id: str
    public: bool
    file_size_limit: int | None
    allowed_mime_types: list[str] | None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


@dataclass
class StoredFile:
    data: bytes
    content_type: str
    cache_control: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    last_modified: str = field(default_factory=lambda: formatdate(usegmt=True))


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _error(name: str, **override: str) -> Response:
    return _json(400, {**ERRORS[name], **override})  # the quirk: HTTP 400 whatever the real status


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str, bytes]]:
    """Form fields of a multipart/form-data body: name -> (part content type, bytes)."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields: dict[str, tuple[str, bytes]] = {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part[2:].partition(b"\r\n\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.decode().partition(":") for line in head.split(b"\r\n") if line)}
        name = headers["content-disposition"].split('name="', 1)[1].split('"', 1)[0]
        fields[name] = (headers.get("content-type", "text/plain"), data[:-2])
    return fields


class SupabaseStandIn:
    """In-memory Storage API at `self.url` (use it as SUPABASE_URL); `service_key` is the accepted bearer,
    `upload_limit` the global upload limit in bytes (a test may lower it, as a small project has)."""

    def __init__(self, service_key: str = "standin-service-role-key",
                 upload_limit: int = DEFAULT_UPLOAD_LIMIT) -> None:
        self.service_key = service_key
        self.upload_limit = upload_limit
        self.buckets: dict[str, StoredBucket] = {}
        self.files: dict[tuple[str, str], StoredFile] = {}
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._signing_key = uuid.uuid4().bytes
        self.http = LocalHTTPServer()
        self.http.route_prefix(PREFIX + "/", self._handle)

    @property
    def url(self) -> str:
        return self.http.url("").rstrip("/")

    @property
    def requests(self) -> list[Request]:
        return self.http.requests

    def reset(self) -> None:
        """Forget buckets, files, queued failures and the request log, and restore the default upload limit
        (reuse one server across tests)."""
        with self._lock:
            self.upload_limit = DEFAULT_UPLOAD_LIMIT
            self.buckets.clear()
            self.files.clear()
            self._failures.clear()
            self.http.requests.clear()

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next `count` requests with `status` before doing anything: 500, 503 and 429 as a
        gateway or the server sends them, any other 4xx in Supabase's HTTP-400 shape."""
        with self._lock:
            self._failures.extend([status] * count)

    def clear_failures(self) -> None:
        """Drop the failures `fail_next` queued and no request consumed."""
        with self._lock:
            self._failures.clear()

    def __enter__(self) -> SupabaseStandIn:
        self.http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.stop()

    # --- routing -------------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            if failure is not None and failure in FAILURE_BODIES:
                content_type, body = FAILURE_BODIES[failure]
                return Response(failure, body, {"Content-Type": content_type})
            if failure is not None:  # other 4xx: Supabase's own shape, HTTP 400 with the status as a string
                return _json(400, {"statusCode": str(failure), "error": "injected", "message": "injected failure"})
            return self._route(request, unquote(request.path[len(PREFIX):]))

    def _route(self, request: Request, path: str) -> Response:
        method = request.method
        if method == "GET" and path.startswith("/object/public/"):
            return self._download(*self._split(path, "/object/public/"), public_only=True)
        if method == "GET" and path.startswith("/object/sign/"):
            return self._signed_download(request, *self._split(path, "/object/sign/"))
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if path == "/bucket":
            return self._create_bucket(request) if method == "POST" else _json(200, [
                self._bucket_json(b) for b in self.buckets.values()])
        if path.startswith("/bucket/") and method == "GET":
            found = self.buckets.get(path[len("/bucket/"):])
            return _json(200, self._bucket_json(found)) if found else _error("no_bucket")
        if path.startswith("/object/info/"):
            return self._info(*self._split(path, "/object/info/"))
        if path.startswith("/object/sign/") and method == "POST":
            return self._sign(request, *self._split(path, "/object/sign/"))
        if path.startswith("/object/authenticated/") and method == "GET":
            return self._download(*self._split(path, "/object/authenticated/"))
        if path.startswith("/object/"):
            bucket, key = self._split(path, "/object/")
            if method in ("POST", "PUT"):
                return self._upload(request, bucket, key, overwrite=method == "PUT")
            if method == "GET":
                return self._download(bucket, key)
        return Response(404, b'{"message":"Route not found"}', {"Content-Type": "application/json"})

    @staticmethod
    def _split(path: str, prefix: str) -> tuple[str, str]:
        bucket, _, key = path[len(prefix):].partition("/")
        return bucket, key

    def _check_auth(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization")
        if auth is None:
            return _error("no_auth")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.service_key}".encode()):
            return _error("bad_auth")
        return None

    # --- buckets -------------------------------------------------------------------------------
    @staticmethod
    def _bucket_json(bucket: StoredBucket) -> dict[str, Any]:
        return {"id": bucket.id, "name": bucket.id, "owner": "", "public": bucket.public,
                "file_size_limit": bucket.file_size_limit, "allowed_mime_types": bucket.allowed_mime_types,
                "created_at": bucket.created_at, "updated_at": bucket.created_at}

    def _create_bucket(self, request: Request) -> Response:
        """The real server's order: the name, then the size limit against the global one, then duplicates."""
        body = json.loads(request.body or b"{}")
        if not _BUCKET_NAME.match(str(body.get("id", ""))):
            return _error("bad_bucket_name")
        limit = body.get("file_size_limit")
        if limit is not None and limit > self.upload_limit:
            return _error("too_large")   # even when the bucket exists (integrations.md §1.7)
        if body["id"] in self.buckets:
            return _error("duplicate_bucket")
        self.buckets[body["id"]] = StoredBucket(body["id"], bool(body.get("public", False)),
                                                body.get("file_size_limit"), body.get("allowed_mime_types"))
        return _json(200, {"name": body["id"]})

    # --- objects -------------------------------------------------------------------------------
    def _upload(self, request: Request, bucket_id: str, key: str, overwrite: bool) -> Response:
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            return _error("no_bucket")
        request_type = request.headers.get("content-type", "")
        if request_type.startswith("multipart/form-data"):
            fields = parse_multipart(request.body, request_type)
            content_type, data = fields["file"]
            cache_control = fields.get("cacheControl", ("", b"3600"))[1].decode()
        else:
            content_type, data = request_type or "text/plain", request.body
            cache_control = request.headers.get("cache-control", "3600").removeprefix("max-age=")
        limit = min(bucket.file_size_limit or self.upload_limit, self.upload_limit)   # None/0: the global limit
        if len(data) > limit:
            return _error("too_large")
        mime = content_type.split(";")[0].strip()
        if bucket.allowed_mime_types and not any(
                mime == allowed or (allowed.endswith("/*") and mime.startswith(allowed[:-1]))
                for allowed in bucket.allowed_mime_types):
            return _json(400, {"statusCode": "415", "error": "invalid_mime_type",
                               "message": f"mime type {mime} is not supported"})
        upsert = request.headers.get("x-upsert", "false") == "true"
        if (bucket_id, key) in self.files and not (overwrite or upsert):
            return _error("duplicate")
        stored = StoredFile(data, content_type, cache_control)
        self.files[(bucket_id, key)] = stored
        return _json(200, {"Key": f"{bucket_id}/{key}", "Id": stored.id})

    def _download(self, bucket_id: str, key: str, public_only: bool = False) -> Response:
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            return _error("no_bucket")
        if public_only and not bucket.public:
            return _error("no_bucket")   # the real server's answer (integrations.md §1.7)
        stored = self.files.get((bucket_id, key))
        if stored is None:
            return _error("no_object")
        return Response(200, stored.data, {
            "Content-Type": stored.content_type, "Cache-Control": f"max-age={stored.cache_control}",
            "ETag": f'"{hashlib.md5(stored.data, usedforsecurity=False).hexdigest()}"', "Accept-Ranges": "bytes",
            "Last-Modified": stored.last_modified})

    def _info(self, bucket_id: str, key: str) -> Response:
        if bucket_id not in self.buckets:
            return _error("no_bucket")
        stored = self.files.get((bucket_id, key))
        if stored is None:
            return _error("no_object")
        return _json(200, {"id": stored.id, "name": key, "version": stored.id, "bucket_id": bucket_id,
                           "size": len(stored.data), "content_type": stored.content_type,
                           "cache_control": f"max-age={stored.cache_control}",
                           "etag": f'"{hashlib.md5(stored.data, usedforsecurity=False).hexdigest()}"', "metadata": {},
                           "last_modified": stored.last_modified, "created_at": stored.last_modified})

    # --- signed URLs (a JWT-shaped HS256 token over {url, exp}, like the real server's) -----------
    def _token(self, claims: dict[str, Any]) -> str:
        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64(signature)

    def _sign(self, request: Request, bucket_id: str, key: str) -> Response:
        if bucket_id not in self.buckets:
            return _error("no_bucket")
        if (bucket_id, key) not in self.files:
            return _error("no_object")
        expires_in = int(json.loads(request.body or b"{}").get("expiresIn", 60))  # storage3 sends a str
        token = self._token({"url": f"{bucket_id}/{key}", "exp": int(time.time()) + expires_in})
        return _json(200, {"signedURL": f"/object/sign/{bucket_id}/{key}?token={token}"})

    def _signed_download(self, request: Request, bucket_id: str, key: str) -> Response:
        token = parse_qs(request.query).get("token", [""])[0]
        header_payload, _, _ = token.rpartition(".")
        try:
            claims = json.loads(base64.urlsafe_b64decode(header_payload.split(".")[1] + "=="))
            valid = (hmac.compare_digest(self._token(claims), token) and claims["url"] == f"{bucket_id}/{key}"
                     and claims["exp"] > time.time())
        except (ValueError, IndexError, KeyError):
            valid = False
        if not valid:
            return _json(400, {"statusCode": "400", "error": "InvalidJWT", "message": "invalid signature"})
        return self._download(bucket_id, key)


TEST_SERVICE_KEY = "sk-test-ServiceRoleKey-7f3a9c21e5"   # a test credential the stand-in accepts

