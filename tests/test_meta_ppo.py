"""The PPO/ProMP outer loop and the LVC inner objective: their maths on tiny problems, and the
trainer with ``optimizer: ppo`` (resume, bad input, a short learning run)."""

import copy
import csv
import threading

import gymnasium as gym
import pytest
import torch

from caml_rl import Trainer
from caml_rl.adaptation import adapt, advantages, inner_loss, log_probs
from caml_rl.checkpoint import latest_checkpoint, load_checkpoint
from caml_rl.config import AdaptationConfig, ConfigError, PPOConfig, load_config
from caml_rl.episodes import Episodes, select_tasks
from caml_rl.meta import MetaBatch
from caml_rl.meta_ppo import MetaPPO, adapted_kl_coef, clipped_surrogate, ppo_update
from caml_rl.partition import initial_fast_weights, policy_forward
from caml_rl.policies import ContextMLPPolicy
from caml_rl.visualize import plot_learning_curves

T, TASKS, EPS, OBS, ACT, CTX = 4, 4, 5, 2, 2, 3


def tiny_batch(seed: int = 0) -> tuple[ContextMLPPolicy, Episodes, torch.Tensor]:
    torch.manual_seed(seed)
    space = gym.spaces.Box(-1.0, 1.0, (ACT,))
    policy = ContextMLPPolicy(OBS, space, (8,), "tanh", CTX, 1.0, 1e-6).double()
    obs = torch.randn(T, TASKS, EPS, OBS, dtype=torch.float64)
    actions = torch.randn(T, TASKS, EPS, ACT, dtype=torch.float64)
    rewards = torch.randn(T, TASKS, EPS, dtype=torch.float64)
    mask = torch.ones(T, TASKS, EPS, dtype=torch.float64)
    mask[-1, :, :2] = 0.0  # some episodes end early
    ep = Episodes(obs, actions, rewards * mask, mask)
    return policy, ep, advantages(ep, 0.99, 1.0)


