"""Time the two paths of the integer-activation layers against each other on one CPU.

`linear_int8_dynamic` multiplies int8 activation codes by int8 weights in its own tiles, or, for many rows of a short
input on a CPU without AVX-512 VNNI, dequantizes the activation codes and calls the weight-only kernel. This script
times both paths (and the VNNI tiles where the CPU has them) for each shape and row count, in one process, and writes
the medians to `bench/results/int_paths.json`:

    python bench/bench_int_paths.py [--repeats 30] [--out bench/results/int_paths.json]
"""
import argparse
import datetime
import json
import os
import statistics
import time

import torch

from mono_quant import kernels
from mono_quant.scheme import quantize_weight

SHAPES = [(384, 384), (384, 1536), (1536, 384), (4096, 4096)]  # (in_features, out_features)
ROWS = [8, 16, 32, 64, 256]


def median_us(fn, repeats: int) -> float:
    "Median wall time of `fn()` in microseconds, after 3 untimed calls."
    for _ in range(3): fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per path and shape")
    parser.add_argument("--out", default="bench/results/int_paths.json", help="where to write the JSON results")
    args = parser.parse_args()
    torch.manual_seed(0)
    has_vnni = kernels.kernel_isa() == "avx512-vnni"
    results = []
    for in_features, out_features in SHAPES:
        qw = quantize_weight(torch.randn(out_features, in_features), 8)
        for rows in ROWS:
            x = torch.randn(rows, in_features)

            def via_float():
                codes, act_scale = kernels._quantize_activations(x)
                return kernels.linear_int8(codes * act_scale, qw.data, qw.scale)

            def int_tiles(use_vnni=False):
                return kernels._kernel_ops().int8_act_int8(x, qw.data, qw.scale, None, None, -1.0, 0, -128, 127,
                                                           use_vnni)

            with torch.inference_mode():
                tiles, dequantized = median_us(int_tiles, args.repeats), median_us(via_float, args.repeats)
                vnni = median_us(lambda: int_tiles(True), args.repeats) if has_vnni else None
            if has_vnni: dispatch = "vnni tiles"
            else: dispatch = "weight-only" if kernels._int_act_via_float(rows, in_features) else "int8 tiles"
            results.append({"in_features": in_features, "out_features": out_features, "rows": rows,
                            "int8_tiles_us": tiles, "weight_only_us": dequantized, "ratio": dequantized / tiles,
                            "vnni_tiles_us": vnni, "dispatch": dispatch})
            vnni_text = f", VNNI tiles {vnni:8.0f} us" if has_vnni else ""
            print(f"K={in_features:5d} N={out_features:5d} rows={rows:4d}: int8 tiles {tiles:8.0f} us, "
                  f"weight-only {dequantized:8.0f} us, ratio {dequantized / tiles:.2f}{vnni_text}", flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": f"python bench/bench_int_paths.py --repeats {args.repeats} --out {args.out}",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
              "kernel_backend": kernels.kernel_backend(), "kernel_isa": kernels.kernel_isa(), "results": results}
    with open(args.out, "w") as f: json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
