"""How much error the retrieval vote tolerates in its query vectors, and what int8 embedders give it.

The served retrieval backend labels a query by a softmax vote over its nearest examples. Whether an int8 embedder
can be served therefore depends less on how close its vectors are to fp32's than on how many queries' votes sit so
near a tie that a small change of similarities flips them. On the index of an artifacts folder (the demo line-up by
default), for test tweets this prints:

1. the vote's margin (top share minus the second) under fp32 queries, as quantiles;
2. the share of labels kept (same as fp32's) when fp32's query vectors get isotropic Gaussian noise of a few sizes
   (a stand-in for any lossy embedder of that cosine to fp32);
3. the same for ONNX Runtime's int8 embedder with every linear layer quantized, and with some of them kept in fp32
   (the attention's and the feed-forward's output projections, the feed-forward, everything but Q, K and V), each
   with its mean and least cosine to fp32 and its time to embed the texts.

    python bench/vote_sensitivity.py --artifacts artifacts/demo [--texts 1000] [--vote 300,softmax,0.1]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import machine, table
from core.data import load_tweets

NOISE = (0.002, 0.004, 0.007, 0.01, 0.02)
"""Standard deviations of the Gaussian noise added per dimension before renormalising (384-d unit vectors)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts/demo")
    parser.add_argument("--data", default=None, help="the dataset (default: FTRAG_DATA or the Hub)")
    parser.add_argument("--texts", type=int, default=1000, help="test tweets (seeded sample)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vote", default=None, metavar="K,WEIGHTING,T",
                        help="vote this way instead of as the index was saved, e.g. 300,softmax,0.1")  # fmt: skip
    args = parser.parse_args()

    import rag
    from rag.classifier import vote

    torch.set_num_threads(args.threads)
    clf = rag.load(Path(args.artifacts) / "rag")
    if args.vote:
        k, weighting, temperature = args.vote.split(",")
        clf.k, clf.weighting, clf.temperature = int(k), weighting, float(temperature)
    embedder = clf.embedder
    texts = list(load_tweets(args.data, split="test", limit=args.texts, seed=0)["text"])
    print(f"machine: {machine()}; {clf.describe()}; {len(texts):,} test tweets", flush=True)

    def shares(vectors: np.ndarray) -> np.ndarray:
        """Each query's vote, as the share of each label."""
        scores, ids = clf.index.search(vectors, clf.k)
        return vote(scores, ids, clf._label_ids, len(clf.labels), clf.weighting, clf.temperature)

    def labels(vectors: np.ndarray) -> np.ndarray:
        return shares(vectors).argmax(axis=1)

    embedder.encode(texts[:64])  # compiled and warm
    start = time.perf_counter()
    fp32 = embedder.encode(texts)
    fp32_seconds = time.perf_counter() - start
    fp32_shares = shares(fp32)
    fp32_labels = fp32_shares.argmax(axis=1)
    ordered = np.sort(fp32_shares, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    quantiles = (0.01, 0.02, 0.05, 0.1, 0.5)
    values = np.quantile(margins, quantiles)
    print(table([{f"q{int(q * 100)}": float(v) for q, v in zip(quantiles, values, strict=True)}]))
    print(f"queries whose vote margin is below 0.01: {np.mean(margins < 0.01):.1%}; below 0.02: "
          f"{np.mean(margins < 0.02):.1%}\n")  # fmt: skip

    rng = np.random.default_rng(0)
    rows = [row("fp32 (served)", fp32, fp32, fp32_labels, fp32_labels, fp32_seconds)]
    for std in NOISE:
        noisy = fp32 + rng.normal(0.0, std, fp32.shape).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        rows.append(row(f"fp32 + noise (std {std})", noisy, fp32, labels(noisy), fp32_labels, None))
    rows += int8_rows(embedder, texts, fp32, fp32_labels, labels)
    print(table(rows))


def row(name, vectors, fp32, got, fp32_labels, seconds) -> dict:
    cosine = (vectors * fp32).sum(axis=1)
    return {
        "query vectors": name,
        "mean cosine to fp32": float(cosine.mean()),
        "least cosine": float(cosine.min()),
        "same label as fp32": f"{np.mean(got == fp32_labels):.1%}",
        "embed s": seconds,
    }


def int8_rows(embedder, texts, fp32, fp32_labels, labels) -> list[dict]:
    """ONNX Runtime int8 (dynamic, per channel, as `core.precision` serves it), with some MatMuls kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from core.precision import FP32, Hardware, OrtGraph, Variant

    base = OrtGraph.export(embedder.model[0].auto_model, embedder.model.preprocess(["a probe"]), "last_hidden_state")
    with tempfile.TemporaryDirectory(prefix="ftrag-sensitivity-") as folder:
        path = Path(folder) / "fp32.onnx"
        path.write_bytes(base.model_bytes)
        proto = onnx.load(str(path))
        proto.graph.ClearField("value_info")
        onnx.save(proto, str(path))
        # Each encoder layer's weight products, read off their inputs: Q, K and V and the feed-forward's first layer
        # read a layer norm, the attention's output projection the heads' merged view, the feed-forward's output GELU.
        matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and not n.input[0].startswith("val_")]
        after_attention = [n.name for n in matmuls if n.input[0].startswith("view")]
        ffn_out = [n.name for n in matmuls if n.input[0].startswith("gelu")]
        ffn_in = [b.name for a, b in itertools.pairwise(matmuls) if a.name in after_attention]
        kept = {
            "every linear layer int8": [],
            "attention output kept fp32": after_attention,
            "feed-forward output kept fp32": ffn_out,
            "feed-forward kept fp32": ffn_in + ffn_out,
            "only Q, K, V int8": ffn_in + ffn_out + after_attention,
        }
        rows = []
        for name, exclude in kept.items():
            out = Path(folder) / "int8.onnx"
            quantize_dynamic(path, out, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=not Hardware.detect().vnni, nodes_to_exclude=exclude)  # fmt: skip
            graph = OrtGraph(out.read_bytes(), base.input_names)
            graph.batches = True
            embedder._traced, embedder.variant = graph, Variant("int8", "onnxruntime")
            start = time.perf_counter()
            vectors = embedder.encode(texts)
            seconds = time.perf_counter() - start
            rows.append(row(f"onnxruntime int8, {name}", vectors, fp32, labels(vectors), fp32_labels, seconds))
            print(rows[-1], flush=True)
        embedder._traced, embedder.variant = None, FP32
        return rows


if __name__ == "__main__":
    main()
