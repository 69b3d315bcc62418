"""QuantizationResult.save writes through mono_quant.serialization, which is built after the quantize module."""
import torch
from torch import nn

from mono_quant.quantize import QuantizedLinear, quantize
from mono_quant.serialization import load_model


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def test_result_save_compact_round_trip(tmp_path):
    result = quantize(small_mlp(), calibration_data=[torch.randn(8, 16)])
    path = result.save(tmp_path / "mlp.safetensors", native=False)
    loaded = load_model(path, small_mlp(seed=1))
    assert isinstance(loaded[0], QuantizedLinear)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_result_save_defaults_to_compact(tmp_path):
    from safetensors import safe_open
    result = quantize(small_mlp())
    path = result.save(tmp_path / "mlp.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["layout"] == "compact"
        assert f.get_slice("0.qweight").get_dtype() == "I8"
    assert isinstance(load_model(path, small_mlp(seed=1))[0], QuantizedLinear)


def test_result_save_native_loads_into_float_model(tmp_path):
    result = quantize(small_mlp(), bits=4, group_size=8)
    path = result.save(tmp_path / "mlp.safetensors", native=True)
    loaded = load_model(path, small_mlp(seed=1))
    assert type(loaded[0]) is nn.Linear
    expected = result.model[0].dequantize_weight(torch.float32)
    assert torch.equal(loaded[0].weight, expected)


def test_result_unpacks_as_model_and_info():
    model, info = quantize(small_mlp())
    assert [layer.name for layer in info.layers] == ["0", "2"]
    assert isinstance(model[2], QuantizedLinear)
