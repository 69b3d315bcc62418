"""Render every notebook to HTML and check the pages in headless Chromium.

The check runs on Debian's `chromium` package (`apt-get install chromium`); no test tool downloads a browser. For each
page it loads a copy with a small probe script that records, after the `load` event, how many images the page has and how
many decoded to a non-zero size, then reads that back from Chromium's `--dump-dom` output. It also takes a screenshot of
each page named with `--screenshot` and fails when the screenshot is blank.

Usage: `python tools/check_docs.py [--skip-build] [--screenshot PAGE ...] [--expect-images PAGE=N ...]`.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_docs_html"
PROBE = """<script>
function monoQuantProbe() {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-img-total', imgs.length);
  document.body.setAttribute('data-img-ok', ok);
  document.body.setAttribute('data-math', document.querySelectorAll('.MathJax_CHTML, mjx-container').length);
}
// MathJax typesets after the load event, so the count waits for its queue when MathJax is present.
window.addEventListener('load', () => {
  if (window.MathJax && window.MathJax.Hub) { window.MathJax.Hub.Queue(monoQuantProbe); } else { monoQuantProbe(); }
});
</script>"""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=5000"]


def install_chromium() -> None:
    "Install Debian's chromium package when it is missing and apt-get is usable (CI runs as root)."
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit("chromium not found: install Debian's package with `apt-get install -y chromium`.")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def chromium(args, profile: Path) -> subprocess.CompletedProcess:
    "Run headless Chromium with a fresh profile folder and no network features."
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def install_mathjax() -> None:
    "Install MathJax 2 (the version nbconvert's templates configure) from the npm registry into .cache/mathjax, so pages render their math offline."
    target = ROOT / ".cache" / "mathjax"
    if (target / "node_modules" / "mathjax" / "MathJax.js").exists():
        return
    if shutil.which("npm") is None:
        print("npm not found: pages keep the MathJax CDN link, so math is not rendered offline.", file=sys.stderr)
        return
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(target), "mathjax@2.7.9"], check=True)


def count_images(page: Path, profile: Path) -> tuple[int, int, int]:
    "Return (images on the page, images that decoded, rendered math elements) for one HTML page."
    probe = page.with_name(page.stem + ".probe.html")
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    try:
        dom = chromium(["--dump-dom", probe.as_uri()], profile).stdout
    finally:
        probe.unlink()
    found = [re.search(rf'data-{key}="(\d+)"', dom) for key in ("img-total", "img-ok", "math")]
    if not all(found):
        raise SystemExit(f"{page.name}: the probe did not run; Chromium printed no result.")
    return tuple(int(m.group(1)) for m in found)


def screenshot(page: Path, out: Path, profile: Path) -> float:
    "Save a screenshot of `page` to `out`; return the fraction of pixels that are not near-white."
    from PIL import Image

    chromium([f"--screenshot={out}", "--window-size=1280,4000", page.as_uri()], profile)
    if not out.exists():
        raise SystemExit(f"{page.name}: Chromium wrote no screenshot to {out}.")
    gray = Image.open(out).convert("L")
    histogram = gray.histogram()  # 256 bins of pixel counts
    return sum(histogram[:235]) / (gray.width * gray.height)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-build", action="store_true", help="check the pages already in _docs_html/")
    parser.add_argument("--screenshot", nargs="*", default=[], help="page names (without .html) to screenshot")
    parser.add_argument("--expect-images", nargs="*", default=[], metavar="PAGE=N",
                        help="minimum number of rendered images a page must contain")
    args = parser.parse_args(argv)

    install_chromium()
    install_mathjax()
    if not args.skip_build:
        subprocess.run([sys.executable, str(ROOT / "tools" / "docs.py"), "html"], check=True)

    expected = dict(item.split("=") for item in args.expect_images)
    failures = []
    with tempfile.TemporaryDirectory(prefix="mono-quant-chromium-") as profile:
        for page in sorted(HTML.glob("*.html")):
            total, ok, math = count_images(page, Path(profile))
            print(f"{page.name}: {ok}/{total} images rendered, {math} formulas typeset")
            if ok < total:
                failures.append(f"{page.name}: {total - ok} image(s) did not render")
            if ok < int(expected.get(page.stem, 0)):
                failures.append(f"{page.name}: expected at least {expected[page.stem]} images, found {ok}")

        shots = HTML / "screenshots"
        shots.mkdir(exist_ok=True)
        for name in args.screenshot:
            ink = screenshot(HTML / f"{name}.html", shots / f"{name}.png", Path(profile))
            print(f"{name}.png: {ink:.1%} of pixels carry content")
            if ink < 0.01:
                failures.append(f"{name}.png is blank")

    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
