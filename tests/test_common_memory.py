"""The allocator setting the command line makes (common/memory.py): glibc takes it, and every command
runs with it (the group's callback, before the command parses its options)."""
import platform
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dpcompat import cli as cli_module


_FIRST_REUSE = """
import ctypes, sys
if sys.argv[1] == "set":
    from dpcompat.common.memory import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
first = libc.malloc(8 << 20)  # above glibc's first mmap threshold (128 KiB)
libc.free(first)
second = libc.malloc(8 << 20)
libc.free(second)
print(second == first)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("setting, reused", [("set", "True"), ("default", "False")])
def test_a_freed_block_is_served_again_not_mapped_afresh(setting, reused):
    """A fresh process: by default glibc maps the first 8 MiB block and unmaps it when freed, so the
    next one is new memory; with the setting it comes from the heap and returns to it."""
    out = subprocess.run([sys.executable, "-c", _FIRST_REUSE, setting], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == reused


def test_every_command_runs_with_it(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_module, "keep_freed_memory", lambda: calls.append(1) or True)
    result = CliRunner().invoke(cli_module.cli, ["bench", "evaluate", "--repeats", "0"])
    assert result.exit_code == 2 and calls == [1]
