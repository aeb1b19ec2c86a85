"""Gradio app and JSON API for the fine-tune vs RAG decision service.

``python app.py [--artifacts DIR] [--host H] [--port N]`` serves the UI at ``/`` and the API at ``/api/...`` (docs at
``/docs``) at once, while it loads ``DIR/rag``, ``DIR/finetune`` and any extras in the background (building what is
missing: see `serving.build`), with progress in the page and in the terminal; each backend is served as it comes up.
This file is wiring only: the page is `serving.ui`, the API `serving.api`, the shared state `serving.state`, and
every call goes to `serving.service.Service` or compare/ functions.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event (for its monitoring page, which
# this app does not use): an event's cost would grow with the number served. Rebuild it every 1,000 events instead.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")

import gradio as gr
import uvicorn
from fastapi import FastAPI

from core.files import ArtifactError
from core.limits import MAX_UPLOAD_BYTES
from serving.access import trusted_proxies
from serving.api import create_api
from serving.service import Service, fetch_artifacts
from serving.state import App
from serving.ui import CSS, TITLE, build_demo, what_is

logger = logging.getLogger(__name__)

GRADIO_CONCURRENCY = 32
"""Gradio events run at once: as many as the micro-batcher gathers into one batch under a crowd."""
KEEP_ALIVE_S = 5
"""Seconds an idle keep-alive connection stays open."""
MAX_CONNECTIONS = 512
"""Connections served at once (each open page holds one for its event stream); past it, 503."""

__all__ = ["App", "build_demo", "create_api", "create_app", "main", "server_config", "what_is"]


def create_app(state: App) -> FastAPI:
    """The FastAPI app: the JSON API under /api and the Gradio UI at /."""
    demo = build_demo(state)
    # Single-text events wait on the micro-batcher, so many may run at once; batch evaluation runs one at a time.
    demo.queue(default_concurrency_limit=GRADIO_CONCURRENCY, max_size=256)
    mounted = gr.mount_gradio_app(create_api(state), demo, path="/", max_file_size=MAX_UPLOAD_BYTES, css=CSS)
    # Gradio checks that a file handed to a handler was uploaded (and refuses any other server path) only once the
    # Blocks count as launched, which `mount_gradio_app` never marks. Mark it, so that check runs; the handlers check
    # the path again themselves (`uploaded_file`).
    demo.has_launched = True
    return mounted


def server_config(asgi_app: Any, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for the app: ``X-Forwarded-For`` is read only from the proxies the operator names
    (`serving.access.trusted_proxies`; by default from nobody, so the client is the socket's peer), idle connections
    close after KEEP_ALIVE_S, at most MAX_CONNECTIONS at once, and a stop waits at most 3 s for open requests."""
    proxies = trusted_proxies()
    return uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=3,
        proxy_headers=proxies is not None,
        forwarded_allow_ips=proxies or "",
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=MAX_CONNECTIONS,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--artifacts", default="artifacts", help="holds finetune/, rag/ (and report/, curve/)")
    parser.add_argument("--no-build", action="store_true", help="serve what exists; do not build missing backends")
    parser.add_argument(
        "--artifacts-repo",
        metavar="ORG/NAME",
        help="first download prebuilt finetune/ and rag/ folders from this Hugging Face Hub repo into --artifacts",
    )
    parser.add_argument(
        "--scratch-gpt2",
        action="store_true",
        help="also serve GPT-2 trained from scratch on the same examples (built when missing), as an extra contender",
    )
    parser.add_argument(
        "--teach-shared",
        action="store_true",
        help="let visitors teach the shared index too, not only their own session (never without a token on a Space; "
        "same as FTRAG_TEACH_SHARED=1)",
    )
    parser.add_argument(
        "--no-compare-at-start",
        action="store_true",
        help="do not measure the backends at start-up when no report is saved (Decide then waits for one)",
    )
    parser.add_argument(
        "--no-curve-at-start",
        action="store_true",
        help="do not measure a small learning curve at start-up when the artifacts hold none",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8", "auto"),
        help="what the transformers are served at (same as FTRAG_PRECISION; default fp32): auto measures each on the "
        "validation part and serves the fastest within fp32's accuracy interval; a CPU without the instructions "
        "serves fp32 and says so",
    )
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"), help="same as FTRAG_RUNTIME (default torch)")
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    return parser.parse_args(argv)


def _log_progress():
    """A progress callback that logs a line when the percentage or the stage changes, not on every step."""
    last: dict[str, Any] = {"pct": -1, "stage": None}

    def report(fraction: float, message: str) -> None:
        pct, stage = int(100 * fraction), message.split(":")[0]
        if pct != last["pct"] or stage != last["stage"]:
            logger.info("[%3d%%] %s", pct, message)
            last.update(pct=pct, stage=stage)

    return report


def main(argv: list[str] | None = None) -> None:
    from core.cli import setup_logging

    args = parse_args(argv)
    setup_logging()
    for variable, value in (("FTRAG_PRECISION", args.precision), ("FTRAG_RUNTIME", args.runtime)):
        if value:
            os.environ[variable] = value  # every loader reads it (core.precision)
    artifacts = Path(args.artifacts)
    if args.artifacts_repo:
        try:
            fetch_artifacts(args.artifacts_repo, artifacts)
        except ArtifactError as err:
            logger.error("%s; serving what is in %s", err, artifacts)
    state: App | None = None
    state_made = threading.Event()

    def when_ready() -> None:  # in the bring-up thread, once every backend is up
        logger.info("Backends ready in %.1f s: %s", service.started_seconds, sorted(service.backends))
        state_made.wait()
        if state is not None and not args.no_compare_at_start:
            state.start_comparison(background=False)  # when no report was saved: Decide then answers out of the box
        if state is not None and not args.no_curve_at_start:
            state.start_curve()  # when the artifacts hold no learning curve: a small one

    service = Service.start(artifacts, build_missing=not args.no_build, progress=_log_progress(),
                            scratch_gpt2=args.scratch_gpt2, background=True, on_ready=when_ready)  # fmt: skip
    if args.teach_shared:
        service.teach_policy.shared = True
    service.start_compactor(float(os.environ.get("FTRAG_COMPACT_SECONDS", "600")))
    state = App(service, report_dir=artifacts / "report", curve_dir=artifacts / "curve")
    if state.report is None and not args.no_compare_at_start:
        state.comparing = "waiting for the backends"  # so Decide says "soon" (503), not "run one yourself"
    if state.curve_dir is not None and state.curve is None and not args.no_curve_at_start:
        state.curving = "waiting for the backends and the comparison"  # so Decide says it is coming
    state_made.set()
    uvicorn.Server(server_config(create_app(state), args.host, args.port)).run()
    # SIGTERM: uvicorn stops serving and waits at most 3 s for open requests. A long evaluation may still be running
    # in a worker thread; the teach log is already on disk, so nothing is lost by not waiting for it.
    service.close()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
