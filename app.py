"""Gradio app for the fine-tune vs RAG decision service.

Until the backends exist this page says so and shows where its data and models would come from; it holds no ML
logic, only wiring.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from core.settings import resolve

TITLE = "Fine-tune vs RAG: which classifier should you build?"


def sources_markdown() -> str:
    """What the app would use, one line per source, without touching the network."""
    lines = [
        f"- {resolve(kind, check_hub=False).describe()}" for kind in ("data", "base_model", "tokenizer", "embedder")
    ]
    return "\n".join(lines)


def build_demo() -> gr.Blocks:
    """The Blocks UI. No backend is built yet, so the page says so plainly."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(
            "**No backend is built yet for this page.** The retrieval classifier can be built from the command "
            "line (`python -m rag.build`); the fine-tuned GPT-2 and the side-by-side comparison arrive in later "
            "releases, and this page will then show both answers."
        )
        gr.Markdown("### Sources that would be used\n" + sources_markdown())
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    build_demo().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