# ---------------------------------------------------------------------------------- LVC
@pytest.mark.parametrize("partition", [("context",), None])
def test_lvc_gradient_equals_reinforce_at_the_sampling_policy(partition):
    policy, ep, adv = tiny_batch()
    names = partition or tuple(n for n, _ in policy.named_parameters())
    fast = {k: v.detach().clone().requires_grad_(True) for k, v in initial_fast_weights(policy, names, TASKS).items()}
    g_rf = torch.autograd.grad(inner_loss(policy, fast, ep, adv, "reinforce").sum(), list(fast.values()))
    g_lvc = torch.autograd.grad(inner_loss(policy, fast, ep, adv, "lvc").sum(), list(fast.values()))
    for a, b in zip(g_rf, g_lvc):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # one inner step lands on the same values
    for a, b in zip(
        adapt(policy, fast, ep, adv, 0.5, 1, False).values(),
        adapt(policy, fast, ep, adv, 0.5, 1, False, "lvc").values(),
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lvc_hessian_adds_the_score_outer_product_that_reinforce_lacks():
    """Task 0's context: H_lvc = -sum_i w_i A_i (grad^2 log pi_i + g_i g_i^T), H_rf = -sum_i w_i A_i grad^2 log pi_i."""
    policy, ep, adv = tiny_batch(1)
    behaviour = None

    def per_step_logp(c: torch.Tensor) -> torch.Tensor:
        context = torch.zeros(TASKS, CTX, dtype=torch.float64)
        context = torch.cat([c[None], context[1:]])
        return log_probs(policy, ep, {"context": context})[:, 0].reshape(-1)  # task 0's steps

    c0 = torch.zeros(CTX, dtype=torch.float64)
    with torch.no_grad():
        behaviour = log_probs(policy, ep, {"context": torch.zeros(TASKS, CTX, dtype=torch.float64)})

    def loss(objective: str):
        def f(c: torch.Tensor) -> torch.Tensor:
            context = torch.cat([c[None], torch.zeros(TASKS - 1, CTX, dtype=torch.float64)])
            return inner_loss(policy, {"context": context}, ep, adv, objective, behaviour)[0]

        return f

    h_lvc = torch.autograd.functional.hessian(loss("lvc"), c0)
    h_rf = torch.autograd.functional.hessian(loss("reinforce"), c0)
    # the explicit forms, sample by sample
    w = (ep.mask[:, 0] / ep.mask[:, 0].sum()).reshape(-1)
    a = adv[:, 0].reshape(-1)
    jac = torch.autograd.functional.jacobian(per_step_logp, c0)  # [steps, CTX]
    hess = torch.stack(
        [torch.autograd.functional.hessian(lambda c, i=i: per_step_logp(c)[i], c0) for i in range(len(a))]
    )
    expected_rf = -(w * a)[:, None, None] * hess
    expected_lvc = expected_rf - (w * a)[:, None, None] * jac[:, :, None] * jac[:, None, :]
    torch.testing.assert_close(h_rf, expected_rf.sum(0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h_lvc, expected_lvc.sum(0), rtol=1e-9, atol=1e-12)
    assert (h_lvc - h_rf).abs().max() > 1e-3  # the extra term is really there


def test_lvc_weights_the_steps_by_the_ratio_to_the_behaviour_policy():
    policy, ep, adv = tiny_batch(2)
    fast = {"context": torch.full((TASKS, CTX), 0.3, dtype=torch.float64)}
    behaviour = log_probs(policy, ep, {"context": torch.zeros(TASKS, CTX, dtype=torch.float64)}).detach()
    # pi / pi_b from the Gaussian densities written out, averaged over each task's valid steps by hand
    mean_b, log_std_b = policy_forward(policy, ep.obs, {"context": torch.zeros(TASKS, CTX, dtype=torch.float64)})
    mean, log_std = policy_forward(policy, ep.obs, fast)

    def density(m, ls):
        return torch.exp(-((ep.actions - m) ** 2) / (2 * torch.exp(2 * ls)) - ls).prod(-1)  # (2 pi)^(-d/2) cancels

    ratio = density(mean, log_std) / density(mean_b, log_std_b)
    expected = torch.stack(
        [-(ratio[:, b] * adv[:, b] * ep.mask[:, b]).sum() / ep.mask[:, b].sum() for b in range(TASKS)]
    )
    torch.testing.assert_close(inner_loss(policy, fast, ep, adv, "lvc", behaviour), expected)
    with pytest.raises(ValueError, match="'dice'"):
        inner_loss(policy, fast, ep, adv, "dice")


# ---------------------------------------------------------------------------------- PPO maths
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_clipped_surrogate_stops_the_gradient_outside_the_clip_range():
    old = torch.zeros(1, 1, 4)
    logp = torch.log(torch.tensor([[[1.0, 1.1, 1.5, 0.5]]])).requires_grad_(True)
    adv = torch.tensor([[[1.0, 1.0, 1.0, -1.0]]])
    mask = torch.ones(1, 1, 4)
    loss, fraction = clipped_surrogate(logp, old, adv, mask, 0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    # r=1 and r=1.1 inside: d(-r A / 4)/dlogp = -r A / 4; r=1.5 with A>0 and r=0.5 with A<0 are clipped: no gradient
    torch.testing.assert_close(grad, torch.tensor([[[-0.25, -1.1 / 4, 0.0, 0.0]]]))
    assert float(fraction) == pytest.approx(0.5)
    torch.testing.assert_close(loss, -torch.tensor([1.0, 1.1, 1.2, -0.8]).mean())


def test_kl_coefficient_follows_prompts_rule():
    assert adapted_kl_coef(1.0, 0.001, 0.01) == 0.5
    assert adapted_kl_coef(1.0, 0.02, 0.01) == 2.0
    assert adapted_kl_coef(1.0, 0.01, 0.01) == 1.0


def meta_batch(policy: ContextMLPPolicy, ep: Episodes, adv: torch.Tensor, cfg: AdaptationConfig) -> MetaBatch:
    start = initial_fast_weights(policy, ("context",), ep.num_tasks)
    fast = adapt(policy, start, ep, adv, cfg.inner_lr, 1, True)
    return MetaBatch(ep, adv, ep, adv, start, fast)


def test_ppo_update_lowers_the_surrogate_and_keeps_adam_state():
    policy, ep, adv = tiny_batch(3)
    cfg = AdaptationConfig(inner_lr=0.5)
    batch = meta_batch(policy, ep, adv, cfg)
    state = MetaPPO(policy, PPOConfig(lr=1e-2, epochs=3, minibatches=4, kl_coef=0.1, kl_target=0.01))
    gen = torch.Generator().manual_seed(0)
    stats = ppo_update(policy, ("context",), batch, cfg, state, gen)
    assert stats.steps == 12 and stats.skipped == 0 and stats.kl > 0 and stats.kl_pre > 0
    assert stats.kl_coef == 0.1  # the coefficient this iteration used, adapted afterwards by ProMP's rule:
    assert state.kl_coef == adapted_kl_coef(0.1, stats.kl_pre, 0.01)
    assert stats.loss < 0  # the clipped surrogate starts at -mean(A) = 0 and improves
    assert len(state.state_dict()["adam"]["state"]) == len(list(policy.parameters()))


def test_a_non_finite_gradient_never_reaches_the_weights():
    policy, ep, adv = tiny_batch(4)
    cfg = AdaptationConfig(inner_lr=0.5)
    batch = meta_batch(policy, ep, adv, cfg)
    batch.post_adv = batch.post_adv.clone()
    batch.post_adv[0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in policy.parameters()]
    state = MetaPPO(policy, PPOConfig(epochs=2, minibatches=1))
    stats = ppo_update(policy, ("context",), batch, cfg, state, torch.Generator().manual_seed(0))
    assert stats.steps == 0 and stats.skipped == 2
    for a, b in zip(before, policy.parameters()):
        assert torch.equal(a, b)
    assert state.state_dict()["adam"]["state"] == {}


# ---------------------------------------------------------------------------------- trainer
SMALL = [
    "optimizer=ppo",
    "meta_batch_size=4",
    "episodes_per_task=3",
    "env.settings.horizon=15",
    "policy.hidden_sizes=[16, 16]",
    "checkpoint_every=2",
    "device=cpu",
    "torch_threads=1",
    "ppo.epochs=2",
    "ppo.minibatches=2",
    "ppo.kl_target=0.01",
]


@pytest.mark.parametrize("partition,objective", [("context", "lvc"), ("all", "reinforce")])
def test_ppo_resume_is_bit_identical(tmp_path, partition, objective):
    extra = [f"adaptation.partition={partition}", f"adaptation.inner_objective={objective}"]
    full = Trainer(load_config(None, SMALL + extra + ["iterations=4"]), tmp_path / "full")
    full.train(evaluate_at_end=False, quiet=True)
    part = Trainer(load_config(None, SMALL + extra + ["iterations=2"]), tmp_path / "part")
    part.train(evaluate_at_end=False, quiet=True)
    resumed = Trainer.resume(tmp_path / "part", iterations=4)
    assert resumed.algorithm.outer.state_dict()["adam"]["state"]  # Adam's moments came back
    resumed.train(evaluate_at_end=False, quiet=True)
    for (name, a), b in zip(full.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    rows = lambda d: list(csv.DictReader(open(d / "progress.csv")))  # noqa: E731
    for key in ("return/after_adaptation", "ppo/kl", "ppo/kl_coef"):
        assert [r[key] for r in rows(tmp_path / "full")] == [r[key] for r in rows(tmp_path / "part")], key
    payload = load_checkpoint(latest_checkpoint(tmp_path / "part"))  # weights_only: no unpickling
    assert set(payload["optimizer"]) == {"adam", "kl_coef"}
    figure = plot_learning_curves(tmp_path / "part")  # the PPO panels: KLs and clipped fraction
    assert figure.stat().st_size > 0


def test_a_checkpoint_without_optimizer_state_is_refused(tmp_path):
    from caml_rl.checkpoint import CheckpointError, save_checkpoint

    run = tmp_path / "run"
    Trainer(load_config(None, SMALL + ["iterations=2"]), run).train(evaluate_at_end=False, quiet=True)
    path = latest_checkpoint(run)
    payload = load_checkpoint(path)
    del payload["optimizer"]
    save_checkpoint(path, payload)
    with pytest.raises(CheckpointError, match="no usable optimiser state"):
        Trainer.resume(run, iterations=3)


@pytest.mark.parametrize(
    "override,culprit",
    [
        ("optimizer=adam", "optimizer='adam'"),
        ("ppo.clip_range=1.5", "ppo.clip_range=1.5"),
        ("ppo.epochs=0", "ppo.epochs=0"),
        ("ppo.lr=-1", "ppo.lr=-1"),
        ("ppo.kl_target=0", "ppo.kl_target=0"),
        ("adaptation.inner_objective=dice", "adaptation.inner_objective='dice'"),
    ],
)
def test_bad_ppo_settings_are_one_line_errors(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace("(", r"\(")) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_minibatches_cannot_outnumber_the_tasks():
    with pytest.raises(ConfigError, match=r"ppo.minibatches=5 is out of range; allowed: 1 to meta_batch_size \(4\)"):
        load_config(None, SMALL + ["ppo.minibatches=5"])


def sharded_update(policy, ep, adv, cfg, ppo) -> tuple[list[ContextMLPPolicy], list]:
    """The update computed by two 'workers' holding tasks 0-1 and 2-3, run in lock step in two threads:
    a shared 'average' collects both contributions (as gloo would). Returns their policies and stats."""
    halves = [copy.deepcopy(policy), copy.deepcopy(policy)]
    shards = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    barrier, slots, stats = threading.Barrier(2), [None, None], [None, None]

    def average_of(rank):
        def average(x):
            slots[rank] = x
            barrier.wait()
            out = (slots[0] + slots[1]) / 2
            barrier.wait()
            return out

        return average

    def worker(rank):
        p, idx = halves[rank], shards[rank]
        sub_ep, sub_adv = select_tasks(ep, idx), adv[:, idx]
        batch = meta_batch(p, sub_ep, sub_adv, cfg)
        shard = (int(idx[0]), TASKS)
        stats[rank] = ppo_update(p, ("context",), batch, cfg, MetaPPO(p, ppo), gen(), average_of(rank), shard)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return halves, stats


def test_uneven_minibatches_and_a_sharded_batch_take_the_same_steps():
    """3 minibatches (2, 1 and 1 tasks) over 4 tasks; the same update computed by two 'workers' holding 2 tasks each
    (their gradients averaged, as gloo would) equals the one-process update."""
    policy, ep, adv = tiny_batch(5)
    cfg = AdaptationConfig(inner_lr=0.5)
    ppo = PPOConfig(lr=1e-2, epochs=2, minibatches=3, kl_coef=0.1)
    whole = copy.deepcopy(policy)
    stats = ppo_update(whole, ("context",), meta_batch(whole, ep, adv, cfg), cfg, MetaPPO(whole, ppo), gen())
    assert stats.steps == 6
    halves, _ = sharded_update(policy, ep, adv, cfg, ppo)
    for a, b in zip(whole.parameters(), halves[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_clipped_fraction_is_the_minibatchs_whatever_the_number_of_workers():
    """Worker 0's tasks have one valid step per episode, worker 1's four: the logged fraction is the
    minibatch's clipped steps over its valid steps, as in one process, not a mean of the workers' fractions."""
    policy, ep, _ = tiny_batch(5)
    mask = ep.mask.clone()
    mask[1:, :2] = 0.0
    ep = Episodes(ep.obs * mask[..., None], ep.actions * mask[..., None], ep.rewards * mask, mask)
    adv = advantages(ep, 0.99, 1.0)
    cfg = AdaptationConfig(inner_lr=0.5)
    ppo = PPOConfig(lr=0.1, epochs=3, minibatches=2, kl_coef=0.0, clip_range=0.05)  # large steps: some clipped
    whole = copy.deepcopy(policy)
    one = ppo_update(whole, ("context",), meta_batch(whole, ep, adv, cfg), cfg, MetaPPO(whole, ppo), gen())
    assert 0 < one.clip_fraction < 1
    _, stats = sharded_update(policy, ep, adv, cfg, ppo)
    # counts of steps, so exactly equal unless a ratio lay within double rounding of the clip boundary
    assert stats[0].clip_fraction == stats[1].clip_fraction == one.clip_fraction


@pytest.mark.parametrize("optimizer", ["ppo", "trpo"])
def test_only_trpo_keeps_the_inner_steps_graph(tmp_path, monkeypatch, optimizer):
    """PPO re-takes the inner step at every gradient step, so the trainer's adapted values reach ppo_update
    detached: with MAML no second-order graph is held through post-sampling and the update. TRPO's
    meta-gradient goes through them, so they keep theirs."""
    import caml_rl.meta_gradient as trainer_module

    seen = {}

    def spy_on(name):
        real = getattr(trainer_module, name)

        def spy(policy, names, batch, *args, **kwargs):
            seen["graph"] = [v.grad_fn is not None for v in batch.fast.values()]
            return real(policy, names, batch, *args, **kwargs)

        monkeypatch.setattr(trainer_module, name, spy)

    spy_on("ppo_update" if optimizer == "ppo" else "meta_update")
    config = load_config(None, SMALL + [f"optimizer={optimizer}", "adaptation.partition=all", "iterations=1"])
    trainer = Trainer(config, tmp_path / "run")
    trainer.train(evaluate_at_end=False, quiet=True)
    assert len(seen["graph"]) == len(trainer.algorithm.partition) > 2  # all the network's weights adapt (MAML)
    assert all(seen["graph"]) if optimizer == "trpo" else not any(seen["graph"])


def test_trpo_stays_the_default_and_logs_no_ppo_columns(tmp_path):
    config = load_config(None, [s for s in SMALL if not s.startswith(("optimizer", "ppo."))] + ["iterations=1"])
    assert config.optimizer == "trpo" and config.adaptation.inner_objective == "reinforce"
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.algorithm.outer is None
    trainer.train(evaluate_at_end=False, quiet=True)
    header = open(tmp_path / "run" / "progress.csv").readline()
    assert "trpo/kl" in header and "ppo/" not in header
    assert "optimizer" not in load_checkpoint(latest_checkpoint(tmp_path / "run"))


def test_ppo_caml_learns_navigation_in_a_few_iterations(tmp_path):
    """Short learning smoke test: the return after adaptation climbs within 12 PPO iterations."""
    config = load_config(
        None,
        [
            "optimizer=ppo",
            "meta_batch_size=10",
            "episodes_per_task=10",
            "iterations=12",
            "device=cpu",
            "seed=1",
            "ppo.lr=3e-3",
            "adaptation.inner_objective=lvc",
        ],
    )
    Trainer(config, tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "progress.csv")))
    after = [float(r["return/after_adaptation"]) for r in rows]
    assert sum(after[-3:]) / 3 > sum(after[:3]) / 3 + 2.0, after
