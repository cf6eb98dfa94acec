"""caml_rl.allocator: in a fresh process (as the CLI runs), freed tensor memory is reused without
new page faults (Linux/glibc)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from caml_rl.allocator import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print(-1); sys.exit()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64 * 2**20 // 4)  # 64 MB, every page written
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()  # the first allocation maps its pages either way
print(faults() * resource.getpagesize() // (64 * 2**20 // 100))  # percent of the pages that faulted again
"""


def refault_percent(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_without_page_faults():
    kept = refault_percent("keep")
    if kept < 0:
        pytest.skip("not glibc")
    assert kept < 10
    assert refault_percent("default") > 90  # glibc's default: mmap + munmap, every page faults again
