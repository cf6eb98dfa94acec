"""PEARL's maths against closed forms and hand computations, its buffers, resume and a learning smoke test."""

import csv

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution, kl_divergence
from torch.distributions.transforms import TanhTransform

from caml_rl import ConfigError, Trainer, load_run
from caml_rl.config import load_config
from caml_rl.pearl import transitions
from caml_rl.pearl_buffers import NextObservations, TaskBuffers
from caml_rl.pearl_nets import (
    PEARLAgent,
    StackedMLP,
    actor_loss,
    critic_loss,
    kl_to_unit_gaussian,
    polyak_,
    product_of_gaussians,
    q_target,
    tanh_gaussian_log_prob,
    value_loss,
)


# ---------------------------------------------------------------- the encoder's posterior
def test_product_of_gaussians_is_the_normalised_product_of_the_densities():
    """log prod_n N(z; mu_n, var_n) - log N(z; mu, var) must not depend on z (the product of Gaussian
    densities is a Gaussian up to a constant): checked at many z, in float64."""
    torch.manual_seed(0)
    mus, var_n = torch.randn(7, 3, dtype=torch.float64), torch.rand(7, 3, dtype=torch.float64) + 0.1
    mu, var = product_of_gaussians(mus, var_n)
    z = torch.linspace(-3, 3, 50, dtype=torch.float64)[:, None, None]
    product = Normal(mus, var_n.sqrt()).log_prob(z).sum(1)  # [50, 3]
    gap = product - Normal(mu, var.sqrt()).log_prob(z[:, 0])
    assert (gap - gap[0]).abs().max() < 1e-10  # float64 rounding of sums of 7 terms
    # the closed form for two factors: precision adds, means weighted by precision
    m, v = product_of_gaussians(torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0], [3.0]]))
    assert abs(float(v) - 0.75) < 1e-6 and abs(float(m) - 1.5) < 1e-6  # 1/(1 + 1/3); 0.75 (1 + 1)


def test_a_masked_factor_is_left_out_and_no_factor_is_the_prior():
    mus, var_n = torch.randn(2, 5, 4), torch.rand(2, 5, 4) + 0.1
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0], [0.0] * 5])
    mu, var = product_of_gaussians(mus, var_n, mask)
    mu_ref, var_ref = product_of_gaussians(mus[0, [0, 1, 3]], var_n[0, [0, 1, 3]])
    torch.testing.assert_close(mu[0], mu_ref)  # float32: summation order differs
    torch.testing.assert_close(var[0], var_ref)
    assert torch.equal(mu[1], torch.zeros(4)) and torch.equal(var[1], torch.ones(4))


def test_the_kl_term_is_torch_distributions_kl_summed_over_tasks_and_dimensions():
    mu, var = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64) + 0.05
    expected = kl_divergence(Normal(mu, var.sqrt()), Normal(torch.zeros(5), torch.ones(5))).sum()
    assert abs(float(kl_to_unit_gaussian(mu, var)) - float(expected)) < 1e-10


def test_tanh_gaussian_log_prob_against_torch_distributions():
    mean, log_std = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64) * 0.5
    u = mean + log_std.exp() * torch.randn(6, 3, dtype=torch.float64)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = dist.log_prob(torch.tanh(u)).sum(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(u, mean, log_std), expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- SAC's losses by hand
def test_q_target_and_critic_loss_by_hand():
    rewards = torch.tensor([[1.0, -2.0]])
    terminals = torch.tensor([[0.0, 1.0]])
    next_v = torch.tensor([[10.0, 50.0]])
    y = q_target(rewards, terminals, next_v, reward_scale=5.0, discount=0.9)
    assert y.tolist() == [[5.0 + 9.0, -10.0]]  # exact in float32; a terminal does not bootstrap
    q = torch.tensor([[[13.0, -10.0]], [[14.0, -7.0]]])  # [2 networks, 1 task, 2 transitions]
    # Q1: errors -1, 0 -> mean 0.5; Q2: errors 0, 3 -> mean 4.5
    assert float(critic_loss(q, y)) == 5.0


def test_value_and_actor_losses_by_hand():
    v = torch.tensor([[1.0, 2.0]], requires_grad=True)
    min_q = torch.tensor([[3.0, 1.0]], requires_grad=True)
    log_pi = torch.tensor([[0.5, -1.0]], requires_grad=True)
    loss = value_loss(v, min_q, log_pi)  # targets 2.5, 2.0: errors -1.5, 0
    assert float(loss.detach()) == 1.125
    loss.backward()
    assert min_q.grad is None and log_pi.grad is None  # the target is held fixed
    mean, log_std = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[0.0], [-1.0]]])
    pi = actor_loss(log_pi.detach(), min_q.detach(), mean, log_std, mean_reg=0.1, std_reg=0.01)
    # mean(log_pi - q) = (-2.5 - 2) / 2; 0.1 mean(1, 4); 0.01 mean(0, 1)
    assert abs(float(pi) - (-2.25 + 0.25 + 0.005)) < 1e-6


