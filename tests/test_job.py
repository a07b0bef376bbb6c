"""pipeline.jobs.envelopes: the Job contract and every accepted envelope, produced by real producers where one exists.

Python Celery messages come from a real `Celery.send_task` against the session's redis-server (celery is
a test-only producer); the celery-node message is the literal captured in integrations.md §2.2.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from pipeline.errors import ERROR_CODES, JobRejected
from pipeline.jobs.envelopes import (
    MAX_IMAGE_URLS,
    MAX_MESSAGE_BYTES,
    Job,
    parse_message,
    to_queue_message,
    validate_job,
)
from pipeline.run.stages import JobDefaults

# integrations.md §2.2, verbatim (celery-node 0.5.9, protocol v2)
CELERY_NODE_RAW = (
    b'{"body":"W1tdLHsiam9iX2lkIjoiam9iLTEyMyIsInByb2R1Y3RfaWQiOjQyfSx7fV0=","content-type":"application/json",'
    b'"content-encoding":"utf-8",'
    b'"headers":{"lang":"js","task":"generate_3d_model","id":"d3964374-6e59-44b3-b54a-d03270450add"},'
    b'"properties":{"body_encoding":"base64","delivery_info":{"exchange":"","routing_key":"celery"},'
    b'"delivery_mode":2,"delivery_tag":"18b0ee73-9f24-4016-9e7b-25e9f15c8d27",'
    b'"correlationId":"d3964374-\xe2\x80\xa6","replyTo":""}}'
)


def job_fields(**overrides: Any) -> dict[str, Any]:
    """A valid job as the seed README describes it."""
    fields: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "shop": "test-shop.myshopify.com",
        "product_id": "gid://shopify/Product/123",
        "product_handle": "test-product",
        "variant_id": "gid://shopify/ProductVariant/987654321",
        "image_urls": ["https://example.com/image.jpg"],
        "metadata": {"productTitle": "Test Product", "variantTitle": "Blue"},
        "quality": "balanced",
    }
    fields.update(overrides)
    return fields


def readme_message(kwargs: dict[str, Any]) -> bytes:
    """The seed README's "Manual Job Testing" message, built the way its snippet builds it."""
    return json.dumps({"task": "generate_3d_model", "id": str(uuid.uuid4()), "args": [], "kwargs": kwargs}).encode()


def celery_node_like(kwargs: dict[str, Any], **top: Any) -> bytes:
    """A celery-node-shaped v2 envelope (headers lang/task/id, camelCase properties) around `kwargs`."""
    body = base64.b64encode(json.dumps([[], kwargs, {}]).encode()).decode()
    message = {"body": body, "content-type": "application/json", "content-encoding": "utf-8",
               "headers": {"lang": "js", "task": "generate_3d_model", "id": "node-task-1"},
               "properties": {"body_encoding": "base64", "correlationId": "node-task-1", "replyTo": ""}}
    message.update(top)
    return json.dumps(message).encode()


@pytest.fixture
def send_task(redis_url: str) -> Iterator[Any]:
    """send_task(name, protocol=2, **options) -> (raw bytes LPUSHed by real Celery, Celery task id)."""
    client = redis.Redis.from_url(redis_url)

    def send(name: str = "generate_3d_model", *, protocol: int = 2, **options: Any) -> tuple[bytes, str]:
        app = Celery("shop3d-test-producer", broker=redis_url, set_as_current=False)
        app.conf.task_protocol = protocol
        try:
            result = app.send_task(name, **options)
        finally:
            app.close()
        raw = client.rpop("celery")
        assert isinstance(raw, bytes)
        return raw, result.id

    yield send
    client.close()


def rejection(raw: bytes) -> JobRejected:
    with pytest.raises(JobRejected) as caught:
        parse_message(raw)
    assert caught.value.code in ERROR_CODES
    return caught.value


# ----- accepted envelopes ---------------------------------------------------------------------------

def test_readme_manual_test_message_is_accepted() -> None:
    fields = job_fields()
    fields.pop("variant_id")
    raw = readme_message(fields)
    parsed = parse_message(raw)
    assert parsed.envelope == "task"
    assert parsed.raw is raw
    assert parsed.job.job_id == fields["job_id"]
    assert parsed.job.image_urls == ("https://example.com/image.jpg",)
    assert parsed.job.variant_id is None
    assert parsed.job.metadata == {"productTitle": "Test Product", "variantTitle": "Blue"}
    assert parsed.task_id == json.loads(raw)["id"]


