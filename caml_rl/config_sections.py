"""The config's sections: typed dataclasses, each field with a docstring (the configuration
reference is generated from them by ``config_loading.field_docs``) and each section with its ``validate``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .config_checks import ConfigError, check, check_limits, check_plain, limited


class Section:
    """A config section. ``validate`` refuses the first field outside the rule its ``limited``
    default declares; a section whose rules span fields (or lists) adds them in its override."""

    prefix = ""

    def __init_subclass__(cls, prefix: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.prefix = prefix  # the key path in error messages: "trpo." in trpo.max_kl

    def validate(self) -> None:
        check_limits(self, self.prefix)


@dataclass
class EnvConfig(Section, prefix="env."):
    name: str = "navigation2d"
    """Registered task distribution (list them with `caml-rl envs`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of the task distribution's own settings (ranges, horizon, cost weights)."""

    def validate(self) -> None:
        super().validate()
        check_plain("env.settings", self.settings)


@dataclass
class PolicyConfig(Section, prefix="policy."):
    hidden_sizes: list[int] = field(default_factory=lambda: [100, 100])
    """Width of each hidden layer of the MLP."""
    activation: str = limited("relu", "relu, tanh, elu")
    """Hidden-layer nonlinearity."""
    context_size: int = limited(5, ">= 0")
    """Number of context inputs adapted per task (0 for plain MAML)."""
    init_std: float = limited(1.0, "> 0")
    """Initial standard deviation of the Gaussian action noise."""
    min_std: float = 1e-6
    """Floor on the action standard deviation."""

    def validate(self) -> None:
        super().validate()
        check("policy.hidden_sizes", self.hidden_sizes, all(h >= 1 for h in self.hidden_sizes), "positive ints")
        check("policy.min_std", self.min_std, 0 < self.min_std <= self.init_std, "in (0, init_std]")


@dataclass
class AdaptationConfig(Section, prefix="adaptation."):
    partition: str = "context"
    """What adapts per task: context (CAML), all (MAML), or comma-separated parameter names."""
    inner_lr: float = limited(1.0, "> 0")
    """Step size of each inner gradient step."""
    inner_steps: int = limited(1, ">= 1")
    """Inner gradient steps during meta-training (on the same pre-adaptation episodes)."""
    first_order: bool = False
    """Drop the second-order term of the meta-gradient (cheaper, usually worse)."""
    inner_objective: str = limited("reinforce", "reinforce, lvc")
    """Inner loss: reinforce (log pi * A) or lvc (ProMP's pi / pi_old * A: same step, better meta-gradient)."""
    gamma: float = limited(0.99, "in (0, 1]")
    """Discount factor for returns and GAE."""
    gae_lambda: float = limited(1.0, "in [0, 1]")
    """GAE lambda (1.0 = Monte-Carlo returns minus baseline)."""


@dataclass
class TRPOConfig(Section, prefix="trpo."):
    max_kl: float = limited(0.01, "> 0")
    """Trust region: largest mean KL over tasks a step may take."""
    cg_iters: int = limited(10, ">= 1")
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_damping: float = limited(1e-5, ">= 0")
    """Damping added to the Fisher-vector product."""
    ls_steps: int = limited(15, ">= 1")
    """Backtracking line-search evaluations before a step is rejected."""
    ls_backtrack: float = limited(0.8, "in (0, 1)")
    """Step shrink factor between line-search evaluations."""
    fisher: str = limited("auto", "auto, fixed, full")
    """Trust-region metric: full (KL Hessian through the inner step), fixed (step held constant), auto (MAML full)."""
    fvp_subsample: float | None = limited(None, "in (0, 1] or null")
    """Share of the batch in the metric: whole tasks for full (default 1.0), each task's episodes for fixed (0.2)."""

    def metric(self, adapts_weights: bool) -> tuple[str, float]:
        """The metric and episode fraction actually used, ``auto`` and the default resolved."""
        fisher = self.fisher if self.fisher != "auto" else ("full" if adapts_weights else "fixed")
        default = 1.0 if fisher == "full" else 0.2
        return fisher, self.fvp_subsample if self.fvp_subsample is not None else default


@dataclass
class PPOConfig(Section, prefix="ppo."):
    lr: float = limited(1e-3, "> 0")
    """Adam learning rate of the shared parameters."""
    epochs: int = limited(5, ">= 1")
    """Passes over one iteration's episodes (ProMP's 5), the inner step re-taken at every gradient step."""
    minibatches: int = limited(1, ">= 1")
    """Task minibatches per epoch, one Adam step each (at most meta_batch_size)."""
    clip_range: float = limited(0.3, "in (0, 1)")
    """Clip the adapted policy's importance ratio to [1 - clip_range, 1 + clip_range]."""
    kl_coef: float = limited(5e-4, ">= 0")
    """Weight of the KL penalty from the pre-update policy that sampled to the current one (0: none)."""
    kl_target: float | None = limited(None, "> 0 or null")
    """Adapt kl_coef after each iteration, ProMP-style: halve below target/1.5, double above 1.5x (null: fixed)."""
    max_grad_norm: float | None = limited(None, "> 0 or null")
    """Clip the gradient's global norm before each Adam step (null: no clipping)."""


@dataclass
class RL2Config(Section, prefix="rl2."):
    hidden_size: int = limited(64, ">= 1")
    """GRU hidden units: the memory the policy adapts in (ProMP's RL²: an LSTM of 64)."""
    episodes_per_trial: int = limited(2, ">= 1")
    """Episodes of one task per trial, the hidden state carried across them (ProMP's RL²: 2)."""
    lr: float = limited(3e-4, "> 0")
    """Adam learning rate."""
    epochs: int = limited(5, ">= 1")
    """PPO passes over one iteration's trials, the recurrence re-run from the trial's start each time."""
    minibatches: int = limited(4, ">= 1")
    """Trial minibatches per epoch, one Adam step each (at most meta_batch_size x episodes_per_task)."""
    clip_range: float = limited(0.2, "in (0, 1)")
    """Clip the importance ratio to [1 - clip_range, 1 + clip_range]."""
    gamma: float = limited(0.99, "in (0, 1]")
    """Discount over the whole trial (nothing is cut at an episode's end)."""
    gae_lambda: float = limited(0.95, "in [0, 1]")
    """GAE lambda over the trial."""
    value_coef: float = limited(0.5, ">= 0")
    """Weight of the value head's squared error."""
    entropy_coef: float = limited(0.0, ">= 0")
    """Weight of the entropy bonus."""
    max_grad_norm: float = limited(0.5, "> 0")
    """Clip the gradient's global norm before each Adam step."""
    target_kl: float | None = limited(None, "> 0 or null")
    """Stop an iteration's PPO epochs after the minibatch whose approximate KL to the sampling policy
    exceeds 1.5 x target_kl (Stable-Baselines3's rule); None: always all epochs. It bounds each
    iteration's step once the policy's std has shrunk and a fixed lr moves it too far."""


@dataclass
class PEARLConfig(Section, prefix="pearl."):
    """PEARL (algorithm: pearl). Defaults are oyster's ``configs/default.py`` and its launcher (the
    cheetah-vel settings are in experiments/configs/halfcheetah_vel_pearl.yaml); differences are noted."""

    latent_size: int = limited(5, ">= 1")
    """Size of the latent context z the encoder infers (oyster: 5)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [300, 300, 300])
    """Hidden layers of the policy, both Q networks and the V network (oyster: net_size 300, three layers)."""
    encoder_hidden_sizes: list[int] = field(default_factory=lambda: [200, 200, 200])
    """Hidden layers of the context encoder, which maps one transition to a Gaussian factor (oyster: 200 x 3)."""
    n_train_tasks: int = limited(100, ">= 1")
    """Fixed training tasks, drawn once from the run's task stream (oyster cheetah-vel: 100; its default.py: 2).
    Evaluation uses the same new tasks as every other method, never these."""
    num_initial_steps: int = limited(2000, ">= 1")
    """Transitions collected per training task under the prior before the first gradient step (whole episodes)."""
    num_tasks_sample: int = limited(5, ">= 1")
    """Training tasks drawn (with replacement, as oyster) for data collection each iteration."""
    num_steps_prior: int = limited(400, ">= 1")
    """Transitions per sampled task collected with z ~ prior; they replace the task's encoder buffer."""
    num_steps_posterior: int = limited(0, ">= 0")
    """Transitions per sampled task collected with z ~ posterior that also go to the encoder buffer (oyster: 0)."""
    num_extra_rl_steps_posterior: int = limited(400, ">= 0")
    """Transitions per sampled task with z ~ posterior used only by the RL losses (oyster: 400; cheetah-vel 600)."""
    num_train_steps_per_itr: int = limited(2000, ">= 1")
    """Gradient steps per iteration."""
    meta_batch: int = limited(16, ">= 1")
    """Training tasks per gradient step, drawn with replacement (oyster: 16). The top-level meta_batch_size and
    episodes_per_task are not used by pearl."""
    batch_size: int = limited(256, ">= 1")
    """Transitions per task in a gradient step's RL batch (from the task's replay buffer)."""
    embedding_batch_size: int = limited(64, ">= 1")
    """Context transitions per task in a gradient step (from the task's encoder buffer; oyster cheetah-vel: 100)."""
    buffer_size: int = limited(50000, ">= 1")
    """Capacity of each training task's replay buffer, in transitions (first in, first out). Preallocated, so
    smaller than oyster's 1e6 (never reached at cheetah-vel's settings: about 27k transitions per task)."""
    discount: float = limited(0.99, "in (0, 1]")
    """SAC discount factor."""
    soft_target_tau: float = limited(0.005, "in (0, 1]")
    """Polyak step of the target V network after each V update (oyster: 0.005)."""
    policy_lr: float = limited(3e-4, "> 0")
    """Adam learning rate of the policy."""
    qf_lr: float = limited(3e-4, "> 0")
    """Adam learning rate of both Q networks."""
    vf_lr: float = limited(3e-4, "> 0")
    """Adam learning rate of the V network."""
    context_lr: float = limited(3e-4, "> 0")
    """Adam learning rate of the context encoder (trained by the Q loss and the KL term)."""
    reward_scale: float = limited(5.0, "> 0")
    """Rewards are multiplied by this in the Bellman target: the inverse of SAC's entropy weight (oyster: 5)."""
    kl_lambda: float = limited(0.1, ">= 0")
    """Weight of KL(q(z|c) || N(0, I)), summed over the meta-batch's tasks as oyster does (oyster: 0.1)."""
    policy_mean_reg: float = limited(1e-3, ">= 0")
    """Weight of the mean squared pre-tanh action mean in the policy loss (rlkit's policy_mean_reg_weight)."""
    policy_std_reg: float = limited(1e-3, ">= 0")
    """Weight of the mean squared action log-std in the policy loss (rlkit's policy_std_reg_weight)."""
    use_next_obs_in_context: bool = False
    """Transitions in the context also hold the next observation, ``(s, a, r, s')`` instead of ``(s, a, r)``
    (oyster's ``use_next_obs_in_context``, off by default; on where the reward says little without ``s'``)."""
    exploration_episodes: int = limited(1, ">= 1")
    """At test time, episodes run with z drawn from the prior before posterior sampling starts (oyster's
    num_exp_traj_eval: 1; 2 for the cheetah tasks)."""

    def validate(self) -> None:
        super().validate()
        for key in ("hidden_sizes", "encoder_hidden_sizes"):
            sizes = getattr(self, key)
            check(f"pearl.{key}", sizes, len(sizes) >= 1 and all(h >= 1 for h in sizes), "a list of positive ints")


@dataclass
class EvalConfig(Section, prefix="evaluation."):
    tasks: int = 40
    """Fresh test tasks (never the training tasks) evaluated at the end of training."""
    steps: int = limited(3, ">= 0")
    """Inner steps evaluated after the zero-step return, each on fresh episodes."""
    episodes: int = limited(20, ">= 1")
    """Episodes per test task and step."""
    inner_lr: float | None = limited(None, "> 0 or null")
    """Inner step size at test time (default: adaptation.inner_lr)."""

    def validate(self) -> None:
        super().validate()
        check("evaluation.tasks", self.tasks, self.tasks >= 2, ">= 2 (the 95% interval needs two)")


@dataclass
class Config(Section, prefix=""):
    algorithm: str = "meta_gradient"
    """The method: meta_gradient (CAML/MAML/ProMP: adaptation, optimizer, trpo, ppo), rl2 (section rl2) or
    pearl (section pearl)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The task distribution."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy network."""
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    """The inner loop."""
    optimizer: str = limited("trpo", "trpo, ppo")
    """Outer loop: trpo (natural gradient, line search) or ppo (ProMP-style clipped surrogate, Adam)."""
    trpo: TRPOConfig = field(default_factory=TRPOConfig)
    """The TRPO outer loop (optimizer: trpo)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """The PPO/ProMP outer loop (optimizer: ppo)."""
    rl2: RL2Config = field(default_factory=RL2Config)
    """RL²: a recurrent policy trained with PPO over trials (algorithm: rl2)."""
    pearl: PEARLConfig = field(default_factory=PEARLConfig)
    """PEARL: a context encoder and SAC trained off-policy from per-task replay buffers (algorithm: pearl)."""
    plugins: dict[str, Any] = field(default_factory=dict)
    """Sections of plug-in algorithms, by algorithm name: ``plugins.<name>`` holds the settings of an
    algorithm whose ``config_section`` registered it (``--set plugins.<name>.lr=0.1``)."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """The evaluation run after training."""
    meta_batch_size: int = limited(20, ">= 1")
    """Tasks per meta-iteration."""
    episodes_per_task: int = limited(20, ">= 1")
    """Episodes per task, before and after adaptation."""
    iterations: int = limited(150, ">= 0")
    """Meta-iterations to train."""
    seed: int = 0
    """Seed of every random stream (tasks, actions, env resets)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    checkpoint_every: int = limited(25, ">= 1")
    """Write a checkpoint every this many iterations (and always at the end)."""
    checkpoint_keep: int = 0
    """Keep only the newest this many checkpoints, plus the final one and any that an eval*.json in
    the run directory names (0 = keep every one). Resume needs only the newest."""
    torch_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""

    def validate(self) -> None:
        for sub in (self.env, self.policy, self.adaptation, self.trpo, self.ppo, self.rl2, self.pearl, self.evaluation):
            sub.validate()
        for name, section in self.plugins.items():
            if not dataclasses.is_dataclass(section):
                raise ConfigError(
                    f"config section plugins.{name} is not a typed section; build the config with load_config"
                )
            if hasattr(section, "validate"):
                section.validate()
        super().validate()
        check("checkpoint_keep", self.checkpoint_keep, self.checkpoint_keep >= 0, ">= 0 (0 keeps every checkpoint)")
        check("torch_threads", self.torch_threads, 0 <= self.torch_threads <= 4096, "0 to 4096")
        ok = self.ppo.minibatches <= self.meta_batch_size
        check("ppo.minibatches", self.ppo.minibatches, ok, f"1 to meta_batch_size ({self.meta_batch_size})")
        check("seed", self.seed, self.seed >= 0, "an integer >= 0")
        ok = self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None
        check("device", self.device, ok, "auto, cpu, cuda, cuda:N")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