def test_polyak_update_in_place():
    target, source = (
        [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])],
        [torch.tensor([3.0, 2.0]), torch.tensor([[1.0]])],
    )
    same = target[0]
    polyak_(target, source, 0.25)
    assert target[0] is same  # in place
    assert target[0].tolist() == [1.5, 2.0] and target[1].tolist() == [[0.25]]  # 0.75 t + 0.25 s, exact


def test_stacked_mlp_members_are_independent_networks():
    torch.manual_seed(0)
    net = StackedMLP(2, [3, 8, 1], 3e-3)
    x = torch.randn(2, 5, 3)
    out = net(x)
    for m in range(2):
        h = torch.relu(x[m] @ net.weights[0][m] + net.biases[0][m])
        torch.testing.assert_close(out[m], h @ net.weights[1][m] + net.biases[1][m])
    frozen = net(x.requires_grad_(), frozen=True)
    frozen.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------- buffers
def filled(num_tasks=4, capacity=10):
    return TaskBuffers(num_tasks, capacity, 2, 1, torch.device("cpu"))


def batch_of(values: torch.Tensor) -> dict:
    """Transitions whose every field holds ``values [rows, length]`` (so a sample shows where it came from)."""
    v = values.float()
    return {
        "obs": v[..., None].expand(*v.shape, 2),
        "actions": v[..., None],
        "rewards": v,
        "next_obs": v[..., None].expand(*v.shape, 2),
        "terminals": v,
    }


def test_sampling_never_mixes_tasks():
    b = filled(num_tasks=5, capacity=50)
    tasks = torch.arange(5)
    values = tasks[:, None].expand(5, 30) * 100 + torch.arange(30)  # task t holds t*100 + position
    b.add(tasks, batch_of(values), torch.ones(5, 30, dtype=torch.bool))
    gen = torch.Generator().manual_seed(0)
    chosen = torch.tensor([3, 0, 3, 4, 1, 1, 2])  # with repeats, as a meta-batch draws them
    out = b.sample(chosen, 256, gen)
    for key in ("obs", "actions", "rewards", "next_obs"):
        assert out[key].shape[:2] == (7, 256)
    source = out["rewards"] // 100
    assert torch.equal(source, chosen[:, None].expand(7, 256).float())  # every row from its own task only
    assert len(out["rewards"][0].unique()) > 20  # spread over the task's transitions


def test_add_skips_padding_keeps_order_and_handles_a_task_twice():
    b = filled(num_tasks=3, capacity=8)
    values = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    b.add(torch.tensor([2, 0, 2]), batch_of(values), valid)  # task 2 twice: its rows follow one another
    assert b.size.tolist() == [4, 0, 3] and b.top.tolist() == [4, 0, 3]
    assert b.data["rewards"][2, :3].tolist() == [1, 2, 9] and b.data["rewards"][0, :4].tolist() == [5, 6, 7, 8]
    b.add(
        torch.tensor([0, 0]), batch_of(torch.tensor([[20, 21, 22], [23, 24, 25]])), torch.ones(2, 3, dtype=torch.bool)
    )
    assert b.size[0] == 8 and b.top[0] == 2  # a ring: the oldest two were overwritten
    assert b.data["rewards"][0].tolist() == [24, 25, 7, 8, 20, 21, 22, 23]
    b.clear(torch.tensor([0, 0]))
    assert b.size.tolist() == [0, 0, 3]


def test_buffer_state_round_trip_is_exact_and_checked():
    b = filled(num_tasks=3, capacity=6)
    b.add(torch.tensor([0, 2]), batch_of(torch.randn(2, 5)), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool())
    state = b.state()
    assert state["rewards"].shape == (7,)  # only what was stored
    c = filled(num_tasks=3, capacity=6)
    c.load(state)
    for key in b.data:
        for task in range(3):
            n = int(b.size[task])
            assert torch.equal(c.data[key][task, :n], b.data[key][task, :n])
    with pytest.raises(ValueError, match="tasks"):
        filled(num_tasks=4, capacity=6).load(state)


