"""Time what a quantized Linear layer adds on top of its kernel, at batch 1.

A layer's forward can call the C++ operator with its own tensors (`kernels._weight_only_direct`,
`kernels._int8_act_direct`) or go through the public function that checks and converts every argument
(`kernels.linear_int4`, `linear_int8`, `linear_int8_dynamic`). This script times,
in one round-robin loop per layer, the bare operator, the public function, and the module's forward with and without
the direct path, and writes the medians to `bench/results/call_overhead.json`:

    python bench/bench_call_overhead.py [--rounds 40] [--out bench/results/call_overhead.json]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

from mono_quant import kernels
from mono_quant.int4 import QuantizedLinearInt4
from mono_quant.modules import QuantizedLinear

SHAPES = [(4096, 4096), (384, 384)]  # (in_features, out_features)


def checked_forward(layer, x):
    "Run the module's forward with the direct paths switched off, as every call ran before they existed."
    weight_only, int8_act = kernels._weight_only_direct, kernels._int8_act_direct
    kernels._weight_only_direct = kernels._int8_act_direct = lambda *args: None
    try:
        return layer(x)
    finally:
        kernels._weight_only_direct, kernels._int8_act_direct = weight_only, int8_act


def layer_calls(layer, x):
    "Return the ways to run `layer` on `x`: bare operator, public function, module forward with and without the direct path."
    ops = kernels._kernel_ops()
    out_features, in_features = layer.out_features, layer.in_features
    path, block_rows = kernels._weight_only_path(x.shape[0]), kernels._block_rows(in_features)
    if isinstance(layer, QuantizedLinearInt4):
        group = layer.group_size or in_features
        scale = layer.scale.view(out_features, -1)
        return {"operator": lambda: ops.int4_weight_only(x, layer.qweight, scale, None, layer.bias, group, path,
                                                         block_rows),
                "checked function": lambda: kernels.linear_int4(x, layer.qweight, layer.scale, None, layer.bias,
                                                                in_features=in_features, group_size=layer.group_size),
                "module": lambda: layer(x), "module, checked path": lambda: checked_forward(layer, x)}
    if layer.activations == "dynamic":
        kernel = kernels._int_kernel(x.shape[0], kernels.kernel_isa() == "avx512-vnni")
        return {"operator": lambda: ops.int8_act_int8(x, layer.qweight, layer.scale, None, layer.bias, -1.0, 0, -128,
                                                      127, kernel),
                "checked function": lambda: kernels.linear_int8_dynamic(x, layer.qweight, layer.scale, None, layer.bias),
                "module": lambda: layer(x), "module, checked path": lambda: checked_forward(layer, x)}
    scale = layer.scale.view(out_features, 1)
    return {"operator": lambda: ops.int8_weight_only(x, layer.qweight, scale, None, layer.bias, in_features, path,
                                                     block_rows),
            "checked function": lambda: kernels.linear_int8(x, layer.qweight, layer.scale, None, layer.bias),
            "module": lambda: layer(x), "module, checked path": lambda: checked_forward(layer, x)}


def round_robin(calls, rounds: int) -> dict:
    "Median over `rounds` of the fastest of 5 back-to-back calls, per variant, in microseconds."
    best = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(5):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            best[name].append(min(times))
    return {name: 1e6 * statistics.median(values) for name, values in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="round-robin rounds per layer")
    parser.add_argument("--out", default="bench/results/call_overhead.json", help="where to write the JSON results")
    args = parser.parse_args()

    if kernels.kernel_backend() != "avx2":
        raise SystemExit(f"bench_call_overhead.py needs the C++ kernels, but the backend is {kernels.kernel_backend()}. "
                         "Install g++ and ninja, and unset MONO_QUANT_KERNELS.")
    torch.manual_seed(0)
    results = []
    for in_features, out_features in SHAPES:
        linear = torch.nn.Linear(in_features, out_features)
        layers = {"int4 g128": QuantizedLinearInt4.from_float(linear, group_size=128),
                  "int8 per-channel": QuantizedLinear.from_float(linear),
                  "int8 dynamic": QuantizedLinear.from_float(linear, activations="dynamic")}
        x = torch.randn(1, in_features)
        for label, layer in layers.items():
            with torch.no_grad():
                medians = round_robin(layer_calls(layer, x), args.rounds)
            row = {"in_features": in_features, "out_features": out_features, "layer": label,
                   **{f"{name} us": value for name, value in medians.items()},
                   "module over operator us": medians["module"] - medians["operator"],
                   "checked module over operator us": medians["module, checked path"] - medians["operator"]}
            results.append(row)
            print(f"{label:16s} {in_features:5d}x{out_features:<5d} " +
                  "  ".join(f"{name} {value:8.1f} us" for name, value in medians.items()))

    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python bench/bench_call_overhead.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
           "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "loadavg": os.getloadavg()},
           "timing": "median over round-robin rounds of the fastest of 5 back-to-back calls, batch 1, float32 input",
           "results": results}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f: json.dump(out, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
