import json

import pytest

from caml_rl.cli import main

KEYS = [
    "env",
    "env_steps_per_iteration",
    "physics_steps_per_s",
    "sampler_steps_per_s",
    "iteration_seconds",
    "iteration_steps_per_s",
    "update_seconds",
    "fwdbwd_seconds",
    "sampler_vs_physics",
    "iteration_vs_physics",
    "update_vs_fwdbwd",
]


@pytest.mark.parametrize(
    "env,optimizer", [("navigation2d", "trpo"), ("halfcheetah_vel", "trpo"), ("navigation2d", "ppo")]
)
def test_benchmark_json_has_every_figure(env, optimizer, capsys):
    main(
        [
            "benchmark",
            "--env",
            env,
            "--tasks",
            "2",
            "--episodes",
            "2",
            "--horizon",
            "10",
            "--iterations",
            "1",
            "--json",
            "--set",
            "policy.hidden_sizes=[16]",
            "--set",
            f"optimizer={optimizer}",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["details"]["optimizer"] == optimizer and result["adapts"] == "context"
    assert (result["trpo_accepted"] is None) == (optimizer == "ppo")
    for key in KEYS:
        assert key in result, key
    assert result["env"] == env and result["env_steps_per_iteration"] == 2 * 2 * 2 * 10
    for key in KEYS[2:]:
        assert result[key] > 0, key  # timings and their ratios: only their sign is machine-independent


def test_benchmark_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--tasks", "0"])
    assert exc.value.code == 2
    assert "--tasks 0 is out of range" in capsys.readouterr().err


def test_benchmark_of_a_config_file_breaks_the_update_into_its_parts(tmp_path, capsys):
    """``--config`` takes the file as it is (here MAML with the exact metric on half the tasks); the
    update's parts are the TRPO step's sections, each timed per iteration and in fwd+bwd units."""
    config = tmp_path / "maml.yaml"
    config.write_text(
        "env: {name: halfcheetah_vel, settings: {horizon: 10}}\n"
        "policy: {hidden_sizes: [16], context_size: 0}\n"
        "adaptation: {partition: all, inner_lr: 0.1}\n"
        "trpo: {fisher: full, fvp_subsample: 0.5, cg_iters: 3}\n"
        "meta_batch_size: 4\nepisodes_per_task: 2\n"
    )
    main(["benchmark", "--config", str(config), "--iterations", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["env"] == "halfcheetah_vel" and result["tasks"] == 4 and result["env_steps_per_iteration"] == 160
    parts = result["update_parts"]
    names = {"inner_step", "surrogate", "metric_build", "meta_gradient", "conjugate_gradient"}
    names |= {"fisher_vector_product", "line_search_candidate"}
    assert names <= set(parts)
    # one per CG iteration (3, fewer only if CG converged early); the step's length reuses their products
    assert 1 <= parts["fisher_vector_product"]["calls"] <= 3
    assert all(p["seconds"] > 0 and p["fwdbwd"] > 0 for p in parts.values())  # signs only: timings vary


def test_benchmark_config_refuses_batch_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--config", "experiments/configs/navigation_caml.yaml", "--tasks", "4"])
    assert exc.value.code == 2
    assert "drop --tasks" in capsys.readouterr().err
