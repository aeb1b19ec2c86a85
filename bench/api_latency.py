"""Start-up time of the app and the latency of ``POST /api/classify`` for one tweet, per backend, over HTTP.

Starts ``python app.py --no-build`` on 127.0.0.1 in a subprocess (so the client does not share the server's
interpreter), waits for HTTP 200, then sends one-tweet requests for each backend, interleaved, warm-up excluded.

    python bench/api_latency.py --artifacts artifacts [--requests 100]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from bench.common import machine, table
from compare.latency import percentiles
from core.data import load_tweets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    artifacts = Path(args.artifacts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, str(repo / "app.py"), "--artifacts", str(artifacts), "--no-build", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=30) as client:
        while True:
            if server.poll() is not None:
                raise SystemExit("the app exited before it answered")
            try:
                if client.get(url + "/").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        ready = time.perf_counter() - start
        health = client.get(url + "/api/health").json()
        models = client.get(url + "/api/models").json()["backends"]
        tweets = list(load_tweets(args.data, split="test", limit=args.requests + 10, seed=1)["text"])
        names = health["backends"]
        for tweet in tweets[:10]:
            for name in names:
                client.post(url + "/api/classify", json={"texts": [tweet], "backends": [name]}).raise_for_status()
        timings: dict[str, list[float]] = {name: [] for name in names}
        for tweet in tweets[10:]:
            for name in names:
                t0 = time.perf_counter()
                client.post(url + "/api/classify", json={"texts": [tweet], "backends": [name]}).raise_for_status()
                timings[name].append((time.perf_counter() - t0) * 1000)
    server.terminate()
    server.wait(timeout=30)
    print(f"{machine()}; artifacts {artifacts}")
    print(f"start-up: first HTTP 200 after {ready:.1f} s (python app.py --no-build, artifacts in place)")
    rows = []
    for name in names:
        p = percentiles(np.array(timings[name]))
        rows.append({"backend": name, "requests": len(timings[name]), "p50 ms": p["p50"], "p95 ms": p["p95"],
                     "p99 ms": p["p99"], "what": models[name]["description"]})  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
