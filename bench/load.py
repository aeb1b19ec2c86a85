"""Load test: the app under 32 concurrent clients x 50 requests, REST and gradio_client, classify / compare / teach.

Starts ``python app.py`` on 127.0.0.1 in a subprocess, over a copy of the artifacts (teach calls change the index),
then every client sends its mix of calls; afterwards every acknowledged teach must be in the saved index.

    python bench/load.py --artifacts artifacts [--clients 32] [--requests 50]
    python bench/load.py --compare-batching --clients 32 --requests 20   # micro-batching off vs on, and teaching

The artifacts are what ``python app.py --artifacts DIR`` builds (finetune/, rag/); the app serves the hybrid of the
two as well, and every answer must hold a label from each backend served.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
import psutil

from bench.common import machine, table
from compare.latency import percentiles
from core.data import load_tweets

REPO = Path(__file__).resolve().parents[1]

BACKEND_DIRS = ("finetune", "rag")
"""What the bench copies from the artifacts: the two backends (the app fits the hybrid of them itself)."""
MIX = [("rest classify", 0.5), ("rest compare", 0.15), ("rest teach", 0.1), ("gradio classify", 0.25)]


@contextlib.contextmanager
def running_app(artifacts: Path, **env: str):
    """``python app.py`` on a free local port over a private copy of `artifacts` (its backends, not its reports);
    waits until every backend is up and yields (url, copy, the backends served)."""
    work = Path(tempfile.mkdtemp(prefix="ftrag-load-"))
    for name in BACKEND_DIRS:
        shutil.copytree(artifacts / name, work / name)
    for log in artifacts.glob("rag.teach.sqlite*"):  # the index's taught examples travel with it
        shutil.copy2(log, work / log.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "FTRAG_TEACH_SHARED": "1",
                   "FTRAG_TEACH_PER_MINUTE": "1000000", **env}  # fmt: skip
    log = (work / "app.log").open("w")  # a file, not a pipe: a full pipe would stall the app mid-benchmark
    command = [sys.executable, str(REPO / "app.py"), "--artifacts", str(work), "--no-build", "--port", str(port)]
    server = subprocess.Popen([*command, "--no-compare-at-start", "--no-curve-at-start"], env=environment, stdout=log,
                              stderr=log)  # fmt: skip
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the app exited: {(work / 'app.log').read_text()[-2000:]}")
            try:
                models = httpx.get(url + "/api/models", timeout=2).json()
                if models["start_up"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        backends = sorted(models["backends"])
        if not {"finetune", "rag"} <= set(backends):
            raise SystemExit(f"the app serves {backends}, not the fine-tune and retrieval: {models['unavailable']}")
        print(f"app ready after {time.perf_counter() - start:.1f} s ({env or 'default settings'}), serving {backends}",
              flush=True)  # fmt: skip
        yield url, work, backends
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--data", default=None)
    parser.add_argument(
        "--compare-batching",
        action="store_true",
        help="classify load with micro-batching off, then on, plus teaching under load; ends with one JSON line",
    )
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the wait when batching is on")
    args = parser.parse_args()
    missing = [name for name in BACKEND_DIRS if not (Path(args.artifacts) / name).is_dir()]
    if missing:
        dirs = " or ".join(f"{name}/" for name in missing)
        parser.error(f"{args.artifacts} has no {dirs}: run `python app.py --artifacts {args.artifacts}` once to build "
                     "the demo line-up, then stop it")  # fmt: skip
    tweets = list(load_tweets(args.data, split="test", limit=500, seed=2)["text"])
    if args.compare_batching:
        compare_batching(Path(args.artifacts), tweets, args)
        return
    with running_app(Path(args.artifacts)) as (url, work, backends):
        results, taught = run_clients(url, tweets, backends, args.clients, args.requests)
        lost = missing_teaches(work, taught)
    print_mix(results, taught, lost, args)


def missing_teaches(work: Path, taught: list[str]) -> list[str]:
    """Acknowledged taught examples that a fresh load of the index (files plus teach log) does not hold."""
    import rag

    saved = set(rag.load(work / "rag").examples()[0])
    return [t for t in taught if t not in saved]


def print_mix(results, taught: list[str], lost: list[str], args) -> None:
    rows, total = [], 0
    wall = results.pop("_wall")
    for kind, _ in MIX:
        ms = [m for m, ok in results[kind] if ok]
        errors = sum(1 for _, ok in results[kind] if not ok)
        total += len(results[kind])
        p = percentiles(np.array(ms)) if ms else {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
        rows.append({"endpoint": kind, "requests": len(results[kind]), "errors": errors, "p50 ms": p["p50"],
                     "p95 ms": p["p95"], "p99 ms": p["p99"]})  # fmt: skip
    print(f"{machine()}; {args.clients} clients x {args.requests} requests, one tweet per request")
    print(table(rows))
    errors = sum(r["errors"] for r in rows)
    print(f"\n{total} requests in {wall:.1f} s: {total / wall:.1f} requests/s; errors: {errors}")
    print(f"taught examples acknowledged: {len(taught)}; missing from the saved index afterwards: {len(lost)}")


def compare_batching(artifacts: Path, tweets: list[str], args) -> None:
    """The same classify load against the app with batching off and on, in one run; then teaching under load."""
    rows, summary = [], {"errors": 0, "lost_teaches": 0, "p95_ms": {}}
    for label, wait in (("unbatched", "0"), ("batched", str(args.batch_wait_ms))):
        with running_app(artifacts, FTRAG_BATCH_WAIT_MS=wait) as (url, work, backends):
            server = app_process(work)
            for kind in KINDS:  # warm-up, not measured: first calls trace graphs and open Gradio sessions
                run_one_kind(url, tweets, backends, kind, clients=4, requests=5)
            # One client alone: what batching costs a lone request (nothing, since the batcher waits only in a crowd)
            rows.append(load_row(f"{label}, rest classify, 1 client", run_one_kind(
                url, tweets, backends, "rest classify", clients=1, requests=60)))  # fmt: skip
            for kind in KINDS:
                counts = batch_counts(url)  # read outside the CPU measurement
                server_cpu, client_cpu = cpu_seconds(server), cpu_seconds(psutil.Process())
                results = run_one_kind(url, tweets, backends, kind, args.clients, args.requests)
                app_cpu = cpu_seconds(server) - server_cpu
                client_cpu = cpu_seconds(psutil.Process()) - client_cpu
                rows.append(load_row(f"{label}, {kind}", results))
                rows[-1]["mean batch"] = mean_batch(counts, batch_counts(url))
                rows[-1]["app CPU s"] = round(app_cpu, 1)
                rows[-1]["app CPU ms per request"] = round(app_cpu * 1000 / rows[-1]["requests"], 1)
                rows[-1]["client CPU s"] = round(client_cpu, 1)
                summary["errors"] += rows[-1]["errors"]
                summary["p95_ms"][f"{label} {kind}"] = round(rows[-1]["p95 ms"], 1)
            if label == "batched":
                teach_rows, lost = teach_under_load(url, work, tweets)
                rows += teach_rows
                summary["lost_teaches"] = len(lost)
                summary["errors"] += sum(r["errors"] for r in teach_rows)
    rps = {r["load"]: r["requests/s"] for r in rows}
    summary["unbatched_rps"] = rps["unbatched, rest classify"]
    summary["batched_rps"] = rps["batched, rest classify"]
    summary["speedup"] = round(summary["batched_rps"] / summary["unbatched_rps"], 2)
    summary["one_client_p50_ms"] = {
        label: round(next(r["p50 ms"] for r in rows if r["load"] == f"{label}, rest classify, 1 client"), 1)
        for label in ("unbatched", "batched")
    }
    summary["gradio_rps"] = {name: value for name, value in rps.items() if "gradio" in name}
    rest, gradio_http = rps["batched, rest classify"], rps["batched, gradio http classify"]
    summary["rest_over_gradio_http_batched"] = round(rest / gradio_http, 2)
    summary["rest_over_gradio_client_batched"] = round(rest / rps["batched, gradio_client classify"], 2)
    # What each route costs the app, whatever the client on the same cores costs (gradio_client's own CPU caps the
    # requests a second it can send here; the app's CPU per request is what bounds its capacity)
    cpu = {r["load"]: r["app CPU ms per request"] for r in rows if "app CPU ms per request" in r}
    summary["app_cpu_ms_per_request"] = cpu
    summary["gradio_client_over_rest_app_cpu_batched"] = round(
        cpu["batched, gradio_client classify"] / cpu["batched, rest classify"], 2
    )
    summary["teach_p95_ms"] = {r["load"]: round(r["p95 ms"], 1) for r in rows if r["load"].startswith("teach:")}
    quiet, flood, paced = (next(r["requests/s"] for r in rows if r["load"] == name) for name in TEACH_LOADS)
    summary["classify_rps_while_teaching_vs_not"] = {
        "back to back": round(flood / quiet, 3),
        "2/s": round(paced / quiet, 3),
    }
    print(f"{machine()}; {args.clients} clients x {args.requests} requests each, one tweet per request")
    print(table(rows))
    print(json.dumps(summary))


KINDS = ("rest classify", "gradio http classify", "gradio_client classify")


def app_process(work: Path):
    """The app serving `work` (to read its CPU time)."""
    return next(p for p in psutil.process_iter(["cmdline"]) if str(work) in " ".join(p.info["cmdline"] or []))


def batch_counts(url: str) -> dict[str, tuple[int, int]]:
    """(batches, texts) each backend's micro-batcher has answered so far, as `/api/models` reports them."""
    backends = httpx.get(url + "/api/models", timeout=30).json()["batching"]["backends"]
    return {name: (b["batches"], b["texts"]) for name, b in backends.items()}


