"""The documentation's code blocks work as printed (docs/**/*.md, the site `mkdocs build` makes).

* Every ```python block carries a marker on the line before it: `<!-- docs-test: run -->` (run here,
  the page's run blocks in order in one namespace, in a temporary directory), `<!-- docs-test:
  tests/test_x.py (...) -->` (run by that test, which shrinks its sizes; it must read this page), or
  `<!-- docs-test: skip: why -->`.
* Every `caml-rl ...` command in a ```bash block (also after `torchrun ... -m caml_rl`) parses with the
  real argument parser; a synopsis line (`[--flag ...]`) names only subcommands and flags that exist.
  A `python experiments/x.py` script exists.
* ```yaml blocks parse; on the configuration page they load as configs.
* README.md is the front page: short, opens with the two commands of the getting-started page, and
  its results table and links agree with the docs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from caml_rl import Trainer, load_config
from caml_rl.cli import build_parser

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^(?P<marker><!-- docs-test: (?P<how>.*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.S | re.M)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def blocks(page: Path, lang: str) -> list[tuple[str | None, str]]:
    """``(marker, code)`` of every fenced block of ``lang`` on ``page``, in order."""
    return [(m["how"], m["code"]) for m in BLOCK.finditer(page.read_text()) if m["lang"] == lang]


def docs_block(page: str, fragment: str) -> str:
    """The one python block of ``docs/page`` that contains ``fragment`` (for the tests that run them)."""
    found = [code for _, code in blocks(DOCS / page, "python") if fragment in code]
    assert len(found) == 1, f"docs/{page}: {len(found)} python blocks contain {fragment!r}"
    return found[0]


# python blocks ---------------------------------------------------------------------------------------


def test_every_python_block_says_how_it_is_tested():
    unmarked, wrong = [], []
    for page in pages():
        for how, code in blocks(page, "python"):
            first = code.strip().splitlines()[0] if code.strip() else ""
            if how is None:
                unmarked.append(f"{page.relative_to(ROOT)}: {first}")
            elif how.startswith("tests/"):
                test = ROOT / how.split()[0]
                if not test.is_file() or page.name not in test.read_text():
                    wrong.append(f"{page.relative_to(ROOT)}: {how.split()[0]} does not read {page.name}")
            elif how != "run" and not how.startswith("skip: "):
                wrong.append(f"{page.relative_to(ROOT)}: unknown marker {how!r}")
    assert not unmarked, f"python blocks without a <!-- docs-test: ... --> marker: {unmarked}"
    assert not wrong, wrong


RUN_PAGES = [p for p in pages() if any(how == "run" for how, _ in blocks(p, "python"))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[p.name for p in RUN_PAGES])
def test_run_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for how, code in blocks(page, "python"):
        if how == "run":
            exec(compile(code, f"{page.name}-block", "exec"), namespace)


def _small(name: str) -> list[str]:
    return [
        f"env.name={name}",
        "iterations=1",
        "meta_batch_size=2",
        "episodes_per_task=2",
        "policy.hidden_sizes=[8]",
        "device=cpu",
        "evaluation.tasks=2",
        "evaluation.episodes=2",
        "evaluation.steps=1",
    ]


@pytest.mark.filterwarnings("ignore:Evaluation environment is not wrapped")
def test_sb3_predict_example_runs(tmp_path, monkeypatch):
    """stable-baselines3.md: SB3's evaluate_policy on an adapted policy, after a short run into runs/nav."""
    code = docs_block("stable-baselines3.md", "evaluate_policy(adapted")
    assert 'load_run("runs/nav").adapt(task=[0.3, -0.2], steps=1)' in code and "n_eval_episodes=20" in code
    monkeypatch.chdir(tmp_path)
    Trainer(load_config(None, _small("navigation2d")), "runs/nav").train(quiet=True)
    code = code.replace("steps=1)", "steps=1, episodes=2)").replace("n_eval_episodes=20", "n_eval_episodes=2")
    namespace: dict = {}
    exec(compile(code, "stable-baselines3-predict", "exec"), namespace)
    assert np.isfinite(namespace["mean"])


