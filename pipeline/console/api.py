"""The operator API and console routes, as a FastAPI router the ingress includes (and tests mount
in-process): enqueueing (POST /jobs), recent jobs, the queue at a glance, dead letters with requeue,
undelivered webhooks with replay, and the console page at /ui.

Only GET /jobs/{id} and /health stay with the ingress, open.

The router reads its Redis client and settings from the process's `ConsoleContext`, installed by the
ingress constructor: Serve pickles the FastAPI app by value into each replica, so the constructor
cannot reach the served app's `state`, while this module's globals are the replica's own.
Every route needs the operator token (pipeline.console.auth); without one configured they answer 404.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the routes (Request).
import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, SecretStr
from redis.exceptions import RedisError

from pipeline.console.auth import SESSION_COOKIE, Access, check_access, session_value
from pipeline.delivery.replay import replay_webhooks, undelivered_webhooks
from pipeline.delivery.webhooks import WebhookSender
from pipeline.errors import JobRejected
from pipeline.jobs.envelopes import validate_job
from pipeline.jobs.keys import JOB_STATUSES
from pipeline.jobs.state import list_jobs
from pipeline.queue.admin import dead_letters, requeue_dead_job, submit_job
from pipeline.queue.overview import queue_overview

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_LIST = 500
# The page runs only its own scripts. <model-viewer> compiles WebAssembly ('wasm-unsafe-eval'), styles its
# shadow root inline and hands textures over as blob:/data: URLs; the assets come from the object store,
# whose origin the page cannot know, so images and fetches may go anywhere (the store must allow CORS).
CONSOLE_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob: *; connect-src 'self' data: blob: *; object-src 'none'; "
               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


@dataclass(frozen=True)
class ConsoleContext:
    """What the routes work with: the ingress's Redis client, queue, token and webhook sender."""

    redis: aioredis.Redis
    queue_name: str
    operator_token: SecretStr | None
    sender: WebhookSender | None   # None: no backend configured, nothing to replay to


_installed: list[ConsoleContext] = []


def install(context: ConsoleContext) -> None:
    """Make `context` the one the routes of this process use (the latest install wins)."""
    _installed[:] = [context]


def installed() -> ConsoleContext:
    if not _installed:
        raise HTTPException(503, "the operator API is starting")
    return _installed[0]


def authorize(request: Request, *, disabled_status: int = 404) -> ConsoleContext:
    """The context, if the request carries the operator token or session; else the HTTP error."""
    context = installed()
    access = check_access(context.operator_token, authorization=request.headers.get("authorization"),
                          session=request.cookies.get(SESSION_COOKIE))
    if access is Access.DISABLED:
        raise HTTPException(disabled_status, "disabled: set OPERATOR_TOKEN to enable the operator API")
    if access is not Access.GRANTED:
        raise HTTPException(401, f"operator token {access.value}", headers={"WWW-Authenticate": "Bearer"})
    return context


Operator = Annotated[ConsoleContext, Depends(authorize)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIST)]


