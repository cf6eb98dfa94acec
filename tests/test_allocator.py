"""caml_rl.allocator: glibc accepts the settings (Linux), and the call is harmless to repeat.

Its effect (no page faults when a freed large tensor is re-allocated) was measured on training
runs (MAML HalfCheetah: kernel time 39% -> 3% of CPU); a page-fault count in a test process proved
flaky, since whether the heap can grow in place depends on where the kernel maps other memory."""

import sys

import pytest
import torch

from caml_rl.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_glibc_accepts_the_settings_and_tensors_still_work():
    import ctypes.util

    if "musl" in (ctypes.util.find_library("c") or ""):
        pytest.skip("not glibc")
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    x = torch.ones(16 * 2**20)
    del x
    # exact in any summation order: every partial sum is an integer <= 2**24, which float32 holds exactly
    assert float(torch.ones(16 * 2**20).sum()) == 16 * 2**20
