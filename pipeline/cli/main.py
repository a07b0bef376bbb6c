"""`shop3d`: generate a model from photos on this machine, submit jobs to the queue, read job state,
run the service, operate the queue (pipeline/cli/admin.py), and make random test checkpoints.

    shop3d generate SOURCE... [--quality fast|balanced|quality] [--out DIR] [--formats glb,usdz,poster,report]
                    [--height 11cm] [--width 9cm] [--depth 9cm] [--title T]
    shop3d submit URL... --shop S --product-id P --handle H [--quality Q] [--job-id ID]
    shop3d status JOB_ID
    shop3d serve [--cpu-only] [--port 8000]
    shop3d jobs [--status S] [--limit N] [--json]
    shop3d dead list [--json] | show JOB_ID | requeue JOB_ID | requeue --all | purge [--yes]
    shop3d webhooks list [--json] | replay
    shop3d model random --size tiny|full DIR
Settings come from the environment or `.env` (pipeline/settings.py); no command prints a secret.

Exit codes:
    0  EXIT_OK          done
    1  EXIT_JOB_FAILED  the job failed (`{"error": {"code", "message"}}` on stdout, one line on stderr),
                        or `status` found no such job
    2  EXIT_USAGE       bad arguments (argparse's usage message)
    3  EXIT_CONFIG      bad settings, or the model, matting model or device they name cannot be loaded on
                        this machine (offline without a cached model, a missing TSR_MODEL directory)
    130                 interrupted (Ctrl-C)
Failures print one `shop3d: ...` line on stderr; `shop3d -v COMMAND` prints the traceback above it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.cli.admin import add_admin_commands, run_admin_command
from pipeline.errors import Shop3dError
from pipeline.presets import PRESETS
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3
QUALITIES = tuple(PRESETS)


def _add_generate(commands: Any) -> None:
    cmd = commands.add_parser("generate", help="photo(s) -> model.glb + summary.json on this machine")
    cmd.add_argument("sources", nargs="+", metavar="SOURCE", help="image path or http(s) URL; the first usable wins")
    cmd.add_argument("--quality", choices=QUALITIES, default=None,
                     help="preset (default: DEFAULT_QUALITY, balanced)")
    cmd.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out/)")
    cmd.add_argument("--handle", default=None, help="product handle for the summary (default: from the file name)")
    cmd.add_argument("--formats", type=_formats_arg, default=None, metavar="F[,F...]",
                     help="files to make, any of glb,usdz,poster,report (default: DEFAULT_FORMATS, glb,poster,report)")
    for axis in ("height", "width", "depth"):
        cmd.add_argument(f"--{axis}", type=_length_arg, default=None, metavar="LENGTH",
                         help=f"real-world {axis} with its unit (11cm, 0.11m, 110mm, 4.3in); "
                              "the model is scaled to it (height wins)")
    cmd.add_argument("--title", default=None, help="metadata.productTitle")
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")


def _length_arg(text: str) -> float:
    """argparse type of --height/--width/--depth: metres, or a one-line usage error."""
    from pipeline.cli.generate import parse_length  # imported on use: it loads torch

    try:
        return parse_length(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _formats_arg(text: str) -> tuple[str, ...]:
    """argparse type of --formats: the asset formats, or a one-line usage error naming the known ones."""
    from pipeline.cli.generate import parse_formats

    try:
        return parse_formats(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_submit(commands: Any) -> None:
    cmd = commands.add_parser("submit", help="push a job onto the Redis queue (the earlier README's format)")
    cmd.add_argument("image_urls", nargs="+", metavar="URL")
    cmd.add_argument("--shop", required=True)
    cmd.add_argument("--product-id", required=True)
    cmd.add_argument("--handle", required=True, help="product handle (used in storage keys)")
    cmd.add_argument("--variant-id", default=None)
    cmd.add_argument("--title", default=None, help="metadata.productTitle")
    cmd.add_argument("--quality", choices=QUALITIES, default=None,
                     help="preset (default: the service's DEFAULT_QUALITY)")
    cmd.add_argument("--job-id", default=None, help="default: a new uuid4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shop3d", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_generate(commands)
    _add_submit(commands)
    add_admin_commands(commands)
    status = commands.add_parser("status", help="print a job's state from Redis as JSON")
    status.add_argument("job_id")
    serve = commands.add_parser("serve", help="run the Ray Serve graph on this machine (Ctrl-C stops it)")
    serve.add_argument("--cpu-only", action="store_true", help="ignore GPUs even when present")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port for /health and /jobs (default 8000)")
    model = commands.add_parser("model", help="model tools")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    # Listed for --help only; main() hands `model random ...` to the maker's own parser.
    model_commands.add_parser("random", help="write a random-weight checkpoint (testing/benchmarks): "
                              "--size tiny|full DIR [--seed N]")
    return parser


def _run_generate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.generate import ServicesUnavailable, generate, job_metadata

    metadata = job_metadata(args.title, width_m=args.width, height_m=args.height, depth_m=args.depth)
    try:
        summary = asyncio.run(generate(args.sources, args.quality, args.out, settings, handle=args.handle,
                                       formats=args.formats, metadata=metadata, show_progress=not args.no_progress))
    except ServicesUnavailable as exc:
        return _fail(EXIT_CONFIG, str(exc), exc, args.verbose)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def _run_submit(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.queue import submit

    fields: dict[str, Any] = {
        "job_id": args.job_id or str(uuid.uuid4()), "shop": args.shop, "product_id": args.product_id,
        "product_handle": args.handle, "variant_id": args.variant_id, "image_urls": args.image_urls,
        "metadata": {"productTitle": args.title} if args.title else {}, "quality": args.quality}
    print(asyncio.run(submit(fields, settings)))
    return EXIT_OK


def _run_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.queue import status

    state = asyncio.run(status(args.job_id, settings))
    if state is None:
        print(f"no job {args.job_id!r} in {settings.queue_name!r} state", file=sys.stderr)
        return EXIT_JOB_FAILED
    print(json.dumps(state, indent=2, default=str))
    return EXIT_OK


def _run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.serve import serve_locally

    return serve_locally(settings, cpu_only=args.cpu_only, port=args.port)


def _settings_problem(exc: ValueError) -> str:
    """One line naming each bad setting as its env variable, without the values (they may be secrets)."""
    if not isinstance(exc, ValidationError):
        return " ".join(str(exc).split())
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if name else message)
    return "; ".join(problems)


def _fail(code: int, message: str, exc: BaseException, verbose: bool, *, echo: bool = True) -> int:
    """Print `message` as one stderr line (with -v, the traceback above it) and return `code`.

    `echo=False` shows the frames but not `exc`'s own text: pydantic's repeats input values, secrets included.
    """
    if verbose:
        frames = traceback.format_exception(exc) if echo else [
            "Traceback (most recent call last):\n", *traceback.format_tb(exc.__traceback__),
            f"{type(exc).__module__}.{type(exc).__qualname__}: (values withheld)\n"]
        sys.stderr.write("".join(frames))
    print(f"shop3d: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `shop3d` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:2] == ["model", "random"]:
        from pipeline.model.random_checkpoint import main as random_main

        return random_main(arguments[2:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines print full URLs with query tokens
    if not args.verbose:   # offline, the hub client logs each of its retries twice; our one line says it all
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")   # read when huggingface_hub is first imported
    try:
        settings = Settings()
    except ValueError as exc:
        return _fail(EXIT_CONFIG, f"bad settings: {_settings_problem(exc)}", exc, args.verbose, echo=False)
    handlers = {"generate": _run_generate, "submit": _run_submit, "status": _run_status, "serve": _run_serve,
                "jobs": run_admin_command, "dead": run_admin_command, "webhooks": run_admin_command}
    try:
        return handlers[args.command](args, settings)
    except Shop3dError as exc:
        print(json.dumps({"error": exc.to_dict()}, indent=2, default=str))
        print(f"shop3d: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
