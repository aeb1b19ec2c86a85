"""The project's own promises about its files: pinned dependencies, no pickle."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_requirement_is_pinned_exactly():
    reqs = _requirements()
    assert reqs, "requirements.txt is empty"
    loose = [r for r in reqs if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", r)]
    assert loose == []


def test_torch_is_the_cpu_pin_and_comes_first():
    assert _requirements()[0] == "torch==2.13.0"


def test_no_pickle_loading_in_the_code():
    offenders = []
    for path in REPO.rglob("*.py"):
        if ".venv" in path.parts or path.parent.name == "tests":
            continue
        text = path.read_text()
        if re.search(
            r"\bpickle\.loads?\(|\bjoblib\.load\(|allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True", text
        ):
            offenders.append(str(path.relative_to(REPO)))
        if re.search(r"torch\.load\((?![^)]*weights_only\s*=\s*True)", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_retrieval_alone_never_imports_langchain():
    """LangChain is the LLM mode's: importing the retrieval backend, the comparison CLI or the plots loads none of it
    (it costs seconds and memory at start-up)."""
    import subprocess
    import sys

    code = (
        "import sys, rag, jobs.run, core.plots; from rag import LlmUnavailable; "
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'langgraph'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert loaded.stdout.strip() == "[]"
    code = "import sys; from rag import llm_from_env; print('langchain_core' in sys.modules)"
    on_use = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert on_use.stdout.strip() == "True"  # the LLM mode still there, on first use


def test_plotting_lives_below_the_backends():
    """The backends draw with core.plots; none imports the comparison layer to plot (it once did, in a cycle)."""
    offenders = [
        str(path.relative_to(REPO))
        for package in ("finetune", "rag", "hybrid")
        for path in (REPO / package).rglob("*.py")
        if re.search(r"^\s*(from|import) (compare|jobs|serving)\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def _import_graph() -> dict[str, set[str]]:
    """``{module: modules of this project it imports}``, lazy imports included, `TYPE_CHECKING` blocks left out."""
    import ast

    modules = {}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
            node.test) for n in ast.walk(node)}  # fmt: skip
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


LAYERS = {"core": 0, "finetune": 1, "rag": 1, "hybrid": 1, "compare": 2, "jobs": 3, "serving": 4}
"""Who may import whom: a package imports only packages of a lower layer (and its own): the backends (the hybrid is
one), the evaluation library, the user's commands (jobs), the app."""


def test_the_import_graph_has_no_cycle_and_no_arrow_up():
    graph = _import_graph()

    def upward(importer: str, imported: str) -> bool:  # into another package of the same layer or above
        mine, theirs = importer.split(".")[0], imported.split(".")[0]
        return mine != theirs and LAYERS[theirs] >= LAYERS[mine]

    up = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if upward(a, b))
    assert up == []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target] if target in path else [node, target]
            if target not in state and (found := cycle_from(target, [*path, target])):
                return found
        state[node] = 2
        return None

    cycles = [c for name in sorted(graph) if name not in state and (c := cycle_from(name, [name]))]
    assert cycles == []