def mean_batch(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    """Texts per batched `predict` between two `batch_counts`, per backend ("" when batching is off)."""
    means = []
    for name, (batches, texts) in sorted(after.items()):
        batches0, texts0 = before.get(name, (0, 0))
        if batches > batches0:
            means.append(f"{name} {(texts - texts0) / (batches - batches0):.1f}")
    return ", ".join(means)


def cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


TEACH_LOADS = (
    "8 clients classify, no teaching",
    "8 clients classify while 1 teaches back to back",
    "8 clients classify while 1 teaches 2/s",
)


def teach_under_load(url: str, work: Path, tweets: list[str], seconds: float = 15.0):
    """8 classify clients for `seconds`: without teaching, while one client teaches back to back (far past the
    default allowance of 120 a minute, so the bench lifts it), and while one teaches at that allowance (2 a second)."""
    quiet = run_for(url, tweets, clients=8, seconds=seconds, teach_every_s=None)
    flood = run_for(url, tweets, clients=8, seconds=seconds, teach_every_s=0.0)
    paced = run_for(url, tweets, clients=8, seconds=seconds, teach_every_s=0.5)
    lost = missing_teaches(work, flood["taught"] + paced["taught"])
    rows = [load_row(TEACH_LOADS[0], quiet["classify"], quiet["wall"])]
    for name, run in zip(TEACH_LOADS[1:], (flood, paced), strict=True):
        rows.append(load_row(name, run["classify"], run["wall"]))
        rows.append(load_row(f"teach: {name.split(' while ')[1]} ({len(run['taught'])} taught)", run["teach"],
                             run["wall"]))  # fmt: skip
    return rows, lost


def load_row(name: str, results: list[tuple[float, bool]], wall: float | None = None) -> dict:
    if wall is None:
        results, wall = results[:-1], results[-1][0]
    ms = np.array([m for m, ok in results if ok] or [float("nan")])
    p = percentiles(ms)
    errors = sum(1 for _, ok in results if not ok)
    return {"load": name, "requests": len(results), "errors": errors, "requests/s": round(len(results) / wall, 1),
            "p50 ms": p["p50"], "p95 ms": p["p95"]}  # fmt: skip


def answered_by_all(body: dict, backends: list[str]) -> bool:
    """A `/api/classify` answer to one text holds a label from every backend served."""
    results = body["results"][0]["results"]
    return sorted(results) == backends and all(r["label"] for r in results.values())


def labelled_by_all(outputs, backends: list[str]) -> bool:
    """The UI's classify outputs (a label and a latency line per backend column, then the neighbours) hold a label
    for every backend served."""
    labels = [o for o in outputs if isinstance(o, dict) and o.get("label") and "confidences" in o]
    return len(labels) == len(backends)


def gradio_client(url: str):
    """A `gradio_client.Client` of the app at `url` (plain HTTP on this machine).

    Without ``ssl_verify=False`` the client builds a TLS context, loading every CA certificate, for each call's event
    stream: about 75 ms of CPU per call spent in the bench (on the app's own 2 cores) for a connection that has no TLS.
    """
    from gradio_client import Client

    return Client(url + "/", verbose=False, ssl_verify=False)


def run_one_kind(
    url: str, tweets: list[str], backends: list[str], kind: str, clients: int, requests: int
) -> list[tuple[float, bool]]:
    """`clients` threads each sending `requests` single-tweet classify calls of one kind; the wall time comes last."""
    out: list[tuple[float, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        rng = random.Random(i)
        http = httpx.Client(base_url=url, timeout=120)
        gradio = gradio_client(url) if kind == "gradio_client classify" else None
        barrier.wait()
        for _ in range(requests):
            tweet = rng.choice(tweets)
            t0 = time.perf_counter()
            try:
                if kind == "rest classify":
                    r = http.post("/api/classify", json={"texts": [tweet]})
                    ok = r.status_code == 200 and answered_by_all(r.json(), backends)
                elif kind == "gradio http classify":  # Gradio's own call API, the route gradio_client uses
                    event = http.post("/gradio_api/call/classify", json={"data": [tweet]}).json()["event_id"]
                    ok = "event: complete" in http.get(f"/gradio_api/call/classify/{event}").text
                else:
                    ok = labelled_by_all(gradio.predict(tweet, api_name="/classify"), backends)
            except Exception:
                ok = False
            with lock:
                out.append(((time.perf_counter() - t0) * 1000, ok))
        http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return [*out, (time.perf_counter() - start, True)]


def run_for(url: str, tweets: list[str], clients: int, seconds: float, teach_every_s: float | None) -> dict:
    """Classify clients (and one teacher, one teach every `teach_every_s` at most, when not None) for `seconds`."""
    results: dict = {"classify": [], "teach": [], "taught": []}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def classify(i: int) -> None:
        rng, http = random.Random(i), httpx.Client(base_url=url, timeout=120)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                ok = http.post("/api/classify", json={"texts": [rng.choice(tweets)]}).status_code == 200
            except httpx.HTTPError:  # counted as an error, not dropped
                ok = False
            with lock:
                results["classify"].append(((time.perf_counter() - t0) * 1000, ok))

    def teacher() -> None:
        http = httpx.Client(base_url=url, timeout=120)
        while time.perf_counter() < stop:
            text = f"load test example {uuid.uuid4().hex[:12]}"
            t0 = time.perf_counter()
            try:
                ok = http.post("/api/teach", json={"texts": [text], "labels": ["neutral"]}).status_code == 200
            except httpx.HTTPError:
                ok = False
            with lock:
                results["teach"].append(((time.perf_counter() - t0) * 1000, ok))
                if ok:
                    results["taught"].append(text)
            time.sleep(max(0.0, teach_every_s - (time.perf_counter() - t0)))

    threads = [threading.Thread(target=classify, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=teacher)] if teach_every_s is not None else []
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["wall"] = time.perf_counter() - start
    return results


def run_clients(url: str, tweets: list[str], backends: list[str], clients: int, requests: int):
    results: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    taught: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        rng = random.Random(i)
        http = httpx.Client(base_url=url, timeout=120)
        gradio = gradio_client(url)
        barrier.wait()
        for _ in range(requests):
            kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
            tweet = rng.choice(tweets)
            t0 = time.perf_counter()
            ok = True
            try:
                if kind == "rest classify":
                    r = http.post("/api/classify", json={"texts": [tweet]})
                    ok = r.status_code == 200 and answered_by_all(r.json(), backends)
                elif kind == "rest compare":
                    r = http.post("/api/compare", json={"texts": [tweet], "labels": ["neutral"]})
                    ok = r.status_code == 200 and "accuracy" in r.json()
                elif kind == "rest teach":
                    text = f"load test example {i} {uuid.uuid4().hex[:8]}: {tweet[:100]}"
                    r = http.post("/api/teach", json={"texts": [text], "labels": ["neutral"]})
                    ok = r.status_code == 200
                    if ok:
                        with lock:
                            taught.append(text)
                else:
                    ok = labelled_by_all(gradio.predict(tweet, api_name="/classify"), backends)
            except Exception:
                ok = False
            with lock:
                results[kind].append(((time.perf_counter() - t0) * 1000, ok))
        http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["_wall"] = time.perf_counter() - start  # type: ignore[assignment]
    return results, taught


if __name__ == "__main__":
    main()
