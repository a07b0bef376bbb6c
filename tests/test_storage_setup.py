"""Storage set-up against the Supabase stand-in: the bucket size limit setting, the check of an existing
bucket (public flag, size limit, MIME allowlist), refused creations, and a replica's readiness report.

The stand-in (tests/support/supabase_standin.py) follows the real server's recorded behaviour
(integrations.md §1.4, §1.7), including a 413 on creation above the global limit even for an existing bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from storage3 import SyncStorageClient

from pipeline.assets.formats import CONTENT_TYPES
from pipeline.delivery.buckets import StorageMisconfigured
from pipeline.delivery.storage import StoreReadiness, SupabaseObjectStore, make_object_store
from pipeline.errors import TransientError
from pipeline.presets import PRESETS
from pipeline.settings import DEFAULT_FILE_SIZE_LIMIT, LARGEST_ASSET_BYTES, Settings
from pipeline.testing.redis_server import free_port
from tests.support.supabase_standin import TEST_SERVICE_KEY, StoredBucket, SupabaseStandIn

SERVICE_KEY = TEST_SERVICE_KEY
MIB = 1024 * 1024
ALL_TYPES = sorted(set(CONTENT_TYPES.values()))




@pytest.fixture
def make_store(standin: SupabaseStandIn) -> Iterator[Callable[..., SupabaseObjectStore]]:
    """SupabaseObjectStores on the stand-in, set up by the test itself; all closed after."""
    made: list[SupabaseObjectStore] = []

    def build(bucket: str = "3d-models", url: str | None = None, **options: Any) -> SupabaseObjectStore:
        made.append(SupabaseObjectStore(url or standin.url, SecretStr(SERVICE_KEY), bucket, **options))
        return made[-1]

    yield build
    for store in made:
        store.close()


def existing(standin: SupabaseStandIn, *, public: bool = True, limit: int | None = None,
             types: list[str] | None = None, name: str = "3d-models") -> None:
    """A bucket made beforehand, by hand or an older shop3d."""
    standin.buckets[name] = StoredBucket(name, public, limit, types)


def bucket_posts(standin: SupabaseStandIn) -> int:
    return sum(1 for r in standin.requests if r.method == "POST" and r.path.endswith("/storage/v1/bucket"))


# ----------------------------------------------------------------------------- the size limit setting

def test_file_size_limit_default_is_the_largest_preset_budget_plus_a_margin() -> None:
    largest = max(size for preset in PRESETS.values() for size in (preset.max_glb_bytes, preset.max_usdz_bytes))
    assert LARGEST_ASSET_BYTES == largest == 15_000_000
    default = Settings(_env_file=None).supabase_file_size_limit  # type: ignore[call-arg]
    assert default == DEFAULT_FILE_SIZE_LIMIT == 16 * MIB   # + 1 MiB, rounded up to whole MiB
    assert largest + MIB <= default < largest + 2 * MIB and default % MIB == 0
    assert default < 50 * MIB   # below the hosted Free plan's global upload limit
    with pytest.raises(ValidationError, match="supabase_file_size_limit"):
        Settings(_env_file=None, supabase_file_size_limit=largest - 1)  # type: ignore[call-arg]


def test_the_setting_reaches_the_bucket_it_creates(standin: SupabaseStandIn) -> None:
    store = make_object_store(Settings(_env_file=None, supabase_url=standin.url,  # type: ignore[call-arg]
                                       supabase_service_role_key=SecretStr(SERVICE_KEY),
                                       supabase_file_size_limit=20 * MIB))
    try:
        store.ensure_ready()
    finally:
        store.close()
    bucket = standin.buckets["3d-models"]
    assert bucket.public and bucket.file_size_limit == 20 * MIB and sorted(bucket.allowed_mime_types or []) == ALL_TYPES


def test_a_413_at_set_up_names_the_setting(standin: SupabaseStandIn, make_store: Callable[..., Any]) -> None:
    standin.upload_limit = 10 * MIB   # a project whose global limit is below the default bucket limit
    with pytest.raises(StorageMisconfigured) as info:
        make_store().ensure_ready()
    message = str(info.value)
    assert "SUPABASE_FILE_SIZE_LIMIT" in message and f"{DEFAULT_FILE_SIZE_LIMIT} bytes" in message
    assert "413" in message and "The object exceeded the maximum allowed size" in message   # the server's words
    assert SERVICE_KEY not in message and SERVICE_KEY not in repr(info.value)
    assert "3d-models" not in standin.buckets


def test_an_existing_bucket_in_a_small_project_starts_without_a_413(standin: SupabaseStandIn,
                                                                    make_store: Callable[..., Any]) -> None:
    standin.upload_limit = 20 * MIB
    existing(standin, limit=None)   # None: the project's global limit applies
    make_store(file_size_limit=60 * MIB).ensure_ready()   # read first: the creation would answer 413
    assert bucket_posts(standin) == 0


# ----------------------------------------------------------------------------- the stand-in's real-server answers

def test_standin_checks_the_global_limit_before_the_duplicate(standin: SupabaseStandIn) -> None:
    existing(standin)
    headers = {"Authorization": f"Bearer {SERVICE_KEY}", "apikey": SERVICE_KEY}
    too_big = httpx.post(f"{standin.url}/storage/v1/bucket", headers=headers,
                         json={"id": "3d-models", "name": "3d-models", "file_size_limit": 60 * MIB})
    assert too_big.status_code == 400 and too_big.json()["statusCode"] == "413"
    duplicate = httpx.post(f"{standin.url}/storage/v1/bucket", headers=headers,
                           json={"id": "3d-models", "name": "3d-models", "file_size_limit": MIB})
    assert duplicate.json()["statusCode"] == "409"
    bad_name = httpx.post(f"{standin.url}/storage/v1/bucket", headers=headers, json={"id": "a/b", "name": "a/b"})
    assert bad_name.status_code == 400 and bad_name.json() == {"statusCode": "400", "error": "Invalid Input",
                                                               "message": "Bucket name invalid"}


def test_standin_get_bucket_returns_its_settings(standin: SupabaseStandIn) -> None:
    existing(standin, public=False, limit=5 * MIB, types=["image/*"])
    with httpx.Client() as http:
        client = SyncStorageClient(f"{standin.url}/storage/v1/",
                                   {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}, http_client=http)
        bucket = client.get_bucket("3d-models")
    assert (bucket.public, bucket.file_size_limit, bucket.allowed_mime_types) == (False, 5 * MIB, ["image/*"])


# ----------------------------------------------------------------------------- checking an existing bucket

def test_a_private_bucket_with_public_urls_fails(standin: SupabaseStandIn, make_store: Callable[..., Any]) -> None:
    existing(standin, public=False, types=ALL_TYPES)
    with pytest.raises(StorageMisconfigured) as info:
        make_store(public=True).ensure_ready()
    message = str(info.value)
    assert "SUPABASE_SIGNED_URLS" in message and "private (public=false)" in message
    assert "Bucket not found" in message   # what the links would answer


def test_signed_urls_work_on_a_private_or_a_public_bucket(standin: SupabaseStandIn,
                                                          make_store: Callable[..., Any]) -> None:
    existing(standin, public=False, name="private")
    existing(standin, public=True, name="public")
    make_store(bucket="private", public=False).ensure_ready()
    make_store(bucket="public", public=False).ensure_ready()


def test_an_allowlist_without_png_fails_naming_the_type(standin: SupabaseStandIn,
                                                        make_store: Callable[..., Any]) -> None:
    existing(standin, types=["model/gltf-binary", "model/vnd.usdz+zip", "application/json"])
    with pytest.raises(StorageMisconfigured) as info:
        make_store().ensure_ready()
    assert "lack image/png" in str(info.value) and "allowed MIME types" in str(info.value)


def test_every_mismatch_is_listed_at_once(standin: SupabaseStandIn, make_store: Callable[..., Any]) -> None:
    existing(standin, public=False, limit=5 * MIB, types=["image/png"])
    with pytest.raises(StorageMisconfigured) as info:
        make_store().ensure_ready()
    message = str(info.value)
    assert "SUPABASE_SIGNED_URLS" in message
    assert f"file size limit is {5 * MIB} bytes" in message and f"up to {LARGEST_ASSET_BYTES} bytes" in message
    assert "application/json, model/gltf-binary, model/vnd.usdz+zip" in message


@pytest.mark.parametrize("limit, types", [(None, None), (0, []), (LARGEST_ASSET_BYTES, ALL_TYPES),
                                          (100 * MIB, ["model/*", "image/*", "application/json"])])
def test_a_matching_existing_bucket_passes(standin: SupabaseStandIn, make_store: Callable[..., Any],
                                           limit: int | None, types: list[str] | None) -> None:
    existing(standin, limit=limit, types=types)
    store = make_store()
    store.ensure_ready()
    assert bucket_posts(standin) == 0   # read, found and checked: nothing created or changed
    assert store.put("s/p/j/poster.png", b"\x89PNG", "image/png").size == 4


def test_a_bucket_shop3d_created_passes_its_own_check(standin: SupabaseStandIn, make_store: Callable[..., Any]) -> None:
    make_store().ensure_ready()          # creates it
    make_store().ensure_ready()          # finds it and checks it
    assert bucket_posts(standin) == 1


def test_a_bad_bucket_name_is_refused_clearly(standin: SupabaseStandIn, make_store: Callable[..., Any]) -> None:
    with pytest.raises(StorageMisconfigured) as info:
        make_store(bucket="a/b").ensure_ready()
    message = str(info.value)
    assert "SUPABASE_BUCKET_NAME" in message and "'a/b'" in message and "Bucket name invalid" in message


# ----------------------------------------------------------------------------- log lines

def test_a_storage_warning_states_its_prefix_once(make_store: Callable[..., Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.delivery.storage")
    store = make_store(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError):
        store.put("s/p/j/model.glb", b"glTF", "model/gltf-binary")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "storage upload of s/p/j/model.glb failed: ConnectError [storage_unavailable]"
    assert line.count("storage upload of") == 1 and line.count("failed") == 1


# ----------------------------------------------------------------------------- a replica's readiness

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readiness_reports_a_misconfigured_bucket_and_recovers_once_fixed(
        standin: SupabaseStandIn, make_store: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.delivery.storage")
    existing(standin, public=False)
    clock = Clock()
    readiness = StoreReadiness(make_store(), retry_interval_s=30.0, clock=clock)
    problem = readiness.check()
    assert problem is not None and "SUPABASE_SIGNED_URLS" in problem
    report = readiness.report()   # within the interval: no new request
    assert report == {"error": f"storage set-up failed: {problem}"}
    with pytest.raises(TransientError) as info:
        readiness.require()
    assert info.value.code == "storage_unavailable" and "SUPABASE_SIGNED_URLS" in info.value.message
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SUPABASE_SIGNED_URLS" in errors[0].getMessage()   # one line, not one per check

    standin.buckets["3d-models"].public = True   # the operator fixes the bucket
    assert readiness.report()["error"] == f"storage set-up failed: {problem}"   # not retried yet
    clock.now += 30
    assert readiness.report() == {"storage": "ready"}
    readiness.require()


def test_readiness_reports_unreachable_storage(make_store: Callable[..., Any]) -> None:
    readiness = StoreReadiness(make_store(url=f"http://127.0.0.1:{free_port()}"))
    assert readiness.report() == {"error": "storage set-up failed: storage bucket lookup of 3d-models failed: "
                                           "ConnectError [storage_unavailable]"}
