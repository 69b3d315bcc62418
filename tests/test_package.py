"""Checks of the installed package as a whole: metadata and the public names each module exports."""
import importlib

import mono_quant


def test_version_matches_settings():
    from configparser import ConfigParser
    from pathlib import Path

    cfg = ConfigParser(delimiters=["="])
    cfg.read(Path(__file__).resolve().parent.parent / "settings.ini")
    assert mono_quant.__version__ == cfg["DEFAULT"]["version"]


def test_scheme_exports():
    scheme = importlib.import_module("mono_quant.scheme")
    for name in ("qrange", "calculate_qparams", "quantize_weight", "sqnr", "to_fp16"):
        assert name in scheme.__all__, name
