"""Benchmark `quantize_checkpoint` on a synthetic Llama-like bfloat16 checkpoint of about 6.4 GB in 4 shards.

The checkpoint is generated into a temporary folder on disk and deleted at the end. For INT8 and INT4 with one and two
workers, a fresh subprocess quantizes it. It reports its peak resident memory (ru_maxrss of itself and of its worker
processes), its baseline after importing torch and mono-quant, and the wall time. Throughput is input bytes per
second. For comparison the script times `cat` of the same files to /dev/null, once after evicting them from the page
cache (posix_fadvise DONTNEED, which needs no privileges) and once with them cached. Each quantization run also starts
with the input evicted, so it reads from disk as a first run would. Results go to bench/results/streaming.json.

    python bench/bench_streaming.py            # full size, about 10 minutes on 2 cores
    python bench/bench_streaming.py --layers 2 # a quick run
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

# Llama 3.2 3B shapes: hidden 3072, MLP 8192, 8 key-value heads of 128, vocabulary 128256, untied head left out.
HIDDEN, INTERMEDIATE, KV, VOCAB = 3072, 8192, 1024, 128256


def shapes(layers:int) -> list:
    "Names and shapes of a Llama-style decoder state dict with `layers` blocks."
    result = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        result += [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,)),
                   (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (KV, HIDDEN)),
                   (p + "self_attn.v_proj.weight", (KV, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)), (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
                   (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE))]
    return result + [("model.norm.weight", (HIDDEN,))]


def generate(folder:Path, layers:int, shards:int) -> tuple[int, int]:
    "Write a random bfloat16 checkpoint of `shards` files with an index; return (tensor bytes, largest tensor bytes)."
    entries = shapes(layers)
    sizes = [torch.Size(s).numel() * 2 for _, s in entries]
    total, groups, filled = sum(sizes), [[]], 0
    for entry, size in zip(entries, sizes):
        if filled >= total * len(groups) / shards and len(groups) < shards: groups.append([])
        groups[-1].append(entry)
        filled += size
    generator, weight_map = torch.Generator().manual_seed(0), {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: torch.randn(s, generator=generator).mul_(0.02).bfloat16() for n, s in group}
        safetensors.torch.save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total, max(sizes)


def evict(files:list):
    "Drop the files' pages from the page cache, so that the next read comes from disk."
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally: os.close(fd)


def cat_seconds(files:list) -> float:
    "Time `cat files > /dev/null`."
    start = time.perf_counter()
    with open(os.devnull, "wb") as null: subprocess.run(["cat", *map(str, files)], stdout=null, check=True)
    return time.perf_counter() - start


# Linux carries ru_maxrss across exec, so a process started from this one would start with this process's peak (it
# generated the checkpoint). LAUNCH forks a small interpreter and runs RUN in the fork's exec, whose ru_maxrss starts
# from the small interpreter's. The workers of a run are started the same way from RUN's process, so their peak is at
# least RUN's resident size when the pool starts (about its baseline).
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0: os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""

RUN = """
import json, resource, sys, time
import torch
from mono_quant.streaming import quantize_checkpoint
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
report = quantize_checkpoint(sys.argv[1], sys.argv[2], bits=int(sys.argv[3]), workers=int(sys.argv[4]), progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "baseline_bytes": baseline,
                  "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_worker_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "layers": len(report.quantized)}))
"""


def quantize_run(src:Path, dst:Path, bits:int, workers:int, input_bytes:int) -> dict:
    "Quantize `src` into `dst` in a fresh subprocess with a cold page cache; return its measurements."
    evict(sorted(src.glob("*.safetensors")))
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", LAUNCH, RUN, str(src), str(dst), str(bits), str(workers)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(bits=bits, workers=workers, load_before=load, load_after=os.getloadavg()[0],
                  output_bytes=sum(p.stat().st_size for p in dst.iterdir()),
                  throughput_gb_s=input_bytes / result["seconds"] / 1e9)
    shutil.rmtree(dst)
    return result


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28, help="decoder blocks (28 gives about 6.4 GB)")
    parser.add_argument("--shards", type=int, default=4, help="number of shard files")
    parser.add_argument("--tmp", default=None, help="folder for the checkpoint (default: the system temporary folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "streaming.json"), help="JSON output file")
    return parser.parse_args()


def main():
    args = parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        src = Path(folder) / "checkpoint"
        src.mkdir()
        start = time.perf_counter()
        total, largest = generate(src, args.layers, args.shards)
        generate_seconds = time.perf_counter() - start

        files = sorted(src.glob("*.safetensors"))
        file_bytes = sum(p.stat().st_size for p in files)
        evict(files)
        cold = cat_seconds(files)
        warm = cat_seconds(files)

        runs = []
        for bits in (8, 4):
            for workers in (1, 2):
                runs.append(quantize_run(src, Path(folder) / f"out-{bits}-{workers}", bits, workers, total))
                print(json.dumps(runs[-1]), flush=True)

    result = {"date": started.isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "checkpoint": {"dtype": "bfloat16", "layers": args.layers, "shards": args.shards, "tensor_bytes": total,
                             "file_bytes": file_bytes, "largest_tensor_bytes": largest, "generate_seconds": generate_seconds},
              "disk_read": {"cold_seconds": cold, "cold_gb_s": file_bytes / cold / 1e9,
                            "warm_seconds": warm, "warm_gb_s": file_bytes / warm / 1e9},
              "runs": runs, "bench_process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