def test_bare_job_object_is_accepted() -> None:
    fields = job_fields(quality="fast")
    parsed = parse_message(json.dumps(fields).encode())
    assert parsed.envelope == "bare"
    assert parsed.task_id is None
    assert parsed.job.quality == "fast"
    assert parsed.job.shop == "test-shop.myshopify.com"


def test_real_celery_protocol_2_message_is_accepted(send_task: Any) -> None:
    fields = job_fields()
    raw, task_id = send_task(kwargs=fields)
    assert json.loads(raw)["headers"]["task"] == "generate_3d_model"   # really protocol 2
    parsed = parse_message(raw)
    assert parsed.envelope == "celery_v2"
    assert parsed.raw == raw
    assert parsed.task_id == task_id
    assert parsed.job == Job.model_validate(fields)


def test_real_celery_protocol_1_message_is_accepted(send_task: Any) -> None:
    fields = job_fields()
    raw, task_id = send_task(kwargs=fields, protocol=1)
    assert json.loads(raw)["headers"] == {}
    parsed = parse_message(raw)
    assert parsed.envelope == "celery_v1"
    assert parsed.task_id == task_id
    assert parsed.job.job_id == fields["job_id"]


def test_celery_job_as_single_positional_argument(send_task: Any) -> None:
    fields = job_fields()
    raw, _ = send_task(args=[fields])
    assert parse_message(raw).job.job_id == fields["job_id"]


def test_celery_id_is_the_job_id_when_kwargs_have_none(send_task: Any) -> None:
    fields = job_fields()
    fields.pop("job_id")
    raw, task_id = send_task(kwargs=fields)
    assert parse_message(raw).job.job_id == task_id


def test_celery_node_literal_is_understood_and_its_incomplete_job_rejected_with_its_id() -> None:
    # The captured example carries only job_id and product_id, so it is a real message but not a full job.
    error = rejection(CELERY_NODE_RAW)
    assert error.code == "invalid_job"
    assert error.details["job_id"] == "job-123"
    assert {"shop", "product_handle", "image_urls"} <= set(error.details["fields"])
    assert "product_id" not in error.details["fields"]   # the integer 42 is a valid Shopify id


def test_celery_node_shaped_message_with_a_full_job() -> None:
    parsed = parse_message(celery_node_like(job_fields(product_id=42, job_id="job-123")))
    assert parsed.envelope == "celery_v2"
    assert parsed.task_id == "node-task-1"
    assert parsed.job.product_id == "42"
    assert parsed.job.job_id == "job-123"


def test_unknown_fields_ignored_and_null_quality_means_default() -> None:
    job = validate_job(job_fields(callback_url="https://shop.example/hooks", quality=None))
    assert job.quality is None and job.formats is None   # the service's DEFAULT_QUALITY / DEFAULT_FORMATS apply
    assert JobDefaults("fast", ("glb",)).apply(job).quality == "fast"
    assert JobDefaults("fast", ("glb",)).apply(job.model_copy(update={"quality": "quality"})).quality == "quality"
    assert not hasattr(job, "callback_url")


def test_job_is_frozen() -> None:
    job = validate_job(job_fields())
    with pytest.raises(ValidationError):
        job.shop = "other"


def test_formats_are_validated_and_deduplicated() -> None:
    assert validate_job(job_fields(formats=["glb", "usdz", "glb"])).formats == ("glb", "usdz")
    assert validate_job(job_fields()).formats is None
    with pytest.raises(JobRejected) as caught:
        validate_job(job_fields(formats=["obj"]))
    assert "formats.0" in caught.value.details["fields"]


def test_to_queue_message_is_the_readme_envelope_and_round_trips() -> None:
    job = validate_job(job_fields(variant_id=None, formats=["glb"]))
    raw = to_queue_message(job)
    envelope = json.loads(raw)
    assert envelope["task"] == "generate_3d_model"
    assert envelope["args"] == []
    assert envelope["id"] == job.job_id
    assert "variant_id" not in envelope["kwargs"]
    assert to_queue_message(job) == raw   # the same job always gives the same bytes
    assert parse_message(raw).job == job


