"""The repository map: symbols, the import graph, and a size that holds to the budget."""

from __future__ import annotations

from pathlib import Path

from bench.repo import generate_repo
from pipeline.git import Git
from pipeline.llm import repomap
from pipeline.planning.imports import read_graph
from tests.support import ServiceRepo


def test_top_level_symbols_only() -> None:
    source = (
        "import os\nVERSION = 2\nLIMIT: int = 5\n\n\ndef greet():\n    def inner():\n"
        "        pass\n\n\nasync def fetch():\n    pass\n\n\nclass Server:\n    NAME = 'x'\n"
    )
    assert repomap.symbols(source) == ["VERSION", "LIMIT", "greet", "fetch", "Server"]


def test_the_map_lists_files_symbols_and_who_imports_what(service: ServiceRepo) -> None:
    git = Git(service.live)
    head = git.head()
    drawn = repomap.build(git, head, read_graph(git, head), 4_000)
    assert drawn.commit == head and drawn.files == drawn.listed == 5
    assert "app.py (" in drawn.text and ":: greet" in drawn.text
    assert "app <- checks.test_app" in drawn.text
    assert "Not listed" not in drawn.text


def test_a_big_repository_is_cut_to_the_budget_and_counted(tmp_path: Path) -> None:
    _, live, _ = generate_repo(tmp_path / "big", files=500, megabytes=2.0)
    git = Git(live)
    head = git.head()
    graph = read_graph(git, head)
    small = repomap.build(git, head, graph, 4_000)
    big = repomap.build(git, head, graph, 24_000)
    assert small.tokens <= 4_000 and big.tokens <= 24_000
    assert small.listed < big.listed < 500 == small.files
    assert "## Not listed by name" in small.text
    # Imported modules come first: the most imported one is listed even in the small map.
    top = max(graph.modules, key=lambda m: sum(m in names for names in graph.imports.values()))
    assert graph.modules[top] in small.text
    assert repomap.build(git, head, graph, 4_000).text == small.text  # deterministic