@contextlib.asynccontextmanager
async def redis_answers() -> AsyncIterator[None]:
    """A Redis outage answers 503 rather than a traceback's 500."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise HTTPException(503, f"Redis unavailable ({type(exc).__name__})") from None


router = APIRouter()


@router.get("/jobs")
async def recent_jobs(operator: Operator, status: str | None = None, limit: Limit = 50) -> dict[str, Any]:
    """The newest jobs by last update, all or of one status."""
    if status is not None and status not in JOB_STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(JOB_STATUSES)}")
    async with redis_answers():
        return {"jobs": await list_jobs(operator.redis, status=status, limit=limit)}


@router.post("/jobs", status_code=202)
async def enqueue(request: Request) -> dict[str, Any]:
    """Validate a job (the bare job fields) and push it as the backend would; 422 with the code if invalid.
    Operators only: 401 without the token, 403 (not 404: the route exists) when none is configured."""
    context = authorize(request, disabled_status=403)
    try:
        fields = await request.json()
        if not isinstance(fields, dict):
            raise JobRejected("invalid_job", "the body must be a JSON object of job fields")
        job = validate_job(fields)
    except JobRejected as exc:
        raise HTTPException(422, exc.to_dict()) from None
    except ValueError:
        raise HTTPException(422, {"code": "malformed_message", "message": "the body is not JSON"}) from None
    async with redis_answers():
        await submit_job(context.redis, context.queue_name, job)
    return {"job_id": job.job_id, "status": "queued"}


@router.get("/queue")
async def queue(operator: Operator) -> dict[str, Any]:
    async with redis_answers():
        return await queue_overview(operator.redis, operator.queue_name)


@router.get("/dead")
async def dead(operator: Operator, limit: Limit = 50) -> dict[str, Any]:
    """The newest dead letters and why they died (a letter whose info was trimmed shows only its size)."""
    async with redis_answers():
        letters = await dead_letters(operator.redis, limit)
    return {"dead": [letter.info or {"job_id": None, "raw_bytes": len(letter.raw)} for letter in letters]}


@router.post("/dead/{job_id}/requeue")
async def requeue(operator: Operator, job_id: str) -> dict[str, Any]:
    async with redis_answers():
        if not await requeue_dead_job(operator.redis, operator.queue_name, job_id, by="api"):
            raise HTTPException(404, f"job {job_id!r} is not dead-lettered")
    logger.info("job %s: requeued from the dead letters by an operator (API)", job_id)
    return {"job_id": job_id, "status": "queued"}


@router.get("/webhooks")
async def webhooks(operator: Operator, limit: Limit = 50) -> dict[str, Any]:
    async with redis_answers():
        kept = await undelivered_webhooks(operator.redis, limit)
    return {"undelivered": [webhook.summary() for webhook in kept]}


@router.post("/webhooks/replay")
async def replay(operator: Operator) -> dict[str, int]:
    if operator.sender is None:
        raise HTTPException(409, "no backend configured (BACKEND_URL): nothing to replay to")
    async with redis_answers():
        outcome = await replay_webhooks(operator.redis, operator.sender)
    logger.info("webhook replay by an operator: %s", outcome.to_dict())
    return outcome.to_dict()


class SessionRequest(BaseModel):
    token: str


@router.post("/ui/session", status_code=204)
async def open_session(request: Request, body: SessionRequest) -> Response:
    """Exchange the token for an HttpOnly, SameSite=Strict session cookie (the page never keeps the token)."""
    token = installed().operator_token
    access = check_access(token, authorization=f"Bearer {body.token}", session=None)
    if token is None or access is Access.DISABLED:
        raise HTTPException(404, "disabled: set OPERATOR_TOKEN to enable the console")
    if access is not Access.GRANTED:
        raise HTTPException(401, "wrong operator token")
    response = Response(status_code=204)
    response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/ui/logout", status_code=204)
async def close_session() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/ui", response_class=HTMLResponse)
async def console_page(request: Request) -> HTMLResponse:
    """The console. Unauthenticated it answers 401 with the same page, which then shows its login form."""
    context = installed()
    access = check_access(context.operator_token, authorization=request.headers.get("authorization"),
                          session=request.cookies.get(SESSION_COOKIE))
    if access is Access.DISABLED:
        raise HTTPException(404, "disabled: set OPERATOR_TOKEN to enable the console")
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, status_code=200 if access is Access.GRANTED else 401,
                        headers={"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-store"})


@router.get("/ui/static/{name:path}")
async def console_file(name: str) -> FileResponse:
    """The page's scripts, styles and the vendored <model-viewer> (no data in them; served while enabled)."""
    if installed().operator_token is None:
        raise HTTPException(404, "disabled")
    path = (STATIC_DIR / name).resolve()
    if not path.is_file() or not path.is_relative_to(STATIC_DIR.resolve()):
        raise HTTPException(404, f"no console file {name!r}")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix in (".js", ".mjs"):
        media_type = "text/javascript"
    return FileResponse(path, media_type=media_type)
