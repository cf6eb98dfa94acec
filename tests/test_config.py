import pytest

from caml_rl.config import Config, ConfigError, field_docs, load_config


def test_defaults_are_valid_caml_on_navigation():
    cfg = load_config()
    assert cfg.env.name == "navigation2d" and cfg.adaptation.partition == "context"
    assert cfg.policy.context_size > 0


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adaptation:\n  inner_lr: 0.5\npolicy:\n  hidden_sizes: [64, 64]\n")
    cfg = load_config(path, ["adaptation.inner_steps=2", "trpo.max_kl=0.02", "env.settings.horizon=50"])
    # exact: a parsed decimal is the correctly rounded float, the same as the literal's
    assert cfg.adaptation.inner_lr == 0.5 and cfg.adaptation.inner_steps == 2
    assert cfg.policy.hidden_sizes == [64, 64] and cfg.trpo.max_kl == 0.02
    assert cfg.env.settings == {"horizon": 50}


def test_a_section_left_empty_in_yaml_takes_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("policy:\nenv:\n")  # both null: accepted alone, so --set into them must work too
    cfg = load_config(path, ["policy.hidden_sizes=[5]", "env.settings.horizon=7"])
    assert cfg.policy.hidden_sizes == [5] and cfg.env.settings == {"horizon": 7}


def test_int_accepted_for_float():
    assert load_config(None, ["adaptation.inner_lr=1"]).adaptation.inner_lr == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("adaptation.inner_rl=0.5", r"unknown config key adaptation.inner_rl; allowed in this section: partition"),
        ("bogus=1", r"unknown config key bogus"),
        ("adaptation.inner_lr=fast", r"adaptation.inner_lr='fast' has the wrong type; expected float"),
        ("meta_batch_size=true", r"meta_batch_size=True has the wrong type; expected int"),
        ("adaptation.inner_lr=-1", r"adaptation.inner_lr=-1.0 is out of range; allowed: > 0"),
        ("trpo.fisher=exact", r"trpo.fisher='exact' is out of range; allowed: auto, fixed, full"),
        ("policy.hidden_sizes=[64, x]", r"policy.hidden_sizes\[1\]='x' has the wrong type"),
        ("device=tpu", r"device='tpu' is out of range"),
        ("noequals", r"not key=value"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("adaptation: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_key_is_documented():
    rows = field_docs(Config)
    assert len(rows) > 20
    assert all(doc for _, _, doc in rows), [k for k, _, d in rows if not d]


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "experiments" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_the_configuration_reference_is_generated_from_the_docstrings():
    """docs/configuration.md's reference lists every key with its default and docstring, made from the
    code when the site is built (docs/hooks.py), so the docs cannot drift from the code."""
    import importlib.util
    from pathlib import Path

    docs = Path(__file__).parents[1] / "docs"
    spec = importlib.util.spec_from_file_location("caml_rl_docs_hooks", docs / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    rows = [f"| `{key}` | `{default}` | {' '.join(doc.split())} |" for key, default, doc in field_docs(Config)]
    page = hooks.on_page_markdown((docs / "configuration.md").read_text(), None, None, None)
    head = "| key | default | meaning |\n|---|---|---|\n"
    tables = [part.split("\n\n")[0] for part in page.split(head)[1:]]
    assert sorted(row for table in tables for row in table.splitlines()) == sorted(rows)


def test_every_declared_limit_is_a_known_rule_that_its_default_meets():
    """A ``limited`` rule that is not one of the known ranges would be read as a list of choices and
    refuse every number; each default must meet its own rule."""
    import dataclasses

    from caml_rl.config_checks import _RANGES, allows

    sections = [Config()] + [getattr(Config(), f.name) for f in dataclasses.fields(Config)]
    rules = [
        (f.name, f.metadata["allowed"], getattr(s, f.name))
        for s in sections
        if dataclasses.is_dataclass(s)
        for f in dataclasses.fields(s)
        if "allowed" in f.metadata
    ]
    assert len(rules) > 40
    for name, rule, default in rules:
        base = rule.removesuffix(" or null")
        assert base in _RANGES or isinstance(default, str), (name, rule)
        assert allows(rule, default), (name, rule, default)


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        ("> 0", [1e-9, 3], [0, -1.0]),
        (">= 1", [1, 7], [0, -3]),
        ("in (0, 1]", [1.0, 0.5], [0.0, 1.01]),
        ("in [0, 1]", [0.0, 1.0], [-0.01, 1.5]),
        ("in (0, 1)", [0.5], [0.0, 1.0]),
        ("> 0 or null", [None, 0.1], [0.0]),
        ("auto, fixed, full", ["auto", "full"], ["Full", "", None]),
    ],
)
def test_limit_rules_accept_and_refuse(rule, good, bad):
    from caml_rl.config_checks import allows

    assert all(allows(rule, v) for v in good)
    assert not any(allows(rule, v) for v in bad)


def test_a_value_outside_its_declared_limit_is_refused_in_one_line():
    config = Config()
    config.rl2.target_kl = 0.0
    with pytest.raises(ConfigError, match=r"^config key rl2.target_kl=0.0 is out of range; allowed: > 0 or null$"):
        config.validate()


def test_committed_suites_load(monkeypatch):
    """Every committed suite names configs that load and tasks that build, as `sweep` checks before
    it starts anything (run from the repository root, where the suites' paths point)."""
    from pathlib import Path

    from caml_rl.sweep import load_suite

    root = Path(__file__).parents[1]
    suites = sorted((root / "experiments" / "suites").glob("*.yaml"))
    assert len(suites) >= 10
    monkeypatch.chdir(root)
    for suite in suites:
        _, runs = load_suite(suite)
        assert runs, suite
