#!/usr/bin/env bash
# Run every check of the project: install with the dev extras, confirm that the package matches the notebooks, run the
# notebooks as tests, run the pytest suite, then render the docs pages and check them in Chromium. Stops at the first failure.

set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

python -m pip install --quiet -e ".[dev]"

echo "== nbdev_export: the package must match the notebooks"
nbdev_export
if ! git diff --quiet -- mono_quant || [ -n "$(git ls-files --others --exclude-standard mono_quant)" ]; then
    git status --short mono_quant
    echo "mono_quant/ differs from the notebooks: run nbdev_export and commit the result." >&2
    exit 1
fi

echo "== nbdev_test: every notebook"
nbdev_test --do_print

echo "== pytest"
python -m pytest tests -q -p no:cacheprovider

echo "== docs: render every notebook to HTML and check the pages in headless Chromium"
python tools/check_docs.py --screenshot 20_tutorial_minilm --expect-images 00_scheme=3 01_kernels=1 03_int4=1 04_observers=2 20_tutorial_minilm=3 30_benchmarks=1
