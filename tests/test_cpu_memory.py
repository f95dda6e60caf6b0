"""Training processes keep freed memory for the next step (glibc), and say when they cannot."""

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_large_blocks_are_reused_instead_of_unmapped():
    """Without the setting, freeing a 64 MB tensor unmaps it (RSS falls back); with it the
    pages stay with the process and the next allocation of that size finds them."""
    script = (
        "import sys, torch\n"
        "from edgekd.cpu_memory import reuse_freed_memory\n"
        "if sys.argv[1] == 'on': assert reuse_freed_memory()\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
        "before = rss()\n"
        "x = torch.ones(16 * 1024 * 1024)\n"  # 64 MB, touched
        "del x\n"
        "print(rss() - before)\n")
    kept = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for mode in ("off", "on")}
    assert kept["off"] < 16 * 1024  # KiB: handed back to the kernel
    assert kept["on"] > 48 * 1024  # KiB: kept for reuse
