"""envs.TrialVecEnv: RL² trials for SB3 (tasks held per trial, inner episode ends hidden, history inputs)."""

import numpy as np
import pytest
from caml_rl.envs import TaskVecEnv, TrialVecEnv
from sb3_contrib import RecurrentPPO

from caml_rl import envs


def nav(horizon=3):
    return envs.make("navigation2d", horizon=horizon)


def run(view: TrialVecEnv, steps: int, action: np.ndarray):
    out = []
    for _ in range(steps):
        obs, reward, done, info = view.step(action)
        out.append((obs, reward, done, info, view.venv.current_tasks))
    return out


@pytest.mark.parametrize("episodes_per_trial", [1, 2, 3])
def test_a_trial_holds_one_task_and_only_its_end_is_done(episodes_per_trial):
    view = TrialVecEnv(TaskVecEnv(nav(horizon=3), num_envs=4, seed=0), episodes_per_trial, seed=1)
    first = view.reset()
    assert first.shape == (4, 2 + 2 + 2) and not first[:, 2:].any()  # obs, previous action, reward, flag
    tasks = view.venv.current_tasks
    action = np.full((4, 2), 0.01, np.float32)
    trial = 3 * episodes_per_trial
    trials = []
    for _ in range(3):
        steps = run(view, trial, action)
        for t, (obs, reward, done, _, current) in enumerate(steps[:-1]):
            assert not done.any()
            assert np.array_equal(current, tasks), t  # the step's next observation is of the same trial's task
            new_episode = (t + 1) % 3 == 0
            assert np.array_equal(obs[:, -1], np.full(4, float(new_episode))), t  # the flag
            assert np.allclose(obs[:, 2:4], 0.01) and np.allclose(obs[:, 4], reward)  # previous action, reward
            if new_episode:
                assert np.array_equal(obs[:, :2], np.zeros((4, 2)))  # the next episode started at the origin
        obs, reward, done, info, current = steps[-1]
        assert done.all() and not any(i["TimeLimit.truncated"] for i in info)  # the trial's end is terminal
        assert np.allclose(info[0]["terminal_observation"][2:5], [0.01, 0.01, reward[0]])
        assert not obs[:, 2:].any()  # a new trial starts with no history
        assert not np.array_equal(current, tasks)  # ... on new tasks
        trials.append(tasks)
        tasks = current
    assert len({t.tobytes() for t in trials}) == 3


def test_recurrent_ppo_runs_on_trials():
    view = TrialVecEnv(TaskVecEnv(nav(horizon=5), num_envs=4, seed=0), 2, seed=0)
    model = RecurrentPPO(
        "MlpLstmPolicy", view, n_steps=20, batch_size=40, n_epochs=1, policy_kwargs={"lstm_hidden_size": 8}, seed=0
    )
    model.learn(80)
    assert model.num_timesteps == 80


def test_bad_arguments_are_one_line():
    with pytest.raises(ValueError, match="episodes_per_trial=0"):
        TrialVecEnv(TaskVecEnv(nav(), num_envs=2), 0)
    with pytest.raises(TypeError, match="TaskVecEnv"):
        TrialVecEnv(object(), 2)
