"""mkdocs hooks: the configuration reference, generated from the config dataclasses' field docstrings,
and the source tree the API reference is read from.

``caml_rl.config.field_docs`` reads every key's default and docstring from the source, so the code is
the one source and the page cannot drift from it (tests/test_docs.py checks the page keeps its marker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from mkdocs.plugins import event_priority
except ImportError:  # tests/test_docs.py reads the reference from here without the docs extra installed

    def event_priority(priority: float) -> Any:
        return lambda hook: hook


ROOT = Path(__file__).resolve().parents[1]
API_SOURCE = ROOT / "build" / "api_src"  # mkdocs.yml's mkdocstrings paths

MARKER = "<!-- config-reference -->"


def config_rows() -> list[str]:
    """One Markdown table row per config key: key, default, docstring (on one line)."""
    from caml_rl.config import Config, field_docs

    return [f"| `{key}` | `{default}` | {' '.join(doc.split())} |" for key, default, doc in field_docs(Config)]


def config_reference() -> str:
    """Tables of every config key, one per section (top-level keys first), in the dataclasses' order."""
    sections: dict[str, list[str]] = {}
    for row in config_rows():
        key = row.split("`")[1]
        section = key.split(".")[0] if "." in key else ""
        sections.setdefault(section, []).append(row)
    head = "| key | default | meaning |\n|---|---|---|\n"
    parts = [f"### Top-level keys\n\n{head}" + "\n".join(sections.pop(""))]
    parts += [f"### `{name}`\n\n{head}" + "\n".join(rows) for name, rows in sections.items()]
    return "\n\n".join(parts)


def api_source_tree() -> Path:
    """``build/api_src/caml_rl``: links to ``caml_rl/``'s entries plus ``envs`` -> ``envs/``.

    The package installs ``envs/`` as ``caml_rl.envs`` (pyproject's package-dir), which a static
    reader of the source cannot see; this tree shows it the installed layout, without importing.
    """
    package = API_SOURCE / "caml_rl"
    package.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name: entry for entry in (ROOT / "caml_rl").iterdir() if entry.name != "__pycache__"}
    wanted["envs"] = ROOT / "envs"
    for link in package.iterdir():
        if link.name not in wanted or not link.is_symlink() or link.resolve() != wanted[link.name].resolve():
            link.unlink()
    for name, target in wanted.items():
        if not (package / name).is_symlink():
            (package / name).symlink_to(target)
    return package


@event_priority(100)  # before mkdocstrings' on_config, which globs its paths when it builds its handler
def on_config(config: Any) -> Any:
    """Build the source tree before mkdocstrings reads it."""
    api_source_tree()
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs calls this for every page; the configuration page gets its generated reference."""
    return markdown.replace(MARKER, config_reference()) if MARKER in markdown else markdown
