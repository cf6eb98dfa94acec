"""What an evaluation's numbers depend on, and how closely a re-evaluation must agree with them.

An evaluation is bit-identical when it is re-run with the same seed on the machine and library
versions that wrote it. On another CPU the float rounding differs (vector width, fused
multiply-adds, the kernels torch and MuJoCo pick for that processor); chaotic rollouts amplify
the difference into other episodes, and every inner step is taken on those episodes, so each
step drifts further than the one before. There the numbers agree statistically, not bit for bit:
:func:`compare_rows` holds a re-evaluation to the tolerances below, and
``eval.json`` records :func:`machine_record` so that the two cases can be told apart.
"""

from __future__ import annotations

import hashlib
import math
import platform
from functools import cache
from pathlib import Path
from typing import Any

import torch

# Steps 0 and 1 (before adaptation, and the one step the methods are trained for, the headline
# number): the re-evaluated mean must lie inside the committed row's own 95% interval. A
# re-evaluation shares the tasks, initial states and noise draws, so it differs by far less than
# an independent evaluation would (on a second CPU: at most 0.03 of the interval at step 0 and
# 0.41 at step 1, over the 14 committed runs of issue 37).
HEADLINE_STEPS_TOLERANCE = 1.0
# Later steps adapt again on episodes that have drifted apart: bounded by the 95% interval of the
# difference of two *independent* evaluations, sqrt(2) x the interval, widened for the ~100
# comparisons one test run makes (Bonferroni: z(1 - 0.05/200) / z(0.975) = 3.48 / 1.96), so that
# the whole family passes 95% of the time: sqrt(2) x 1.78 = 2.5. Seen on a second CPU: at most 1.13.
LATER_STEPS_TOLERANCE = 2.5
# caml-rl's own order of float operations, which an evaluation's bits depend on as much as the libraries':
# raised when a change rounds differently, so that files written before it are held to the tolerance.
# 2: the policy's first layer takes obs and context separately (caml_rl/policies.py).
NUMERICS = 2
_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile")


def tolerance(step: int) -> float:
    """How many of the committed 95% half-widths a re-evaluation may differ by after ``step`` inner steps."""
    return HEADLINE_STEPS_TOLERANCE if step <= 1 else LATER_STEPS_TOLERANCE


@cache
def _cpu() -> dict[str, Any]:
    """The CPU's model name, family/model/stepping and vector extensions (Linux's /proc/cpuinfo;
    the platform's processor string elsewhere)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip() and fields:
                break  # the first processor is enough: a VM's cores are alike
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    cpu_id = " ".join(f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    return {
        "cpu": fields.get("model name") or platform.processor() or "unknown",
        "cpu_id": cpu_id or "unknown",
        "simd": [f for f in _SIMD_FLAGS if f in flags],
    }


def machine_record(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What an evaluation's rounding depends on: the CPU (or GPU), the numeric libraries and
    caml-rl's own order of operations (:data:`NUMERICS`)."""
    import mujoco
    import numpy

    device = torch.device(device)
    record = {
        "arch": platform.machine(),
        **_cpu(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "mujoco": mujoco.__version__,
            "caml_rl_numerics": NUMERICS,
        },
    }
    return record


def machine_difference(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """None when ``recorded`` names this machine and these versions; else what differs, in words."""
    if not isinstance(recorded, dict) or not recorded:
        return "it records no machine (written before caml-rl recorded one)"
    mine, theirs = _flat(current), _flat(recorded)
    changed = [f"{k} {theirs.get(k, '?')!s} -> {v!s}" for k, v in mine.items() if theirs.get(k) != v]
    return "; ".join(changed) or None


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    versions = record.get("versions") if isinstance(record.get("versions"), dict) else {}
    return {**{k: v for k, v in record.items() if k != "versions"}, **versions}


def policy_digest(policy: torch.nn.Module) -> str:
    """SHA-256 of the policy's weights (names, shapes and float bits, in name order): which
    checkpoint an evaluation ran, identical on every machine."""
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


# an evaluation reproduces another only with the same checkpoint, test tasks and adaptation settings
SAME_SETTINGS = ("env", "adapt", "iteration", "num_tasks", "episodes_per_task", "inner_lr", "seed")


def changed_task_settings(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The task settings an evaluation file changed from the trained ones; files from before the field changed none."""
    return evaluation.get("task_settings") or {}


def settings_difference(committed: dict[str, Any], result: dict[str, Any]) -> str | None:
    """None when a re-evaluation used the committed file's checkpoint, tasks and settings; else which differs."""
    changed = (changed_task_settings(committed), changed_task_settings(result))
    if changed[0] != changed[1]:
        return f"evaluated with task_settings={changed[1]!r}, the committed file with {changed[0]!r}"
    for key in SAME_SETTINGS:
        if key in committed and committed[key] != result.get(key):
            return f"evaluated with {key}={result.get(key)!r}, the committed file with {committed[key]!r}"
    if len(result["returns"]) != len(committed.get("returns", [])):
        return f"evaluated {len(result['returns']) - 1} inner steps, the committed file {len(committed['returns']) - 1}"
    return None


def disagreements(committed: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Where a re-evaluation (``EvalResult.to_dict()``) disagrees with a committed ``eval.json``;
    empty when it agrees.

    On the machine and versions that wrote the committed file, every task's return must be
    identical. Elsewhere (or when the file records no machine) the mean after each step must lie
    within :func:`tolerance` committed 95% half-widths of the committed mean.
    """
    other = settings_difference(committed, result)
    if other:
        return [other]
    if committed.get("policy_sha256") and committed["policy_sha256"] != result.get("policy_sha256"):
        return [
            f"the evaluated weights (sha256 {result.get('policy_sha256', '?')[:12]}) are not the committed "
            f"file's ({committed['policy_sha256'][:12]}): another checkpoint"
        ]
    if machine_difference(committed.get("machine"), result.get("machine", {})) is None:
        if result["task_returns"] != committed["task_returns"]:
            k = next(k for k, (a, b) in enumerate(zip(result["task_returns"], committed["task_returns"])) if a != b)
            mine, theirs = result["returns"][k], committed["returns"][k]
            return [f"step {k}: {mine!r} vs {theirs!r}, not bit-identical on the machine and versions that wrote it"]
        return []
    problems = []
    for k, (mine, theirs, ci) in enumerate(zip(result["returns"], committed["returns"], committed["ci95"])):
        allowed = tolerance(k) * ci if ci is not None and math.isfinite(ci) else 0.0
        if not abs(mine - theirs) <= allowed:
            limit = f"allowed ±{allowed:.2f}, {tolerance(k)} x its 95% CI"
            problems.append(f"step {k}: {mine:.2f} vs {theirs:.2f} ({limit})")
    return problems
