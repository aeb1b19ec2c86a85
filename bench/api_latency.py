"""Start-up time of the app and the latency of ``POST /api/classify`` for one tweet, per backend, over HTTP.

Starts the app in this process on 127.0.0.1 (uvicorn in a thread) with the given artifacts, waits for HTTP 200,
then sends one-tweet requests for each backend, interleaved, warm-up excluded.

    python bench/api_latency.py --artifacts artifacts [--requests 100]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

import app
from bench.common import machine, percentiles, table
from compare.service import Service
from core.data import load_tweets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    import uvicorn

    start = time.perf_counter()
    service = Service.start(args.artifacts, build_missing=False)
    loaded = time.perf_counter() - start
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    artifacts = Path(args.artifacts)
    state = app.App(service, report_dir=artifacts / "report", curve_dir=artifacts / "curve")
    server = uvicorn.Server(uvicorn.Config(app.create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30) as client:
        while True:
            try:
                if client.get(url + "/").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        ready = time.perf_counter() - start
        tweets = list(load_tweets(args.data, split="test", limit=args.requests + 10, seed=1)["text"])
        names = sorted(service.backends)
        for tweet in tweets[:10]:
            for name in names:
                client.post(url + "/api/classify", json={"texts": [tweet], "backends": [name]}).raise_for_status()
        timings: dict[str, list[float]] = {name: [] for name in names}
        for tweet in tweets[10:]:
            for name in names:
                t0 = time.perf_counter()
                client.post(url + "/api/classify", json={"texts": [tweet], "backends": [name]}).raise_for_status()
                timings[name].append((time.perf_counter() - t0) * 1000)
    server.should_exit = True
    print(f"{machine()}; artifacts {artifacts}")
    print(f"start-up: backends loaded in {loaded:.1f} s, first HTTP 200 after {ready:.1f} s (in-process start)")
    rows = []
    for name in names:
        p = percentiles(np.array(timings[name]))
        rows.append({"backend": name, "requests": len(timings[name]), "p50 ms": p["p50"], "p95 ms": p["p95"],
                     "p99 ms": p["p99"], "what": service.models()["backends"][name]["description"]})  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
