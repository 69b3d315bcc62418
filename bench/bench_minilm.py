"""Benchmark mono-quant on the bundled all-MiniLM-L6-v2: latency at batch 1 and 8 (32 tokens), quantization time,
model size and embedding similarity, against the float model, torch.ao's quantize_dynamic and optimum-quanto if installed.

Run from the repository root:

    python bench/bench_minilm.py [--repeats 30] [--out bench/results/minilm.json]

Every latency is the median of `--repeats` timed forward passes after 3 warm-up rounds, all in one process. The
variants take turns, so that a change in the machine's load affects them alike. Each turn runs one untimed forward
before the timed one, which brings the variant's weights back into cache, as for a model that serves one request after
another. The quantization time is the median of 3 builds, as wall time and as CPU time of this process (less affected by other load).
`bytes` is mono_quant's model_size of the parameters and buffers. It is null for torch.ao, because its packed weights
are neither, so compare `saved_bytes` (the size of the saved state_dict) across libraries.
"""
import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared sentences and pooling live next to the MiniLM test

from minilm_data import CALIBRATION_SENTENCES, SENTENCES, embed, load_minilm, mean_cosine  # noqa: E402

from mono_quant import kernels  # noqa: E402
from mono_quant.quantize import model_size, quantize  # noqa: E402

SEQUENCE_LENGTH = 32
BATCH_SIZES = (1, 8)


def round_robin_seconds(models: dict, inputs: dict, repeats: int, warmup: int = 3) -> dict:
    "Median wall time of one forward of each model on `inputs`, the models taking turns, after `warmup` rounds."
    times = {name: [] for name in models}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, model in models.items():  # one turn per model and round
                model(**inputs)  # untimed: brings this model's weights back into cache after the other models
                start = time.perf_counter()
                model(**inputs)
                if round_ >= warmup: times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fixed_length_batch(tokenizer, sentences):
    "Tokenize `sentences` padded or truncated to exactly SEQUENCE_LENGTH tokens."
    return tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQUENCE_LENGTH, return_tensors="pt")


def build_variants(model, tokenizer):
    "Return {name: zero-argument function that builds the variant}; each build is timed as the quantization time."
    calibration = [tokenizer(CALIBRATION_SENTENCES[i:i + 8], padding=True, return_tensors="pt") for i in (0, 8)]

    def torch_ao(qconfig):
        def build():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in recent torch releases
                return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
        return build

    def ours(**kwargs):
        if "calibration_data" in kwargs: kwargs["progress"] = False
        return lambda: quantize(model, sqnr_threshold=None, **kwargs).model

    variants = {
        "float32": lambda: model,
        "mono-quant int8 weight-only": ours(bits=8),
        "mono-quant int8 dynamic activations": ours(bits=8, activations="dynamic"),
        "mono-quant int8 static (minmax, 16 sentences)": ours(calibration_data=calibration),
        "mono-quant int4 group 128 symmetric": ours(bits=4, group_size=128),
        "mono-quant int4 group 128 asymmetric": ours(bits=4, group_size=128, symmetric=False),
        "mono-quant fp16": ours(bits=16),
        "torch.ao quantize_dynamic int8 per-tensor": torch_ao(default_dynamic_qconfig),
        "torch.ao quantize_dynamic int8 per-channel": torch_ao(per_channel_dynamic_qconfig),
    }
    quanto = quanto_variant(model)
    if quanto is not None:
        variants["optimum-quanto int8 weights"] = quanto
    return variants


def quanto_variant(model):
    "Return a builder for optimum-quanto's int8 weight quantization, or None when the package is not installed."
    try:
        from optimum.quanto import freeze, qint8
        from optimum.quanto import quantize as quanto_quantize
    except ImportError:
        return None

    def build():
        import copy

        q = copy.deepcopy(model)
        quanto_quantize(q, weights=qint8)
        freeze(q)
        return q

    return build


def saved_bytes(model) -> int:
    "Size of `torch.save(model.state_dict())`, which also counts torch.ao's packed weights (not parameters or buffers)."
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def measure(name, build, reference, batches):
    "Build one variant (timed, median of 3) and measure its size and similarity to the float model; return both."
    build_times, build_cpu_times = [], []
    for _ in range(1 if name == "float32" else 3):
        start, start_cpu = time.perf_counter(), time.process_time()
        variant = build()
        build_times.append(time.perf_counter() - start)
        build_cpu_times.append(time.process_time() - start_cpu)
    packed = any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in variant.modules())
    quantized = name != "float32"
    row = {"variant": name, "quantize_seconds": statistics.median(build_times) if quantized else None,
           "quantize_cpu_seconds": statistics.median(build_cpu_times) if quantized else None,
           "bytes": None if packed else model_size(variant), "saved_bytes": saved_bytes(variant)}
    row["mean_cosine"] = mean_cosine(embed(variant, batches["similarity"]), reference)
    return row, variant


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per variant and batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "minilm.json", help="JSON output file")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    model, tokenizer = load_minilm()
    batches = {size: fixed_length_batch(tokenizer, SENTENCES[:size]) for size in BATCH_SIZES}
    batches["similarity"] = tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    reference = embed(model, batches["similarity"])

    variants = build_variants(model, tokenizer)
    rows, models = [], {}
    for name, build in variants.items():
        row, models[name] = measure(name, build, reference, batches)
        rows.append(row)
    for size in BATCH_SIZES:  # every variant in one round-robin loop per batch size
        seconds = round_robin_seconds(models, batches[size], args.repeats)
        for row in rows: row[f"batch{size}_ms"] = 1000 * seconds[row["variant"]]
    skipped = {} if "optimum-quanto int8 weights" in variants else {"optimum-quanto": "not installed"}

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    # other processes on the machine slow every timing; the load average shows how busy it was
                    "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]}},
        "torch": torch.__version__,
        "kernel_backend": kernels.kernel_backend(),
        "kernel_isa": kernels.kernel_isa(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "sequence_length": SEQUENCE_LENGTH,
        "repeats": args.repeats,
        "results": rows,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'variant':48} {'quantize s':>10} {'cpu s':>6} {'saved MiB':>9} {'cosine':>9} {'b1 ms':>7} {'b8 ms':>7}")
    for r in rows:
        seconds = "-" if r["quantize_seconds"] is None else f"{r['quantize_seconds']:.2f}"
        cpu = "-" if r["quantize_cpu_seconds"] is None else f"{r['quantize_cpu_seconds']:.2f}"
        print(f"{r['variant']:48} {seconds:>10} {cpu:>6} {r['saved_bytes'] / 2**20:9.1f} {r['mean_cosine']:9.6f} "
              f"{r['batch1_ms']:7.2f} {r['batch8_ms']:7.2f}")
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
