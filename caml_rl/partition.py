"""Which parameters adapt per task, and how to run the policy with per-task ("fast") values.

Fast values are a dict ``name -> tensor[tasks, ...]``. ``"context"`` is CAML's context vector
(``[tasks, context_size]``, zero at the start of every task); any other name is one of the
policy's own parameters, which then starts from the shared value and is adapted per task
(MAML when every parameter is named).
"""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from .policies import ContextMLPPolicy

FastWeights = dict[str, torch.Tensor]


class PartitionError(ValueError):
    """``adaptation.partition`` names something the policy does not have."""


def resolve_partition(policy: ContextMLPPolicy, spec: str) -> tuple[str, ...]:
    """``"context"``, ``"all"`` or comma-separated names (``"context"`` and/or parameter names)."""
    params = [n for n, _ in policy.named_parameters()]
    has_context = policy.context_size > 0
    if spec == "all":
        return (("context",) if has_context else ()) + tuple(params)
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    allowed = (["context"] if has_context else []) + params
    for name in names:
        if name == "all":  # 'all' only stands alone
            raise PartitionError(f"adaptation.partition={spec!r} combines 'all' with other names; use 'all' alone")
        if name not in allowed:
            raise PartitionError(
                f"adaptation.partition names {name!r}, which this policy lacks; allowed: "
                f"'all' or comma-separated names from {', '.join(allowed)}"
            )
    if not names:
        raise PartitionError("adaptation.partition is empty; use 'context', 'all' or parameter names")
    return names


def initial_fast_weights(policy: ContextMLPPolicy, names: tuple[str, ...], num_tasks: int) -> FastWeights:
    """Each task's starting point: a zero context and the shared parameters (differentiably)."""
    params = dict(policy.named_parameters())
    ref = next(policy.parameters())
    fast: FastWeights = {}
    for name in names:
        if name == "context":
            fast[name] = torch.zeros(
                num_tasks, policy.context_size, device=ref.device, dtype=ref.dtype, requires_grad=True
            )
        else:
            p = params[name]
            fast[name] = p.unsqueeze(0).expand(num_tasks, *p.shape)
    return fast


def as_leaves(fast: FastWeights) -> FastWeights:
    """Detached copies that accept gradients: the start of a non-differentiable adaptation
    (sampling, evaluation), where nothing flows back into the shared parameters."""
    return {k: v.detach().requires_grad_(True) for k, v in fast.items()}


def policy_forward(policy: ContextMLPPolicy, obs: torch.Tensor, fast: FastWeights) -> tuple[torch.Tensor, ...]:
    """Distribution parameters for ``obs [T, tasks, episodes, obs_dim]`` under per-task values.

    The context-only case is a plain broadcast; per-task weights go through
    ``vmap(functional_call)`` over the task dimension.
    """
    num_tasks = obs.shape[1]
    context = fast.get("context")
    if context is None:
        context = obs.new_zeros(num_tasks, policy.context_size)
    weights = {k: v for k, v in fast.items() if k != "context"}
    if not weights:
        return policy(obs, context[:, None, :])

    def one_task(w: FastWeights, o: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return functional_call(policy, w, (o, c))

    # out_dims=0 then movedim: vmap cannot place an unbatched output (a shared log-std) elsewhere
    out = vmap(one_task, in_dims=(0, 1, 0), out_dims=0)(weights, obs, context)
    return tuple(o.movedim(0, 1) for o in out)


def detach_offset(start: FastWeights, adapted: FastWeights) -> FastWeights:
    """``start + stopgrad(adapted - start)``: the adapted values, with the adaptation step
    treated as a constant. Used for a cheap trust-region metric."""
    return {k: start[k] + (adapted[k] - start[k]).detach() for k in adapted}
