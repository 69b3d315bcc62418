"""Time the paths of the integer-activation layers against each other and against fbgemm on one CPU.

`linear_int8_dynamic` multiplies int8 activation codes by int8 weights in its own kernels: the AVX2 tiles, or, on a
CPU with AVX-512 VNNI, the VNNI tiles or the VNNI broadcast kernel. For many rows of a short input on a CPU without
VNNI, it dequantizes the activation codes and calls the weight-only kernel instead. This script times each path and
torch.ao's `quantize_dynamic` Linear (fbgemm) for each shape and row count, in one process, and writes the medians to
`bench/results/int_paths.json`. The paths take turns, so that a change in the machine's load affects them alike. Each
turn makes one untimed call before the timed one, which brings the path's weight back into cache:

    python bench/bench_int_paths.py [--repeats 30] [--out bench/results/int_paths.json]
"""
import argparse
import datetime
import json
import os
import statistics
import time
import warnings

import torch

from mono_quant import kernels
from mono_quant.scheme import quantize_weight

SHAPES = [(384, 384), (384, 1536), (1536, 384), (4096, 4096), (4096, 11008)]  # (in_features, out_features)
ROWS = [4, 8, 12, 16, 32, 64, 256]


def round_robin_us(paths: dict, repeats: int) -> dict:
    "Median wall time in microseconds of each `paths[name]()`, calling the paths in turn, after 3 untimed rounds."
    times = {name: [] for name in paths}
    for round_ in range(repeats + 3):
        for name, fn in paths.items():  # one turn per path and round
            fn()  # untimed: brings this path's weight back into cache (fbgemm keeps its own copy)
            start = time.perf_counter()
            fn()
            if round_ >= 3: times[name].append(time.perf_counter() - start)
    return {name: 1e6 * statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per path and shape")
    parser.add_argument("--out", default="bench/results/int_paths.json", help="where to write the JSON results")
    args = parser.parse_args()
    torch.manual_seed(0)
    has_vnni = kernels.kernel_isa() == "avx512-vnni"
    results = []
    for in_features, out_features in SHAPES:
        layer = torch.nn.Linear(in_features, out_features)
        qw = quantize_weight(layer.weight.detach(), 8)
        with warnings.catch_warnings():  # hides torch.ao's deprecation warning
            warnings.simplefilter("ignore")
            fbgemm = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear},
                                                            dtype=torch.qint8)
        for rows in ROWS:
            x = torch.randn(rows, in_features)

            def via_float():
                codes, act_scale = kernels._quantize_activations(x)
                return kernels.linear_int8(codes * act_scale, qw.data, qw.scale, None, layer.bias)

            def int_kernel(kernel):
                return kernels._kernel_ops().int8_act_int8(x, qw.data, qw.scale, None, layer.bias, -1.0, 0, -128,
                                                           127, kernel)

            paths = {"int8_tiles_us": lambda: int_kernel(kernels._INT_AVX2), "weight_only_us": via_float,
                     "fbgemm_us": lambda: fbgemm(x)}
            if has_vnni:
                paths["vnni_tiles_us"] = lambda: int_kernel(kernels._INT_VNNI_TILES)
                paths["vnni_broadcast_us"] = lambda: int_kernel(kernels._INT_VNNI_BROADCAST)
            with torch.inference_mode():
                times = round_robin_us(paths, args.repeats)
            if has_vnni:
                dispatch = {kernels._INT_VNNI_TILES: "vnni tiles", kernels._INT_VNNI_BROADCAST: "vnni broadcast"}[
                    kernels._int_kernel(rows, True)]
            else: dispatch = "weight-only" if kernels._int_act_via_float(rows, in_features) else "int8 tiles"
            results.append({"in_features": in_features, "out_features": out_features, "rows": rows, **times,
                            "dispatch": dispatch})
            print(f"K={in_features:5d} N={out_features:5d} rows={rows:4d}: "
                  + ", ".join(f"{name[:-3]} {t:8.0f} us" for name, t in times.items()) + f" -> {dispatch}", flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": f"python bench/bench_int_paths.py --repeats {args.repeats} --out {args.out}",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
              "kernel_backend": kernels.kernel_backend(), "kernel_isa": kernels.kernel_isa(), "results": results}
    with open(args.out, "w") as f: json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
