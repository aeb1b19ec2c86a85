"""Load test: the app under 32 concurrent clients x 50 requests, REST and gradio_client, classify / compare / teach.

Starts ``python app.py`` on 127.0.0.1 in a subprocess, over a copy of the artifacts (teach calls change the index),
then every client sends its mix of calls; afterwards every acknowledged teach must be in the saved index.

    python bench/load.py --artifacts artifacts [--clients 32] [--requests 50]
"""

from __future__ import annotations

import argparse
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

from bench.common import machine, percentiles, table
from core.data import load_tweets

MIX = [("rest classify", 0.5), ("rest compare", 0.15), ("rest teach", 0.1), ("gradio classify", 0.25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    tweets = list(load_tweets(args.data, split="test", limit=500, seed=2)["text"])
    work = Path(tempfile.mkdtemp(prefix="ftrag-load-"))
    for name in ("finetune", "rag"):
        shutil.copytree(Path(args.artifacts) / name, work / name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, str(repo / "app.py"), "--artifacts", str(work), "--no-build", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the app exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/api/health", timeout=2).json()["backends"] == ["finetune", "rag"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        print(f"app ready after {time.perf_counter() - start:.1f} s")
        results, taught = run_clients(url, tweets, args.clients, args.requests)
    finally:
        server.terminate()
        server.wait(timeout=30)

    import rag

    saved = set(rag.load(work / "rag").examples()[0])
    lost = [t for t in taught if t not in saved]
    shutil.rmtree(work, ignore_errors=True)

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


def run_clients(url: str, tweets: list[str], clients: int, requests: int):
    from gradio_client import Client

    results: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    taught: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        rng = random.Random(i)
        http = httpx.Client(base_url=url, timeout=120)
        gradio = Client(url + "/", verbose=False)
        barrier.wait()
        for _ in range(requests):
            kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
            tweet = rng.choice(tweets)
            t0 = time.perf_counter()
            ok = True
            try:
                if kind == "rest classify":
                    r = http.post("/api/classify", json={"texts": [tweet]})
                    ok = r.status_code == 200 and len(r.json()["results"][0]["results"]) == 2
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
                    out = gradio.predict(tweet, api_name="/classify")
                    ok = len(out) == 5
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
