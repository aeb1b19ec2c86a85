from __future__ import annotations

import gradio as gr

import app


def test_placeholder_page_says_no_backend_and_shows_sources(clean_env, data_dir):
    clean_env.setenv("FTRAG_DATA", str(data_dir))
    demo = app.build_demo()
    assert isinstance(demo, gr.Blocks)
    text = " ".join(str(getattr(block, "value", "")) for block in demo.blocks.values())
    assert "No backend is built yet" in text
    assert f"data: {data_dir} (local, env)" in text
    assert "embedder: sentence-transformers/all-MiniLM-L6-v2" in text


def test_binds_locally_unless_on_spaces(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "org/space")
    assert app.parse_args([]).host == "0.0.0.0"
    assert app.parse_args(["--port", "9000"]).port == 9000