def test_visualize_example_runs(tmp_path, monkeypatch):
    """visualisation.md: caml_rl.visualize on the committed navigation run (a copy: nothing is written
    into experiments/results/)."""
    code = docs_block("visualisation.md", "visualize(")
    name = "experiments/results/navigation/caml_seed0"
    assert f'visualize("{name}", tasks=4, steps=(0, 1, 2))' in code
    source, copy = ROOT / name, tmp_path / name
    copy.mkdir(parents=True)
    for file in ("config.yaml", "run.json", "progress.csv"):
        shutil.copy(source / file, copy / file)
    (copy / "checkpoints").mkdir()
    newest = sorted((source / "checkpoints").glob("iter_*.pt"))[-1]
    shutil.copy(newest, copy / "checkpoints" / newest.name)
    monkeypatch.chdir(tmp_path)
    code = code.replace("tasks=4, steps=(0, 1, 2))", "tasks=2, steps=(0, 1), episodes=2)")
    namespace: dict = {}
    exec(compile(code, "visualisation-block", "exec"), namespace)
    written = {Path(p).name for p in namespace["paths"]}
    assert any(n.startswith("learning_curves") for n in written), written


# bash blocks: caml-rl commands parse -----------------------------------------------------------------


def _commands(code: str) -> list[str]:
    """Logical lines: ``\\``-continued lines joined, comments dropped."""
    lines, current = [], ""
    for raw in code.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append((current + line).strip())
        current = ""
    return [line for line in lines if line]


def _subparsers() -> dict:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices


def _check_command(argv: list[str], where: str) -> None:
    """The subcommand and every flag exist, spelled out (argparse would accept an abbreviation); a
    concrete command (not a synopsis with ``[--flag ...]``) also parses."""
    text = " ".join(argv)
    commands = _subparsers()
    assert argv and argv[0] in commands, f"{where}: unknown subcommand in {text!r}"
    known = set(commands[argv[0]]._option_string_actions)
    unknown = [flag for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text) if flag not in known]
    assert not unknown, f"{where}: {argv[0]} has no {unknown} ({text!r})"
    if any(mark in text for mark in ("[", "|", "...")):
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `caml-rl {text}` does not parse") from exc


def test_every_documented_command_parses():
    checked = 0
    for page in [*pages(), ROOT / "README.md"]:
        for _, code in blocks(page, "bash"):
            for line in _commands(code):
                words = line.split()
                where = f"{page.relative_to(ROOT)}: {line}"
                if words[0] == "caml-rl":
                    _check_command(words[1:], where)
                elif "-m" in words and words[words.index("-m") + 1] == "caml_rl":
                    _check_command(words[words.index("-m") + 2 :], where)
                elif words[0] == "python" and words[1].startswith("experiments/"):
                    assert (ROOT / words[1]).is_file(), where
                else:
                    continue
                checked += 1
    assert checked > 30


def test_the_command_checker_catches_a_wrong_flag():
    with pytest.raises(AssertionError, match=r"has no \['--iteration'\]"):
        _check_command(["train", "--iteration", "3"], "here")  # argparse alone takes the abbreviation
    with pytest.raises(AssertionError, match=r"has no \['--bogus'\]"):
        _check_command(["train", "[--bogus N]"], "here")
    with pytest.raises(AssertionError, match="does not parse"):
        _check_command(["evaluate"], "here")  # RUN_DIR missing


def test_yaml_blocks_parse_and_configs_load(tmp_path):
    for page in pages():
        for _, code in blocks(page, "yaml"):
            yaml.safe_load(code)
    configs = blocks(DOCS / "configuration.md", "yaml")
    assert configs
    for i, (_, code) in enumerate(configs):
        (tmp_path / f"c{i}.yaml").write_text(code)
        load_config(tmp_path / f"c{i}.yaml")


# the site's structure ---------------------------------------------------------------------------------


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    class Loader(yaml.SafeLoader):  # mkdocs.yml may hold !!python tags in other sites; none here
        pass

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def entries(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from entries(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from entries(value)

    nav = set(entries(config["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in pages()}
    assert on_disk <= nav, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - nav)}"
    assert nav - on_disk <= {"algorithms/pearl.md"}, f"nav entries without a page: {sorted(nav - on_disk)}"


# README: the front page -------------------------------------------------------------------------------


README = ROOT / "README.md"


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    first_two = [code for _, code in blocks(README, "bash")][:2]
    assert first_two == [code for _, code in blocks(DOCS / "getting-started.md", "bash")][:2]
    assert text.index("```bash") < 40 and "pip install torch==2.13.0" in text.split("```bash")[0] + first_two[0]


def _tables(text: str) -> list[str]:
    return re.findall(r"^\| task \| iterations \|.*?(?=\n\n|\Z)", text, re.S | re.M)


def test_readme_results_table_is_the_docs_table():
    readme, docs = _tables(README.read_text()), _tables((DOCS / "experiments.md").read_text())
    assert readme and readme == docs


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", README.read_text()):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists(), target