def test_transitions_next_state_terminal_and_padding():
    """An episode that ends early: its last transition is terminal and nothing after it is valid; one that
    runs the horizon is truncated (not terminal) and its next state is the observation after the last step.
    The hook's next observations give each transition's true next state, the early end's included."""
    from caml_rl.episodes import Episodes

    space = gym.spaces.Box(-1.0, 1.0, (1,))
    agent = PEARLAgent(1, space, 2, [4], [4])
    obs = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 1).clone()
    obs[:, 0, 1] += 10
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]]).view(3, 1, 2)
    ep = Episodes(obs * mask[..., None], torch.zeros(3, 1, 2, 1), torch.ones(3, 1, 2) * mask, mask)
    hook = NextObservations()
    hook.on_reset(None, obs[0, 0])
    for step in ([1.0, 11.0], [7.0, 12.0], [8.0, 13.0]):  # env 0 ended at 7 (its episode buffer holds 0 there)
        hook.on_step(None, torch.tensor(step).view(2, 1))
    for next_obs, expected in ((None, [1.0, 0.0]), (hook.of(ep), [1.0, 7.0])):
        batch, valid = transitions(agent, ep, next_obs)
        assert valid.tolist() == [[True, True, False, True, True, True]]
        assert batch["terminals"].tolist() == [[0, 1, 0, 0, 0, 0]]
        got = batch["next_obs"][0, :, 0].tolist()
        assert got[:2] == expected and got[2] == 0.0
    assert got[3:] == [11, 12, 13]


# ---------------------------------------------------------------- the algorithm in the trainer
SMALL = [
    "pearl.hidden_sizes=[32,32]",
    "pearl.encoder_hidden_sizes=[32]",
    "pearl.n_train_tasks=6",
    "pearl.num_initial_steps=40",
    "pearl.num_tasks_sample=3",
    "pearl.num_steps_prior=20",
    "pearl.num_extra_rl_steps_posterior=20",
    "pearl.num_train_steps_per_itr=5",
    "pearl.meta_batch=4",
    "pearl.batch_size=16",
    "pearl.embedding_batch_size=8",
    "pearl.buffer_size=200",
]


def small_pearl(*extra: str):
    return load_config(
        None,
        [
            "algorithm=pearl",
            "device=cpu",
            "env.settings.horizon=20",
            *SMALL,
            "evaluation.tasks=3",
            "evaluation.episodes=2",
            "evaluation.steps=2",
            *extra,
        ],
    )


def test_one_gradient_step_updates_each_network_from_its_own_losses():
    """The Q networks and the encoder learn from the Bellman error and the KL term only: their gradients
    when the Q step is taken are still their gradients after the V and policy updates (z enters those
    detached, the Q networks frozen). The policy gets nothing from the Q loss; V's target moves by Polyak."""
    trainer = Trainer(small_pearl("iterations=1"), "unused")
    algo = trainer.algorithm
    algo.open()
    try:
        algo.initial_collection()
        at_q_step = {}
        step = algo.q_adam.step

        def spy(*args, **kwargs):
            for name, module in (("encoder", algo.policy.encoder), ("qf", algo.qf), ("actor", algo.policy.actor)):
                at_q_step[name] = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
            return step(*args, **kwargs)

        algo.q_adam.step = spy
        target = [p.clone() for p in algo.target_vf.parameters()]
        before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
        algo.train_step()
        for name, module in (("encoder", algo.policy.encoder), ("qf", algo.qf)):
            for saved, p in zip(at_q_step[name], module.parameters()):
                assert saved is not None and torch.equal(saved, p.grad), name  # exact: nothing added later
        assert all(g is None for g in at_q_step["actor"])  # the Q loss does not reach the policy
        after = algo.policy.state_dict()
        assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder", "actor")))
        for t, old_t, new_v in zip(algo.target_vf.parameters(), target, algo.vf.parameters()):
            torch.testing.assert_close(t, old_t + 0.005 * (new_v - old_t))  # Polyak after the V step
    finally:
        algo.close()


