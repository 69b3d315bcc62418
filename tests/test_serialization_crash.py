"""A save killed halfway leaves the previous file intact: the new bytes go to a temporary file that only a complete write
renames over the target."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from mono_quant.serialization import load_model, save_model

# Replaces the safetensors writer with one that writes part of a file, reports it, and hangs until it is killed.
_HANGING_SAVE = """
import sys, time
import torch
from torch import nn
from mono_quant import serialization

def write_part_then_hang(f, tensors, metadata):
    f.write(b"partial" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

serialization._write_safetensors = write_part_then_hang
serialization.save_model(nn.Linear(64, 64), sys.argv[1])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics are POSIX")
def test_killed_save_keeps_old_file(tmp_path):
    target = tmp_path / "model.safetensors"
    torch.manual_seed(0)
    old_model = nn.Linear(4, 4)
    save_model(old_model, target)
    old_bytes = target.read_bytes()

    proc = subprocess.Popen([sys.executable, "-c", _HANGING_SAVE, str(target)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"writing\n"
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()

    assert target.read_bytes() == old_bytes
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != target)
    assert len(leftovers) == 1, leftovers
    assert leftovers[0].startswith(".model.safetensors."), leftovers
    assert leftovers[0].endswith(".tmp"), leftovers
    loaded = load_model(target, nn.Linear(4, 4))
    assert torch.equal(loaded.weight, old_model.weight)
