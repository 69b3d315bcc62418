"""Time quantized Linear layers against the float layer and write the results as JSON.

Usage (from the repository root):

    python bench/bench_linear.py                  # the full run, writes bench/results/linear.json
    python bench/bench_linear.py --quick --out /tmp/linear.json

Every variant is timed in the same loop as the float layer, one call each per round, so a burst of load from other
processes slows all of them alike. Reported times are medians over the rounds, and the ratio is the variant's median
over the float layer's median for the same shape and batch. Each row records how idle the CPU was before it was timed;
on a shared machine, `--wait-idle 300` waits for a quiet moment before each batch.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from mono_quant import kernels
from mono_quant.scheme import quantize_weight

RESULTS = Path(__file__).resolve().parent / "results" / "linear.json"


# ---------------------------------------------------------------- variants
# Each factory takes a float nn.Linear and returns (forward callable, bytes of weight data it stores).
# They call the kernels with codes from scheme.quantize_weight. Once the quantized modules exist, a factory becomes
# e.g. `module = QuantizedLinear.from_float(linear)` returning `module, weight_bytes(...)`, and the timing code stays.

def weight_bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def pack_int4(codes):
    "Pack int8 codes [N, K] in [-8, 7] into the shared layout: u = q + 8, low nibble = even input, odd K padded with 8."
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)  # [N, K]
    if nibbles.shape[1] % 2:
        padding = torch.full((nibbles.shape[0], 1), 8, dtype=torch.uint8)
        nibbles = torch.cat([nibbles, padding], dim=1)  # [N, K + 1]
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()  # [N, ceil(K/2)]


def float_layer(linear, dtype=torch.float32):
    layer = nn.Linear(linear.in_features, linear.out_features, dtype=dtype)
    layer.load_state_dict(linear.state_dict())
    return (lambda x: layer(x.to(dtype))), weight_bytes(layer.weight)


def int8_weight_only(linear, dtype=torch.float32):
    qw = quantize_weight(linear.weight.detach(), bits=8)
    bias = linear.bias.detach()
    return (lambda x: kernels.linear_int8(x.to(dtype), qw.data, qw.scale, None, bias)), weight_bytes(qw.data, qw.scale)


def int8_dynamic(linear):
    qw = quantize_weight(linear.weight.detach(), bits=8)
    bias = linear.bias.detach()
    return (lambda x: kernels.linear_int8_dynamic(x, qw.data, qw.scale, None, bias)), weight_bytes(qw.data, qw.scale)


def torch_ao_dynamic(linear):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated, and it is timed here for comparison only
        model = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
    weight, _ = model[0]._weight_bias()
    return model, weight_bytes(weight.int_repr(), weight.q_per_channel_scales() if weight.qscheme() in
                               (torch.per_channel_affine, torch.per_channel_symmetric) else None)


def int4_weight_only(linear, group_size, dtype=torch.float32):
    qw = quantize_weight(linear.weight.detach(), bits=4, group_size=group_size)
    packed, bias, in_features = pack_int4(qw.data), linear.bias.detach(), linear.in_features
    forward = lambda x: kernels.linear_int4(x.to(dtype), packed, qw.scale, None, bias, in_features=in_features,
                                            group_size=group_size)
    return forward, weight_bytes(packed, qw.scale)


def torch_int8pack(linear, dtype):
    qw = quantize_weight(linear.weight.detach(), bits=8)
    scale, bias = qw.scale.to(dtype), linear.bias.detach().to(dtype)
    forward = lambda x: torch.ops.aten._weight_int8pack_mm(x.to(dtype), qw.data, scale) + bias
    return forward, weight_bytes(qw.data, scale)


def torch_int4pack(linear, group_size, dtype):
    qw = quantize_weight(linear.weight.detach(), bits=4, group_size=group_size)
    weight, scales_and_zeros = kernels.to_torch_int4pack(pack_int4(qw.data), qw.scale, None, linear.in_features,
                                                         group_size, dtype)
    bias = linear.bias.detach().to(dtype)
    matmul = torch.ops.aten._weight_int4pack_mm_for_cpu
    forward = lambda x: matmul(x.to(dtype), weight, group_size, scales_and_zeros) + bias
    return forward, weight_bytes(weight, scales_and_zeros)


def kernel_path(linear, path):
    "The int8 weight-only C++ op forced onto one path (0 batch-1, 1 tiles, 2 blocked, 3 blocked with BLAS)."
    ops = kernels._kernel_ops()
    qw = quantize_weight(linear.weight.detach(), bits=8)
    scale, in_features = qw.scale.view(-1, 1).contiguous(), linear.in_features
    block_rows = kernels._block_rows(in_features)
    forward = lambda x: ops.int8_weight_only(x, qw.data, scale, None, None, in_features, path, block_rows)
    return forward, weight_bytes(qw.data, qw.scale)


def int4_kernel_path(linear, path, group_size=128):
    "The int4 weight-only C++ op with groups of 128 forced onto one path, as kernel_path."
    ops = kernels._kernel_ops()
    qw = quantize_weight(linear.weight.detach(), bits=4, group_size=group_size)
    packed, in_features = pack_int4(qw.data), linear.in_features
    scale = qw.scale.reshape(linear.out_features, -1).contiguous()  # [N, G]
    block_rows = kernels._block_rows(in_features)
    forward = lambda x: ops.int4_weight_only(x, packed, scale, None, None, group_size, path, block_rows)
    return forward, weight_bytes(packed, qw.scale)


MAIN_VARIANTS = {
    "float32 nn.Linear": float_layer,
    "int8 weight-only": int8_weight_only,
    "int8 dynamic": int8_dynamic,
    "int8 dynamic, torch.ao (fbgemm)": torch_ao_dynamic,
    "int4 g32 weight-only": lambda linear: int4_weight_only(linear, 32),
    "int4 g128 weight-only": lambda linear: int4_weight_only(linear, 128),
}

# Inputs to the dispatch decisions: bfloat16 handling and PyTorch's own weight-only kernels.
BF16_VARIANTS = {
    "float32 nn.Linear": float_layer,
    "bfloat16 nn.Linear": lambda linear: float_layer(linear, torch.bfloat16),
    "int8 weight-only, bf16 in/out": lambda linear: int8_weight_only(linear, torch.bfloat16),
    "int8 torch _weight_int8pack_mm, bf16": lambda linear: torch_int8pack(linear, torch.bfloat16),
    "int4 g128 weight-only, bf16 in/out": lambda linear: int4_weight_only(linear, 128, torch.bfloat16),
    "int4 g128 torch _weight_int4pack_mm, bf16": lambda linear: torch_int4pack(linear, 128, torch.bfloat16),
}
# With float32 activations PyTorch's ops took 1.7 to 39 times the float layer's time in earlier runs of this script, so
# they are timed only on request (--tables fp32-torch).
FP32_TORCH_VARIANTS = {
    "float32 nn.Linear": float_layer,
    "int8 torch _weight_int8pack_mm, fp32": lambda linear: torch_int8pack(linear, torch.float32),
    "int4 g128 torch _weight_int4pack_mm, fp32": lambda linear: torch_int4pack(linear, 128, torch.float32),
}

PATH_VARIANTS = {
    "float32 nn.Linear": float_layer,
    "int8 path 0 (batch-1 kernel)": lambda linear: kernel_path(linear, 0),
    "int8 path 1 (tiles)": lambda linear: kernel_path(linear, 1),
    "int8 path 2 (blocked)": lambda linear: kernel_path(linear, 2),
    "int8 path 3 (blocked, BLAS)": lambda linear: kernel_path(linear, 3),
    "int4 g128 path 0 (batch-1 kernel)": lambda linear: int4_kernel_path(linear, 0),
    "int4 g128 path 1 (tiles)": lambda linear: int4_kernel_path(linear, 1),
    "int4 g128 path 2 (blocked)": lambda linear: int4_kernel_path(linear, 2),
}


# ---------------------------------------------------------------- timing
def time_round_robin(variants, x, rounds, warmup):
    "Median and minimum seconds per call of each variant, calling each once per round."
    for forward, _ in variants.values():
        for _ in range(warmup):
            forward(x)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (forward, _) in variants.items():
            start = time.perf_counter()
            forward(x)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def run_table(factories, shapes, batches, rounds, warmup, label, wait_idle=0.0):
    "Time `factories` for every shape and batch; wait up to `wait_idle` seconds for an idle CPU before each batch."
    rows = []
    for in_features, out_features in shapes:
        torch.manual_seed(0)
        linear = nn.Linear(in_features, out_features)
        variants = {name: make(linear) for name, make in factories.items()}
        for batch in batches:
            idle = wait_for_idle(wait_idle) if wait_idle else cpu_idle_fraction()
            load_before = os.getloadavg()[0]
            x = torch.randn(batch, in_features)
            with torch.inference_mode():
                timed = time_round_robin(variants, x, rounds, warmup)
            float_median = timed["float32 nn.Linear"][0]
            for name, (median, minimum) in timed.items():
                rows.append({"table": label, "in_features": in_features, "out_features": out_features, "batch": batch,
                             "variant": name, "median_ms": median * 1e3, "min_ms": minimum * 1e3,
                             "ratio_to_float": median / float_median, "weight_bytes": variants[name][1],
                             "cpu_idle_before": round(idle, 3), "loadavg_1min_before": load_before})
                print(f"{label:6} {in_features}x{out_features:<6} batch {batch:>3}  {name:44} {median * 1e3:9.3f} ms "
                      f"{median / float_median:7.3f}x  {variants[name][1] / 2**20:8.2f} MiB", flush=True)
    return rows


# ---------------------------------------------------------------- machine description
def cpu_idle_fraction(seconds=3.0):
    def snapshot():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3]
    total0, idle0 = snapshot()
    time.sleep(seconds)
    total1, idle1 = snapshot()
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(timeout):
    "Wait up to `timeout` seconds for the CPU to be at least 90% idle; return the idle fraction last seen."
    deadline, idle = time.time() + timeout, 0.0
    while time.time() < deadline:
        idle = cpu_idle_fraction()
        if idle >= 0.9:
            break
    return idle


def machine_info():
    info = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "kernel_backend": kernels.kernel_backend(),
            "kernel_isa": kernels.kernel_isa()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    for key in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache", "Hypervisor vendor"):
        if key in fields:
            info[key.lower().replace("(s)", "s").replace(" ", "_")] = fields[key].strip()
    flags = fields.get("Flags", "").split()
    info["simd_flags"] = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=25, help="timed calls per variant, per shape and batch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant before timing")
    parser.add_argument("--sweep-batches", default="1,2,4,8,16,32,64", help="batches for the ratio-versus-batch sweep")
    parser.add_argument("--quick", action="store_true", help="only Linear(4096, 4096) with 5 rounds, as a smoke test")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every variant (default: torch's choice)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="seconds to wait for an idle CPU before each batch of each table "
                             "(other processes distort timings)")
    parser.add_argument("--tables", default="main,bf16,sweep,paths",
                        help="tables to run, comma-separated, from main, bf16, fp32-torch, sweep, paths")
    parser.add_argument("--shapes", default="4096x4096,4096x11008", help="in_features x out_features of the main table")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    shapes = shapes[:1] if args.quick else shapes
    rounds = 5 if args.quick else args.rounds
    sweep = [int(b) for b in args.sweep_batches.split(",")]
    sweep_rounds = max(rounds // 2, 5)
    tables = args.tables.split(",")

    load_before = os.getloadavg()
    started = time.time()
    results = []
    if "main" in tables:
        results += run_table(MAIN_VARIANTS, shapes, [1, 32], rounds, args.warmup, "main", args.wait_idle)
    if "bf16" in tables:
        results += run_table(BF16_VARIANTS, shapes[:1], [1, 32], rounds, args.warmup, "bf16", args.wait_idle)
    if "fp32-torch" in tables:
        results += run_table(FP32_TORCH_VARIANTS, shapes[:1], [1], rounds, args.warmup, "fp32-torch", args.wait_idle)
    if "sweep" in tables:
        results += run_table(MAIN_VARIANTS, shapes[:1], sweep, sweep_rounds, args.warmup, "sweep", args.wait_idle)
    if "paths" in tables and kernels.kernel_backend() == "avx2":
        results += run_table(PATH_VARIANTS, shapes[:1], sweep, sweep_rounds, args.warmup, "paths", args.wait_idle)

    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
              "machine": machine_info(), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "seconds": round(time.time() - started, 1), "rounds": rounds,
              "timing": "median over round-robin rounds; ratio = variant median / float32 median, same shape and batch",
              "results": results}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
