"""Checks of `mono_quant.streaming` that need subprocesses: worker processes, and the peak memory of a run."""
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mono_quant.streaming import INDEX_NAME, quantize_checkpoint


def llama_like(vocab:int, hidden:int, intermediate:int, layers:int) -> list:
    "Names and shapes of a Llama-style decoder's state dict: embedding, attention, MLP, RMSNorms and an untied head."
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        prefix = f"model.layers.{i}."
        shapes.append((prefix + "input_layernorm.weight", (hidden,)))
        shapes += [(prefix + f"self_attn.{p}.weight", (hidden, hidden)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        shapes.append((prefix + "post_attention_layernorm.weight", (hidden,)))
        shapes += [(prefix + f"mlp.{p}.weight", (intermediate, hidden)) for p in ("gate_proj", "up_proj")]
        shapes.append((prefix + "mlp.down_proj.weight", (hidden, intermediate)))
    return shapes + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def write_sharded(folder:Path, shapes:list, shards:int, dtype=torch.bfloat16, seed:int=0) -> int:
    "Write random tensors of `shapes` as `shards` safetensors files of about equal size with an index; return the bytes."
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    sizes = [torch.Size(shape).numel() * dtype.itemsize for _, shape in shapes]
    total, groups, current, filled = sum(sizes), [[]], 0, 0
    for (name, shape), size in zip(shapes, sizes):
        if filled >= total * len(groups) / shards and len(groups) < shards: groups.append([])
        groups[-1].append((name, shape))
        filled += size
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: (torch.randn(shape, generator=generator) * 0.02).to(dtype) for name, shape in group}
        safetensors.torch.save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def digests(folder:Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_workers_write_same_bytes(tmp_path):
    write_sharded(tmp_path / "src", llama_like(vocab=512, hidden=64, intermediate=160, layers=3), shards=3)
    serial = quantize_checkpoint(tmp_path / "src", tmp_path / "serial", bits=4, group_size=32, workers=1, progress=False)
    parallel = quantize_checkpoint(tmp_path / "src", tmp_path / "parallel", bits=4, group_size=32, workers=2, progress=False)
    assert digests(tmp_path / "serial") == digests(tmp_path / "parallel")
    assert serial.quantized == parallel.quantized
    assert serial.copied == parallel.copied
    assert len(parallel.quantized) == 2 + 3 * 7  # embedding, head, and 7 Linear layers per block

    (tmp_path / "parallel" / INDEX_NAME).unlink()
    (tmp_path / "parallel" / "model-00002-of-00003.safetensors").unlink()
    resumed = quantize_checkpoint(tmp_path / "src", tmp_path / "parallel", bits=4, group_size=32, workers=2, progress=False)
    assert [p.name for p in resumed.resumed] == ["model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    assert digests(tmp_path / "serial") == digests(tmp_path / "parallel")


def test_worker_failure_names_the_tensor(tmp_path):
    write_sharded(tmp_path / "src", llama_like(vocab=256, hidden=32, intermediate=64, layers=2), shards=2)
    last = tmp_path / "src" / "model-00002-of-00002.safetensors"
    tensors = safetensors.torch.load_file(last)
    tensors["lm_head.weight"][0, 0] = float("inf")
    safetensors.torch.save_file(tensors, last)
    with pytest.raises(ValueError, match=r"lm_head.weight in .* has 1 non-finite value"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "out", workers=2, progress=False)
    assert not (tmp_path / "out" / INDEX_NAME).exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))


# A subprocess measures its own peak resident set size (ru_maxrss, KiB on Linux) after importing torch and mono-quant,
# and again after quantizing the checkpoint.
# Linux carries ru_maxrss across exec, so a process started from this one (which generated the checkpoint in memory)
# would start with this process's peak. LAUNCH therefore forks a small interpreter and runs MEASURE in the fork's exec, whose
# ru_maxrss starts from the small interpreter's.
LAUNCH = textwrap.dedent("""
    import os, sys
    pid = os.fork()
    if pid == 0: os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")
MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from mono_quant.streaming import quantize_checkpoint
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = quantize_checkpoint(sys.argv[1], sys.argv[2], bits=8, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "layers": len(report.quantized)}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_peak_memory_is_bounded_by_largest_tensor(tmp_path):
    # About 210 MB in bfloat16; the largest tensors are the 32000 x 1024 embedding and head, 65.5 MB each.
    shapes = llama_like(vocab=32000, hidden=1024, intermediate=2816, layers=3)
    total = write_sharded(tmp_path / "src", shapes, shards=3)
    largest = max(torch.Size(shape).numel() for _, shape in shapes) * torch.bfloat16.itemsize
    assert 190e6 < total < 230e6 and largest == 32000 * 1024 * 2
    run = subprocess.run([sys.executable, "-c", LAUNCH, MEASURE, str(tmp_path / "src"), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["layers"] == 2 + 3 * 7
    assert measured["baseline"] < 1e9, "the baseline must be this interpreter's, not the test process's"
    extra = measured["peak"] - measured["baseline"]
    assert extra < 2 * largest, f"peak grew by {extra / 1e6:.1f} MB, more than twice the largest tensor ({largest / 1e6:.1f} MB)"
