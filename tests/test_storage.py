"""pipeline.delivery.storage: the local store on real files; the Supabase store through storage3 against a stand-in.

Supabase is third-party SaaS, so its tests run against tests/support/supabase_standin.py, a real local
HTTP server written from integrations.md §1.4 (HTTP-400 error bodies included), not the real server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from storage3.exceptions import StorageApiError

from pipeline.delivery.storage import (
    LocalObjectStore,
    SupabaseObjectStore,
    make_object_store,
    object_key,
    storage_error,
)
from pipeline.errors import JobRejected, TransientError
from pipeline.settings import Settings
from pipeline.testing.redis_server import free_port
from tests.support.supabase_standin import TEST_SERVICE_KEY, SupabaseStandIn

SERVICE_KEY = TEST_SERVICE_KEY
GLB = b"glTF\x02\x00\x00\x00" + bytes(range(256)) * 8
JOB = SimpleNamespace(shop="demo.myshopify.com", product_handle="coffee-mug",
                      job_id="5f1c2a9e-3b7d-4c1e-9a0f-2d6b8e4c1a77")




StoreFactory = Callable[..., SupabaseObjectStore]


@pytest.fixture
def make_store(standin: SupabaseStandIn) -> Iterator[StoreFactory]:
    """Build SupabaseObjectStores on the stand-in (bucket created unless told not to); all closed after."""
    made: list[SupabaseObjectStore] = []

    def build(url: str | None = None, key: str = SERVICE_KEY, bucket: str = "3d-models",
              ensure: bool = True, **options: Any) -> SupabaseObjectStore:
        store = SupabaseObjectStore(url or standin.url, SecretStr(key), bucket, **options)
        made.append(store)
        if ensure:
            store.ensure_ready()
        return store

    yield build
    for store in made:
        store.close()


def test_object_key_layout_and_unsafe_segments() -> None:
    assert object_key(JOB, "model.glb") == f"demo.myshopify.com/coffee-mug/{JOB.job_id}/model.glb"
    for bad in ("..", "a/b", ""):
        with pytest.raises(ValueError):
            object_key(SimpleNamespace(shop="s", product_handle=bad, job_id="j"), "model.glb")
    with pytest.raises(ValueError):
        object_key(JOB, "../model.glb")


def test_local_store_writes_atomically_and_serves_urls(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "assets")
    store.ensure_ready()
    key = object_key(JOB, "model.glb")
    stored = store.put(key, GLB, "model/gltf-binary")
    path = tmp_path / "assets" / key
    assert stored.size == len(GLB) and path.read_bytes() == GLB
    assert stored.url.startswith("file://") and Path(stored.url.removeprefix("file://")).read_bytes() == GLB
    store.put(key, b"second", "model/gltf-binary")  # a re-run overwrites in place
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["model.glb"]  # no temp files left
    with pytest.raises(ValueError):
        store.put("../escape.glb", GLB, "model/gltf-binary")
    with_base = LocalObjectStore(tmp_path, base_url="https://cdn.example.com/assets/")
    assert with_base.url_for("a b/c.glb") == "https://cdn.example.com/assets/a%20b/c.glb"


def test_local_store_maps_disk_errors_to_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_bytes(b"a file where a directory should be")
    with pytest.raises(TransientError) as info:
        LocalObjectStore(blocker).put("x/model.glb", GLB, "model/gltf-binary")
    assert info.value.code == "storage_unavailable"


def test_supabase_upload_sends_content_type_and_public_url_serves_the_bytes(standin: SupabaseStandIn,
                                                                            make_store: StoreFactory) -> None:
    store = make_store()
    key = object_key(JOB, "model.glb")
    stored = store.put(key, GLB, "model/gltf-binary")
    assert stored.size == len(GLB) and standin.files[("3d-models", key)].data == GLB
    assert standin.files[("3d-models", key)].content_type == "model/gltf-binary"
    assert stored.url == f"{standin.url}/storage/v1/object/public/3d-models/{key}"
    response = httpx.get(stored.url)  # no auth: a public bucket
    assert response.status_code == 200 and response.content == GLB
    assert response.headers["content-type"] == "model/gltf-binary"
    upload = next(r for r in standin.requests if r.method == "POST" and "/object/3d-models/" in r.path)
    assert upload.headers["x-upsert"] == "true" and upload.headers["authorization"] == f"Bearer {SERVICE_KEY}"


def test_supabase_upsert_overwrites(standin: SupabaseStandIn, make_store: StoreFactory) -> None:
    store = make_store()
    key = object_key(JOB, "poster.png")
    store.put(key, b"\x89PNG first", "image/png")
    store.put(key, b"\x89PNG second", "image/png")
    assert standin.files[("3d-models", key)].data == b"\x89PNG second"


def test_supabase_409_without_upsert_means_already_there(standin: SupabaseStandIn, make_store: StoreFactory) -> None:
    store = make_store(upsert=False)
    key = object_key(JOB, "model.glb")
    store.put(key, GLB, "model/gltf-binary")
    again = store.put(key, b"different bytes", "model/gltf-binary")  # HTTP 400 {"statusCode":"409"}
    assert again.key == key and standin.files[("3d-models", key)].data == GLB


def test_supabase_bucket_creation_is_idempotent_with_limits(standin: SupabaseStandIn,
                                                           make_store: StoreFactory) -> None:
    store = make_store(file_size_limit=1000)
    store.ensure_ready()  # the second call meets 409 BucketAlreadyExists and carries on
    bucket = standin.buckets["3d-models"]
    assert bucket.public and bucket.file_size_limit == 1000
    assert set(bucket.allowed_mime_types or []) == {"model/gltf-binary", "image/png", "model/vnd.usdz+zip",
                                                   "application/json"}


@pytest.mark.parametrize("case, status", [("too_large", "413"), ("bad_mime", "415"), ("no_bucket", "404"),
                                          ("bad_key", "403")])
def test_supabase_permanent_errors_become_storage_failed(make_store: StoreFactory, case: str, status: str) -> None:
    make_store(file_size_limit=len(GLB) - 1)  # creates the bucket with a limit the GLB exceeds
    store = make_store(bucket="missing-bucket" if case == "no_bucket" else "3d-models",
                       key="not-the-key" if case == "bad_key" else SERVICE_KEY, ensure=False)
    data, content_type = (b"small", "text/plain") if case == "bad_mime" else (GLB, "model/gltf-binary")
    with pytest.raises(JobRejected) as info:
        store.put(object_key(JOB, "model.glb"), data, content_type)
    assert info.value.code == "storage_failed" and info.value.details["status"] == status


@pytest.mark.parametrize("status", [503, 500, 429, 425, 408])
def test_supabase_retryable_statuses_become_storage_unavailable(standin: SupabaseStandIn,
                                                                make_store: StoreFactory, status: int) -> None:
    store = make_store()
    standin.fail_next(status)
    with pytest.raises(TransientError) as info:
        store.put(object_key(JOB, "model.glb"), GLB, "model/gltf-binary")
    assert info.value.code == "storage_unavailable"
    store.put(object_key(JOB, "model.glb"), GLB, "model/gltf-binary")  # the retry succeeds


def test_supabase_connection_refused_is_transient(make_store: StoreFactory) -> None:
    store = make_store(url=f"http://127.0.0.1:{free_port()}", ensure=False)
    with pytest.raises(TransientError) as info:
        store.ensure_ready()
    assert info.value.code == "storage_unavailable"


def test_supabase_signed_urls_are_absolute_and_load(standin: SupabaseStandIn, make_store: StoreFactory) -> None:
    store = make_store(public=False, signed_url_ttl_s=600)
    key = object_key(JOB, "model.glb")
    stored = store.put(key, GLB, "model/gltf-binary")
    assert stored.url.startswith(f"{standin.url}/storage/v1/object/sign/3d-models/") and "token=" in stored.url
    assert httpx.get(stored.url).content == GLB
    public = httpx.get(f"{standin.url}/storage/v1/object/public/3d-models/{key}")
    assert public.status_code == 400 and public.json()["statusCode"] == "404"  # private bucket
    with pytest.raises(JobRejected) as info:
        store.url_for(object_key(JOB, "missing.glb"))
    assert info.value.details["status"] == "404"


def test_service_role_key_never_in_errors_or_logs(make_store: StoreFactory,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = make_store(file_size_limit=10)
    unreachable = make_store(url=f"http://127.0.0.1:{free_port()}", ensure=False)
    texts = [repr(store)]
    for action in (lambda: store.put(object_key(JOB, "model.glb"), GLB, "model/gltf-binary"),
                   lambda: unreachable.put("a/b.glb", GLB, "model/gltf-binary")):
        with pytest.raises((JobRejected, TransientError)) as info:
            action()
        texts += [str(info.value), repr(info.value), str(info.value.to_dict())]
    texts += [record.getMessage() for record in caplog.records]
    assert all(SERVICE_KEY not in text for text in texts)
    # The server's message is kept, with the key scrubbed should a server ever echo it.
    echoed = storage_error(StorageApiError(f"bad token {SERVICE_KEY}", "Unauthorized", "403"), "upload", "k",
                           SERVICE_KEY)
    assert SERVICE_KEY not in echoed.message and "[redacted]" in echoed.message


def test_make_object_store_from_settings(tmp_path: Path, standin: SupabaseStandIn) -> None:
    local = make_object_store(Settings(_env_file=None, local_storage_dir=tmp_path))  # type: ignore[call-arg]
    assert isinstance(local, LocalObjectStore) and local.root == tmp_path
    remote = make_object_store(Settings(_env_file=None, supabase_url=standin.url,  # type: ignore[call-arg]
                                        supabase_service_role_key=SecretStr(SERVICE_KEY),
                                        supabase_signed_urls=True))
    assert isinstance(remote, SupabaseObjectStore) and remote.public is False
    assert remote.bucket == "3d-models"
    remote.close()
