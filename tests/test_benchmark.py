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
    assert result["optimizer"] == optimizer and (result["trpo_accepted"] is None) == (optimizer == "ppo")
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
