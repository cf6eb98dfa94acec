"""caml_rl.allocator: freed tensor memory is reused without new page faults (Linux/glibc)."""

import resource
import sys

import pytest
import torch

from caml_rl.allocator import keep_freed_memory


def faults_of_a_fresh_tensor(mb: int = 64) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(mb * 2**20 // 4)  # writes every page
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // resource.getpagesize()
    if not keep_freed_memory():
        pytest.skip("not glibc")
    faults_of_a_fresh_tensor()  # grows the heap once
    assert faults_of_a_fresh_tensor() < pages // 10  # default glibc: mmap + munmap, ~every page faults
