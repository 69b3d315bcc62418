"""Time mono-quant's quantized layers against their float counterparts on this CPU.

Prints one markdown table per layer type: median milliseconds per call over repeated runs
(torch.utils.benchmark), and the speedup against the float layer. Run it from the repository root:

    python bench/bench_modules.py            # all rows
    python bench/bench_modules.py --quick    # smaller shapes, for a smoke run

Numbers depend on the machine, the thread count and the active kernel backend, which the header names.
"""
import argparse
import os
import platform
import time

import torch
import torch.nn as nn
from torch.utils import benchmark

from mono_quant import kernels
from mono_quant.int4 import QuantizedLinearInt4
from mono_quant.modules import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear


def _cpu_name() -> str:
    "CPU model name from /proc/cpuinfo on Linux, else what the platform module reports."
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_idle_fraction(seconds: float = 3.0) -> float:
    "Fraction of CPU time spent idle over `seconds`, from /proc/stat (Linux)."
    def snapshot():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3]
    total0, idle0 = snapshot()
    time.sleep(seconds)
    total1, idle1 = snapshot()
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(timeout: float) -> float:
    "Wait up to `timeout` seconds for the CPU to be at least 90% idle; return the idle fraction last seen."
    deadline, idle = time.time() + timeout, 0.0
    while time.time() < deadline:
        idle = cpu_idle_fraction()
        if idle >= 0.9: break
    return idle


def median_ms(fn, min_run_time: float) -> float:
    "Median milliseconds per call of `fn()` under torch.utils.benchmark, after one warm-up call."
    with torch.inference_mode():
        fn()
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def print_table(title: str, rows: list):
    "Print rows of (layer, variant, batch, ms, float ms) as a markdown table with the speedup column."
    print(f"\n### {title}\n")
    print("| layer | variant | input | ms / call | speedup vs float |")
    print("|---|---|---|---:|---:|")
    for layer, variant, batch, ms, float_ms in rows:
        print(f"| {layer} | {variant} | {batch} | {ms:.3f} | {float_ms / ms:.2f}x |")


def linear_rows(shapes, batches, min_run_time):
    "Float nn.Linear against each quantized linear variant."
    rows = []
    for in_features, out_features in shapes:
        torch.manual_seed(0)
        linear = nn.Linear(in_features, out_features)
        variants = {
            "INT8 weight-only": QuantizedLinear.from_float(linear),
            "INT8 dynamic activations": QuantizedLinear.from_float(linear, activations="dynamic"),
            "INT8 static activations": QuantizedLinear.from_float(linear, activations="static"),
            "FP16 weight": QuantizedLinear.from_float(linear, bits=16),
            "INT4 group 32": QuantizedLinearInt4.from_float(linear, group_size=32),
            "INT4 group 128": QuantizedLinearInt4.from_float(linear, group_size=128),
        }
        variants["INT8 static activations"].set_activation_qparams(8.0 / 255, -1)
        for batch in batches:
            x = torch.randn(batch, in_features)
            float_ms = median_ms(lambda: linear(x), min_run_time)
            name = f"Linear({in_features}, {out_features})"
            rows.append((name, "float32 nn.Linear", f"[{batch}, {in_features}]", float_ms, float_ms))
            for variant, module in variants.items():
                rows.append((name, variant, f"[{batch}, {in_features}]", median_ms(lambda: module(x), min_run_time), float_ms))
    return rows


def conv_rows(specs, min_run_time):
    "Float nn.Conv2d against the layer's own choice, each weight-only path forced, and dynamic activations."
    rows = []
    for (in_channels, out_channels, kernel_size, groups, size, batch) in specs:
        torch.manual_seed(0)
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)
        q = QuantizedConv2d.from_float(conv)
        dynamic = QuantizedConv2d.from_float(conv, activations="dynamic")
        x = torch.randn(batch, in_channels, size, size)
        name = f"Conv2d({in_channels}, {out_channels}, {kernel_size}, groups={groups})"
        shape = f"[{batch}, {in_channels}, {size}, {size}]"
        float_ms = median_ms(lambda: conv(x), min_run_time)
        rows.append((name, "float32 nn.Conv2d", shape, float_ms, float_ms))
        path = "im2col" if q._use_im2col(x) else "dequantize"
        rows.append((name, f"INT8 weight-only, layer's choice ({path})", shape, median_ms(lambda: q(x), min_run_time), float_ms))
        dequantized = lambda: q._conv(x, q._float_weight(x.dtype), q.bias)
        rows.append((name, "INT8 weight-only, dequantize + F.conv2d", shape, median_ms(dequantized, min_run_time), float_ms))
        rows.append((name, "INT8 weight-only, im2col + linear_int8", shape, median_ms(lambda: q._forward_im2col(x), min_run_time), float_ms))
        rows.append((name, "INT8 dynamic activations, im2col", shape, median_ms(lambda: dynamic(x), min_run_time), float_ms))
    return rows


def embedding_rows(num_embeddings, embedding_dim, batches, min_run_time):
    "Float nn.Embedding lookups against INT8 and FP16 tables."
    torch.manual_seed(0)
    embedding = nn.Embedding(num_embeddings, embedding_dim)
    variants = {"INT8 rows": QuantizedEmbedding.from_float(embedding), "FP16 rows": QuantizedEmbedding.from_float(embedding, bits=16)}
    rows = []
    for batch, length in batches:
        idx = torch.randint(0, num_embeddings, (batch, length))
        name = f"Embedding({num_embeddings}, {embedding_dim})"
        float_ms = median_ms(lambda: embedding(idx), min_run_time)
        rows.append((name, "float32 nn.Embedding", f"[{batch}, {length}]", float_ms, float_ms))
        for variant, module in variants.items():
            rows.append((name, variant, f"[{batch}, {length}]", median_ms(lambda: module(idx), min_run_time), float_ms))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="use small shapes and short runs (a smoke test, not a measurement)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed calls per row (default 1.0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="seconds to wait for a 90%% idle CPU before starting, because other processes distort timings")
    args = parser.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    idle = wait_for_idle(args.wait_idle) if args.wait_idle else None
    min_run_time = 0.05 if args.quick else args.min_run_time

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"kernel backend: {kernels.kernel_backend()}, 1-minute load average at start: {load:.1f}"
          + ("" if idle is None else f", CPU idle before start: {idle:.0%}"))
    if args.quick:
        print_table("Linear", linear_rows([(256, 256)], [1, 8], min_run_time))
        print_table("Conv2d", conv_rows([(8, 16, 3, 1, 16, 1)], min_run_time))
        print_table("Embedding", embedding_rows(1000, 64, [(2, 16)], min_run_time))
        return
    print_table("Linear", linear_rows([(4096, 4096), (384, 1536)], [1, 32], min_run_time))
    print_table("Conv2d", conv_rows([(64, 64, 3, 1, 56, 1), (256, 256, 3, 1, 14, 1), (3, 64, 7, 1, 112, 1),
                                     (128, 128, 3, 128, 28, 1), (512, 512, 3, 1, 7, 1), (512, 512, 3, 1, 4, 1),
                                     (256, 256, 3, 1, 8, 1)], min_run_time))
    print_table("Embedding", embedding_rows(30522, 384, [(1, 128), (32, 128)], min_run_time))


if __name__ == "__main__":
    main()
