import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from caml_rl.episodes import Episodes
from caml_rl.policies import ContextMLPPolicy

# Torch threads. A sum split over more threads is added in another order, so a result may differ in its last
# bits with the thread count: a test may hold two computations of one process bit-identical (both run at the
# same count), but a comparison with a number from elsewhere needs a tolerance that covers rounding. To check,
# run the suite at two counts, e.g. `pytest --torch-threads 1` and `pytest --torch-threads 2` (OMP_NUM_THREADS
# sets the default, which is all cores). The count is re-set before and after every test, because a run whose
# config sets torch_threads calls torch.set_num_threads for the whole process: the tests after it would
# otherwise all run at that count. Subprocesses (the CLI, torchrun) get it through OMP_NUM_THREADS.
# Another CPU's rounding can be had on this one by taking other kernels, e.g. AVX2 instead of AVX-512:
# ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell
# NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" pytest (a training run then differs as on such a CPU).


def pytest_addoption(parser):
    parser.addoption(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="run every test with torch.set_num_threads(N), and subprocesses with OMP_NUM_THREADS=N",
    )


def pytest_configure(config):
    threads = config.getoption("--torch-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--torch-threads {threads}: must be at least 1")
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    config.torch_threads = torch.get_num_threads()


def pytest_report_header(config):
    return f"torch threads: {config.torch_threads} (set with --torch-threads N)"


@pytest.fixture(autouse=True)
def _algorithm_registry():
    """A test that registers a plug-in algorithm (the docs' example) leaves the registries of
    algorithms and of their config sections as it found them."""
    from caml_rl.algorithm import ALGORITHMS
    from caml_rl.config_loading import PLUGIN_SECTIONS

    before, sections = dict(ALGORITHMS), dict(PLUGIN_SECTIONS)
    yield
    ALGORITHMS.clear()
    ALGORITHMS.update(before)
    PLUGIN_SECTIONS.clear()
    PLUGIN_SECTIONS.update(sections)


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """Every test starts at the session's thread count, whatever an earlier test's run set, and leaves it so
    (a module-scoped fixture that trains is set up between two tests)."""
    threads = request.config.torch_threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def random_episodes(T=6, tasks=3, eps=4, obs_dim=2, act_dim=2, dtype=torch.float64, seed=0, ragged=True):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, tasks, eps, obs_dim, generator=g, dtype=dtype)
    actions = torch.randn(T, tasks, eps, act_dim, generator=g, dtype=dtype)
    rewards = torch.randn(T, tasks, eps, generator=g, dtype=dtype)
    mask = torch.ones(T, tasks, eps, dtype=dtype)
    if ragged:  # some episodes end early
        lengths = torch.randint(2, T + 1, (tasks, eps), generator=g)
        mask = (torch.arange(T)[:, None, None] < lengths[None]).to(dtype)
    return Episodes(obs * mask[..., None], actions * mask[..., None], rewards * mask, mask)


def tiny_policy(context_size=2, obs_dim=2, act_dim=2, hidden=(5,), seed=0, activation="tanh"):
    torch.manual_seed(seed)
    space = gym.spaces.Box(-1, 1, shape=(act_dim,), dtype=np.float32)
    return ContextMLPPolicy(obs_dim, space, hidden, activation, context_size, init_std=0.7).double()


@pytest.fixture
def episodes():
    return random_episodes()
