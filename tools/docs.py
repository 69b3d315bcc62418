"""Build the documentation pages and README.md from the notebooks without Quarto.

`nbdev_docs` renders the site with Quarto, which cannot be installed on every machine. This script produces the same
pages from the same sources in three steps:

1. Execute each notebook in a copy of `nbs/` with nbclient, so every page shows its outputs and plots. Executing comes
   first because nbdev's processors drop `#| hide` cells, and the visible cells rely on what the hidden ones import.
2. Apply nbdev's processors (show_doc, hidden cells, directives) with `nbdev.serve.proc_nbs`, the function behind
   `nbdev_proc_nbs`. That command first tries to download Quarto when it is missing, so it is not called directly.
3. Convert each processed notebook with nbconvert: HTML pages into `_docs_html/`, and `index` into `README.md`.

Usage: `python tools/docs.py readme` or `python tools/docs.py html [NOTEBOOK ...]`.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def execute_copy(names, dest: Path, timeout: int = 1200) -> None:
    "Copy `nbs/` to `dest` and execute the notebooks in `names` there, keeping their outputs."
    shutil.copytree(NBS, dest, symlinks=False, dirs_exist_ok=True)
    # The benchmarks page reads ../bench/results relative to the notebooks, as it does in the repository.
    shutil.copytree(ROOT / "bench" / "results", dest.parent / "bench" / "results", dirs_exist_ok=True)
    for name in names:
        path = dest / name
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:  # nbdev's `#| eval: false` cells are shown but never run, as in nbdev_test
            if cell.cell_type == "code" and re.search(r"^#\|\s*eval:\s*false", cell.source, re.M):
                cell.metadata.setdefault("tags", []).append("skip-execution")
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(dest)}}).execute()
        nbformat.write(nb, path)


def process(src: Path) -> Path:
    "Apply nbdev's documentation processors to the notebooks in `src`; return the `_proc` folder."
    from nbdev.serve import proc_nbs

    return Path(proc_nbs(path=str(src), force=True, n_workers=0))


def _title_from_front_matter(text: str) -> str:
    "Turn Quarto front matter into a Markdown heading and summary line, as Quarto does for a README."
    import yaml

    meta = yaml.safe_load(text.strip().strip("-")) or {}
    title = meta.get("title", "")
    return f"# {title}\n\n> {meta['description']}" if meta.get("description") else f"# {title}"


NOTEBOOK_LINK = re.compile(r"\]\(([\w.-]+\.ipynb(?:#[\w-]*)?)\)")  # a relative link to a notebook, e.g. ](03_int4.ipynb)
ATTRIBUTES = re.compile(r"\{(target|style|\.)[^}]*\}")  # Quarto link and span attributes, e.g. {target="_blank"}


def apply_quarto_directives(nb) -> None:
    "Carry out the Quarto cell options that nbdev's processors leave for Quarto: `echo: false` and `output: asis`."
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        lines = cell.source.splitlines()
        options = dict(line[3:].split(":", 1) for line in lines if line.startswith("#| ") and ":" in line)
        options = {k.strip(): v.strip() for k, v in options.items()}
        cell.source = "\n".join(line for line in lines if not line.startswith("#| "))
        if options.get("output") == "asis":
            text = "".join("".join(o.get("data", {}).get("text/markdown", o.get("text", ""))) for o in cell.outputs)
            cells.append(nbformat.v4.new_markdown_cell(ATTRIBUTES.sub("", text.replace("\n---\n", "\n"))))
            continue
        if options.get("echo") == "false":
            cell.metadata.setdefault("tags", []).append("remove_input")
        cells.append(cell)
    nb.cells = cells


def mathjax_url() -> str:
    "Return a local MathJax bundle when one is installed (pages are checked offline), else nbconvert's default CDN."
    local = ROOT / ".cache" / "mathjax" / "node_modules" / "mathjax" / "MathJax.js"
    config = "?config=TeX-AMS_CHTML-full,Safe"
    return local.as_uri() + config if local.exists() else "https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js" + config


def convert(nb_path: Path, exporter: str, out_path: Path) -> None:
    "Convert one processed notebook to `exporter` format ('html' or 'markdown') at `out_path`, with its images."
    from nbconvert import HTMLExporter, MarkdownExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(nb_path, as_version=4)
    apply_quarto_directives(nb)
    front = [c for c in nb.cells if c.cell_type == "raw"]
    nb.cells = [c for c in nb.cells if c.cell_type != "raw"]  # Quarto front matter; nbconvert would print it as text
    if front and exporter == "markdown":
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(_title_from_front_matter(front[0].source)))
    exp = HTMLExporter(embed_images=True, mathjax_url=mathjax_url()) if exporter == "html" else MarkdownExporter()
    exp.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}), enabled=True)
    body, resources = exp.from_notebook_node(nb)
    if exporter == "markdown":  # README.md sits at the top of the repository, the notebooks one level down in nbs/
        body = NOTEBOOK_LINK.sub(r"](nbs/\1)", body)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for name, data in resources.get("outputs", {}).items():
        (out_path.parent / name).write_bytes(data)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, out_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=["readme", "html"], help="what to build")
    parser.add_argument("notebooks", nargs="*", help="notebook file names in nbs/ (default: all)")
    args = parser.parse_args(argv)
    names = ["index.ipynb"] if args.target == "readme" else (args.notebooks or sorted(p.name for p in NBS.glob("*.ipynb")))
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend must draw the figures into the page
    with tempfile.TemporaryDirectory(prefix="mono-quant-docs-") as tmp:
        exec_dir = Path(tmp) / "nbs"
        execute_copy(names, exec_dir)
        proc = process(exec_dir)
        if args.target == "readme":
            convert(proc / "index.ipynb", "markdown", ROOT / "README.md")
        else:
            for name in names:
                convert(proc / name, "html", ROOT / "_docs_html" / name.replace(".ipynb", ".html"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