def test_resume_is_bit_identical(tmp_path):
    """2 iterations in one go against 1, then a resume for 1 more: every network, optimiser state and
    buffer equal, exactly (same computation on the same machine)."""
    full = Trainer(small_pearl("iterations=2", "checkpoint_every=1"), tmp_path / "full")
    full.train(evaluate_at_end=False, quiet=True)
    part = Trainer(small_pearl("iterations=1"), tmp_path / "part")
    part.train(evaluate_at_end=False, quiet=True)
    assert (tmp_path / "part" / "buffers" / "iter_000001.pt").is_file()
    resumed = Trainer.resume(tmp_path / "part", iterations=2)
    assert int(resumed.algorithm.rl.size.sum()) > 0  # the buffers came back
    resumed.train(evaluate_at_end=False, quiet=True)
    for (name, a), b in zip(full.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    for name in ("qf", "vf", "target_vf"):
        for a, b in zip(getattr(full.algorithm, name).parameters(), getattr(resumed.algorithm, name).parameters()):
            assert torch.equal(a, b), name
    for which in ("rl", "encoder_buffer"):
        a, b = getattr(full.algorithm, which).state(), getattr(resumed.algorithm, which).state()
        assert all(torch.equal(a[k], b[k]) for k in a), which
    assert sorted(p.name for p in (tmp_path / "full" / "buffers").iterdir()) == ["iter_000002.pt"]  # older pruned


def test_next_observation_in_the_context(tmp_path):
    """``use_next_obs_in_context`` (oyster's option): the encoder reads ``(s, a, r, s')``, with each transition's
    true next state, in training (from the buffers) and at test time (from the sampler's hook)."""
    space = gym.spaces.Box(-1.0, 1.0, (1,))
    plain, with_next = PEARLAgent(2, space, 3, [4], [4]), PEARLAgent(2, space, 3, [4], [4], next_obs_in_context=True)
    obs, act, rew, nxt = torch.zeros(5, 2), torch.ones(5, 1), torch.full((5,), 2.0), torch.full((5, 2), 3.0)
    assert plain.context(obs, act, rew, nxt).shape == (5, 4) and plain.encoder.weights[0].shape[1] == 4
    assert with_next.context(obs, act, rew, nxt)[:, 4:].eq(3.0).all() and with_next.encoder.weights[0].shape[1] == 6
    trainer = Trainer(small_pearl("iterations=1", "pearl.use_next_obs_in_context=true"), tmp_path / "run")
    seen = []
    context = trainer.policy.context

    def spy(obs, actions, rewards, next_obs):
        seen.append((obs, actions, next_obs))
        return context(obs, actions, rewards, next_obs)

    trainer.policy.context = spy
    trainer.train(evaluate_at_end=True, quiet=True)
    assert (tmp_path / "run" / "eval.json").is_file()
    assert {o.dim() for o, _, _ in seen} == {
        3,
        4,
    }  # training's [tasks, n, in] and the evaluation's [tasks, episodes, T, in]
    for obs, actions, next_obs in seen:  # navigation moves by the action: s' = s + a in every transition
        torch.testing.assert_close(next_obs, obs + trainer.policy.to_env(actions), rtol=0, atol=1e-5)
    assert any(bool((o.norm(dim=-1) > 0.15).any()) for o, _, _ in seen)  # s' = 0 would not pass: agents move away


def test_resume_without_buffers_is_one_line(tmp_path):
    from caml_rl.checkpoint import CheckpointError

    Trainer(small_pearl("iterations=1"), tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    (tmp_path / "run" / "buffers" / "iter_000001.pt").unlink()
    with pytest.raises(CheckpointError, match="replay buffers .* do not exist"):
        Trainer.resume(tmp_path / "run", iterations=2)


def test_run_directory_evaluate_report_and_visualize(tmp_path, capsys):
    from caml_rl.cli import main

    run = tmp_path / "pearl_seed0"
    result = Trainer(small_pearl("iterations=1"), run).train(quiet=True)
    assert result.adapt == "pearl" and result.episodes_seen == [0, 1, 2] and len(result.returns) == 3
    again = load_run(run).evaluate()
    assert again.returns == result.returns  # exact: the same seed and weights on the same machine
    caml = tmp_path / "caml_seed0"
    small = ["iterations=1", "meta_batch_size=3", "episodes_per_task=2", "env.settings.horizon=20", "device=cpu"]
    evaluation = ["evaluation.tasks=3", "evaluation.episodes=2", "evaluation.steps=2"]
    Trainer(load_config(None, small + evaluation), caml).train(quiet=True)
    assert again.tasks == load_run(caml).evaluate().tasks  # the same new tasks as every other method
    main(["report", str(run), str(caml), "--out", str(tmp_path / "report")])
    assert "pearl" in (tmp_path / "report" / "results.md").read_text()
    with pytest.raises(SystemExit):
        main(["visualize", str(run), "--out", str(tmp_path / "vis")])
    assert "pearl" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("pearl.kl_lambda=-1", r"pearl.kl_lambda=-1.0 is out of range; allowed: >= 0"),
        ("pearl.meta_batch=0", r"pearl.meta_batch=0 is out of range; allowed: >= 1"),
        ("pearl.hidden_sizes=[]", r"pearl.hidden_sizes=\[\] is out of range"),
        ("pearl.soft_target_tau=2", r"pearl.soft_target_tau=2.0 is out of range; allowed: in \(0, 1\]"),
        ("pearl.buffer_size=50", r"pearl.buffer_size=50 is below the 120 transitions one collection may add"),
        ("pearl.n_train_tasks=0", r"pearl.n_train_tasks=0 is out of range"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as info:
        Trainer(small_pearl(override), tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_discrete_action_space_is_refused_in_one_line(tmp_path):
    from caml_rl.pearl import PEARL

    with pytest.raises(ConfigError, match="needs a bounded Box action space"):
        PEARL.make_policy(small_pearl(), gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3))


LEARNS = [
    "env.settings.horizon=20",
    "env.settings.goal_low=-2",
    "env.settings.goal_high=2",
    "env.settings.max_action=0.5",
    "pearl.n_train_tasks=5",
    "pearl.num_tasks_sample=5",
    "pearl.num_initial_steps=40",
    "pearl.num_steps_prior=40",
    "pearl.num_extra_rl_steps_posterior=40",
    "pearl.hidden_sizes=[64,64]",
    "pearl.encoder_hidden_sizes=[64,64]",
    "pearl.num_train_steps_per_itr=300",
    "pearl.meta_batch=5",
    "pearl.batch_size=32",
    "pearl.embedding_batch_size=32",
    "pearl.buffer_size=2000",
    "pearl.reward_scale=2",
    "pearl.discount=0.9",
    "pearl.soft_target_tau=0.01",
    "pearl.policy_lr=1e-3",
    "pearl.qf_lr=1e-3",
    "pearl.vf_lr=1e-3",
    "pearl.context_lr=1e-3",
]


def test_pearl_learns_navigation(tmp_path):
    """Smoke test (about 25 s of one core): 2D navigation with goals in [-2, 2]² (5 training tasks, 20 steps of
    at most 0.5), where without knowing the goal the best a policy can do is stay near the origin (about -30).
    Within 12 iterations the episodes run with z from the posterior beat the first iteration's (a random walk)
    and beat the prior's episodes of the same iterations: the encoder's z carries the goal. Measured over seeds
    0-5 (18-27 s of one core each): gain over the first iteration 11.1 to 29.1 (mean 18.9), posterior over prior
    6.9 to 11.6 (mean 9.5); the thresholds 5 and 3 sit well below both minimums, and a z that carries nothing
    gives a posterior no better than the prior."""
    config = small_pearl("iterations=12", *LEARNS)
    Trainer(config, tmp_path / "run").train(evaluate_at_end=False, quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "progress.csv")))
    posterior = [float(r["return/after_adaptation"]) for r in rows]
    prior = [float(r["return/before_adaptation"]) for r in rows]
    assert np.mean(posterior[-4:]) > posterior[0] + 5, posterior
    assert np.mean(posterior[-4:]) > np.mean(prior[-4:]) + 3, (prior, posterior)


def test_benchmark_reports_env_steps_and_gradient_steps_per_second(capsys):
    import json

    from caml_rl.cli import main

    batch = ["--env", "navigation2d", "--tasks", "2", "--episodes", "2", "--horizon", "20", "--iterations", "1"]
    main(["benchmark", *batch, "--json", "--set", "algorithm=pearl", *(f"--set={s}" for s in SMALL)])
    result = json.loads(capsys.readouterr().out)
    assert result["algorithm"] == "pearl" and result["adapts"] == "pearl" and "optimizer" not in result["details"]
    # the first iteration also fills 6 tasks x 2 episodes; then 3 sampled tasks x (1 prior + 1 posterior) episodes
    assert result["env_steps_per_iteration"] == 6 * 2 * 20 + 3 * 2 * 20
    for key in ("sampler_steps_per_s", "iteration_steps_per_s", "fwdbwd_seconds", "gradient_steps_per_s"):
        assert result[key] > 0, key