# ----- rejections -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, what", [
    (b'{"task": "generate_3d_model", "kwargs": ', "bad JSON"),
    (b'\xff\xfe{"job_id": "x"}', "not UTF-8"),
    (b'[{"job_id": "x"}]', "a JSON list"),
    (b'"generate_3d_model"', "a JSON string"),
    (b'{"task": "generate_3d_model", "args": {}, "kwargs": []}', "args/kwargs of the wrong types"),
])
def test_malformed_messages(raw: bytes, what: str) -> None:
    assert rejection(raw).code == "malformed_message", what


def test_oversized_message_is_malformed_without_parsing() -> None:
    raw = json.dumps(job_fields(metadata={"blob": "x" * MAX_MESSAGE_BYTES})).encode()
    error = rejection(raw)
    assert error.code == "malformed_message"
    assert len(error.message) < 200


def test_unknown_task_name_from_real_celery(send_task: Any) -> None:
    raw, _ = send_task("resize_images", kwargs=job_fields())
    error = rejection(raw)
    assert error.code == "unknown_task"
    assert "resize_images" in error.message


def test_unknown_task_name_in_readme_envelope() -> None:
    raw = json.dumps({"task": "other", "id": "1", "args": [], "kwargs": job_fields()}).encode()
    assert rejection(raw).code == "unknown_task"


def test_pickle_from_real_celery_is_refused_unread_and_keeps_the_id(send_task: Any) -> None:
    raw, task_id = send_task(kwargs=job_fields(), serializer="pickle")
    error = rejection(raw)
    assert error.code == "unsupported_encoding"
    assert error.details["job_id"] == task_id


def test_msgpack_body_is_refused() -> None:
    raw = celery_node_like({}, **{"content-type": "application/x-msgpack", "content-encoding": "binary",
                                  "body": base64.b64encode(b"\x81\xa6job_id\xa1x").decode()})
    assert rejection(raw).code == "unsupported_encoding"


def test_bad_base64_body_is_malformed_and_keeps_the_celery_id() -> None:
    error = rejection(celery_node_like({}, body="not base64 at all!"))
    assert error.code == "malformed_message"
    assert error.details["job_id"] == "node-task-1"


def test_missing_fields_are_named() -> None:
    fields = job_fields()
    del fields["shop"], fields["image_urls"]
    error = rejection(readme_message(fields))
    assert error.code == "invalid_job"
    assert set(error.details["fields"]) == {"shop", "image_urls"}
    assert "shop" in error.message and "image_urls" in error.message
    assert error.details["job_id"] == fields["job_id"]


@pytest.mark.parametrize("field, value", [
    ("image_urls", "https://example.com/image.jpg"),   # a string, not a list
    ("image_urls", [42]),
    ("image_urls", [""]),
    ("image_urls", []),
    ("image_urls", ["https://example.com/a.jpg"] * (MAX_IMAGE_URLS + 1)),
    ("quality", "ultra"),
    ("metadata", ["productTitle"]),
    ("product_id", True),
    ("shop", "evil/../shop"),
    ("product_handle", "a b"),
    ("product_handle", ".."),
    ("job_id", "../../etc"),
    ("job_id", "a..b"),
    ("job_id", ""),
])
def test_mistyped_or_unsafe_fields_are_rejected(field: str, value: Any) -> None:
    error = rejection(json.dumps(job_fields(**{field: value})).encode())
    assert error.code == "invalid_job"
    assert error.details["fields"][0].split(".")[0] == field


def test_rejected_job_id_falls_back_to_celery_id() -> None:
    error = rejection(celery_node_like(job_fields(job_id="bad/id", shop=None)))
    assert error.code == "invalid_job"
    assert error.details["job_id"] == "node-task-1"   # never the unsafe one


def test_huge_fields_are_rejected_without_echoing_them() -> None:
    huge = "A" * 200_000
    for fields in (job_fields(metadata={"productTitle": huge}), job_fields(job_id=huge),
                   job_fields(image_urls=["https://example.com/" + huge])):
        error = rejection(json.dumps(fields).encode())
        assert error.code == "invalid_job"
        assert len(error.message) < 500
        assert "AAAAAAAAAA" not in error.message
        assert "AAAAAAAAAA" not in json.dumps(error.to_dict())
