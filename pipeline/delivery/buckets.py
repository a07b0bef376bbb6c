"""What shop3d needs of its Supabase Storage bucket, checked once at start-up instead of per job.

A bucket made by hand (or by an older shop3d) may not suit the settings, and each mismatch otherwise
shows up only as jobs go by: public URLs into a private bucket answer "Bucket not found" to everyone
(integrations.md §1.7), an allowlist without `image/png` refuses the poster with 415 after the GLB
was stored, a small size limit refuses big GLBs with 413. `StorageMisconfigured` names every
mismatch with its fix. shop3d never changes an existing bucket: its settings are the operator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class StorageMisconfigured(ValueError):
    """The bucket (or the settings that name it) cannot serve shop3d's files; the message says how to fix it.
    A start-up error, not a job's: the replica reports it on /health instead of failing jobs one by one."""


class BucketInfo(Protocol):
    """The fields of a bucket that matter here (storage3's `get_bucket` answer has them)."""

    @property
    def public(self) -> bool: ...
    @property
    def file_size_limit(self) -> int | None: ...
    @property
    def allowed_mime_types(self) -> Sequence[str] | None: ...


@dataclass(frozen=True)
class BucketNeeds:
    """What the store uploads and how it links to it.

    Public URLs need a public bucket. Signed URLs work on either, so a public bucket with signed URLs
    passes (its objects are then also readable at their public URL, which the check only logs).
    """

    public: bool                      # the store hands out public URLs (SUPABASE_SIGNED_URLS=false)
    largest_file: int                 # bytes: the biggest file the store will upload
    content_types: tuple[str, ...]    # every content type the store will upload


def mime_allowed(content_type: str, allowlist: Sequence[str] | None) -> bool:
    """True when an allowlist admits `content_type`; None or empty admits everything, `image/*` a family."""
    if not allowlist:
        return True
    return any(content_type == allowed or (allowed.endswith("/*") and content_type.startswith(allowed[:-1]))
               for allowed in allowlist)


def bucket_mismatches(bucket: BucketInfo, needs: BucketNeeds) -> list[str]:
    """Each way `bucket` fails `needs`, as one sentence with its fix; empty when it suits."""
    problems = []
    if needs.public and not bucket.public:
        problems.append(
            "it is private (public=false) but SUPABASE_SIGNED_URLS=false hands out public URLs, which a private "
            "bucket answers with 'Bucket not found': make the bucket public, or set SUPABASE_SIGNED_URLS=true")
    limit = bucket.file_size_limit
    if limit and limit < needs.largest_file:   # None or 0: the project's global limit applies
        problems.append(
            f"its file size limit is {limit} bytes but shop3d uploads files of up to {needs.largest_file} bytes: "
            "raise the bucket's limit to at least that, or clear it")
    missing = [kind for kind in needs.content_types if not mime_allowed(kind, bucket.allowed_mime_types)]
    if missing:
        problems.append(
            f"its allowed MIME types {list(bucket.allowed_mime_types or [])} lack {', '.join(missing)}: add "
            f"{'them' if len(missing) > 1 else 'it'} to the bucket's allowed MIME types, or clear the list")
    return problems


def check_bucket(name: str, bucket: BucketInfo, needs: BucketNeeds) -> None:
    """Raise StorageMisconfigured listing every mismatch of an existing bucket; return when it suits."""
    problems = bucket_mismatches(bucket, needs)
    if problems:
        listed = "; ".join(f"({number}) {problem}" for number, problem in enumerate(problems, 1))
        raise StorageMisconfigured(f"storage bucket {name!r} does not suit the settings: {listed}")


def creation_refused(name: str, status: str, detail: str, requested_limit: int,
                     needs: BucketNeeds) -> StorageMisconfigured | None:
    """The error for a bucket creation the server refused for a reason a setting fixes, else None.

    413: the requested file size limit is above the project's global upload limit (the server checks
    this before it checks whether the bucket exists). 400 about the name: it is invalid (e.g. it holds
    a '/'). `detail` is the server's answer, already free of secrets.
    """
    if status == "413":
        return StorageMisconfigured(
            f"cannot create storage bucket {name!r} with a file size limit of {requested_limit} bytes: the server "
            f"refused it with 413 ({detail}), so the project's global upload limit is lower. Set "
            f"SUPABASE_FILE_SIZE_LIMIT to at most that limit (and at least {needs.largest_file}, the largest "
            "file shop3d uploads), raise the project's upload limit, or create the bucket yourself")
    if status == "400" and "bucket name" in detail.lower():   # "Invalid Input: Bucket name invalid"
        return StorageMisconfigured(
            f"cannot create storage bucket {name!r}: the server refused it with 400 ({detail}). Set "
            "SUPABASE_BUCKET_NAME to a valid bucket name (letters, digits, '-', '_' or '.', no '/')")
    return None
