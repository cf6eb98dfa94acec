"""RL² trials for Stable-Baselines3: K episodes of one task presented as one SB3 episode.

sb3-contrib's ``RecurrentPPO`` zeroes its LSTM state wherever an episode starts (sb3-contrib
#169), so on its own it cannot carry memory across the episodes of a task, which is what RL²
adapts with. :class:`TrialVecEnv` wraps a :class:`~caml_rl.envs.TaskVecEnv` so that a *trial*
(``episodes_per_trial`` episodes of one task) is one episode to SB3:

- every env keeps its task for a whole trial and draws a new one when the trial ends;
- an inner episode's end is hidden from SB3 (``done`` stays False); the next observation is the
  new episode's first one, flagged;
- the observation is ``[obs, previous action, previous reward, episode-start flag]``, the inputs of
  caml-rl's own RL² policy (:class:`caml_rl.rl2.RecurrentPolicy`), zero at a trial's start
  (the flag is 1 at the first step of every episode after the first);
- the trial's end is terminal (not ``TimeLimit.truncated``), so SB3 bootstraps it from zero, as
  caml-rl's ``trial_gae`` does.

Box actions only (the previous action is fed back as numbers).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn, VecEnvWrapper

from .sb3_vec_env import TaskVecEnv
from .validation import sample_tasks


class TrialVecEnv(VecEnvWrapper):
    """``venv``'s envs in trials of ``episodes_per_trial`` episodes of one task (module docstring)."""

    def __init__(self, venv: TaskVecEnv, episodes_per_trial: int = 2, seed: int = 0):
        if not isinstance(venv, TaskVecEnv):
            raise TypeError(f"TrialVecEnv wraps an envs.TaskVecEnv; got {type(venv).__name__}")
        if not isinstance(venv.action_space, gym.spaces.Box):
            raise ValueError(f"TrialVecEnv needs Box actions; {venv.distribution!r} has {venv.action_space}")
        if int(episodes_per_trial) < 1:
            raise ValueError(f"episodes_per_trial={episodes_per_trial!r} is not allowed; use an integer >= 1")
        self.episodes_per_trial = int(episodes_per_trial)
        base, act = venv.observation_space, venv.action_space
        self._act_dim = int(np.prod(act.shape))
        low = np.concatenate([base.low.ravel(), act.low.ravel(), [-np.inf, 0.0]]).astype(np.float32)
        high = np.concatenate([base.high.ravel(), act.high.ravel(), [np.inf, 1.0]]).astype(np.float32)
        super().__init__(venv, observation_space=gym.spaces.Box(low, high, dtype=np.float32))
        self._rng = np.random.default_rng(seed)
        self._episode = np.zeros(venv.num_envs, dtype=np.int64)  # episodes finished in the current trial
        self._tasks = np.zeros((venv.num_envs, len(venv.distribution.task_names)))  # each env's next episode's

    def _new_tasks(self, envs: np.ndarray) -> None:
        """Draw the task of the next trial of ``envs``. Called as each env *starts* its trial's last
        episode: the wrapped env takes a task from an env's next episode on, and it starts that next
        episode inside the step that ends the trial."""
        if len(envs):
            self._tasks[envs] = sample_tasks(self.venv.distribution, self._rng, len(envs))
            self.venv.set_tasks(self._tasks)

    def _augment(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, flag: np.ndarray) -> np.ndarray:
        n = len(obs)
        parts = [obs.reshape(n, -1), action.reshape(n, -1), reward.reshape(n, 1), flag.reshape(n, 1)]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def reset(self) -> VecEnvObs:
        everyone = np.arange(self.num_envs)
        self._new_tasks(everyone)  # the first trial's, taken at once by the reset
        self._episode[:] = 0
        obs = self.venv.reset()
        if self.episodes_per_trial == 1:
            self._new_tasks(everyone)
        zeros = np.zeros(self.num_envs, dtype=np.float32)
        return self._augment(obs, np.zeros((self.num_envs, self._act_dim), np.float32), zeros, zeros)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, self._act_dim)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        prev_action = np.clip(self._actions, self.action_space.low, self.action_space.high)
        self._episode += dones
        trial_over = self._episode >= self.episodes_per_trial
        self._episode[trial_over] = 0
        self._new_tasks(np.flatnonzero(dones & (self._episode == self.episodes_per_trial - 1)))
        flag = (dones & ~trial_over).astype(np.float32)
        augmented = self._augment(obs, prev_action, rewards, flag)
        if trial_over.any():
            over = np.flatnonzero(trial_over)
            for i in over:
                info = infos[i]
                terminal = info.get("terminal_observation", obs[i])
                info["terminal_observation"] = self._augment(
                    terminal[None], prev_action[i : i + 1], rewards[i : i + 1], np.zeros(1, np.float32)
                )[0]
                info["TimeLimit.truncated"] = False  # a trial ends for good
                augmented[i, -self._act_dim - 2 :] = 0.0  # the next trial starts with no history
        return augmented, rewards, trial_over, infos
