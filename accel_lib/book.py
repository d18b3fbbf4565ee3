"""`make book`: a static HTML site of an executed series (Jupyter Book 1.x), the README as its landing page.

The notebooks are not executed again, nothing is fetched while it builds, and no page loads anything from the network
(no MathJax, no widget manager from a CDN; widgets show their text form).
"""
from __future__ import annotations

import json
import shutil
import time
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML = "html"                # OUT/html/index.html: the site
BUILD_SECONDS = 900
TITLE = "accel_lib: deploying an image model to FPGA accelerators"

CONFIG = {
    "title": TITLE,
    "author": "accel_lib",
    "only_build_toc_files": True,
    "execute": {"execute_notebooks": "off"},
    "parse": {"myst_enable_extensions": ["colon_fence"]},         # no dollarmath: nothing needs MathJax
    "html": {"use_repository_button": False, "use_issues_button": False, "use_edit_page_button": False,
             "use_multitoc_numbering": False, "home_page_in_navbar": True},
    "launch_buttons": {"notebook_interface": "classic", "binderhub_url": "", "jupyterhub_url": "",
                       "thebe": False, "colab_url": ""},
    "sphinx": {"config": {
        "nb_ipywidgets_js": {},                                    # the widget manager comes from a CDN: off
        "nb_mime_priority_overrides": [["html", "application/vnd.jupyter.widget-view+json", -1],
                                       ["html", "text/latex", -1]],
        "html_show_sourcelink": False,
        "html_show_copyright": False,
        "suppress_warnings": ["mystnb.unknown_mime_type"],
    }},
}


def executed_notebooks(folder) -> list[Path]:
    """The executed notebooks of a series run (NN-name.ipynb), in order; an error says how to make them."""
    found = sorted(Path(folder).glob("[0-9][0-9]-*.ipynb"))
    bad = []
    for p in found:
        nb = json.loads(p.read_text())
        if not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"):
            bad.append(f"{p.name} has no outputs")
        elif nb.get("metadata", {}).get("papermill", {}).get("exception"):
            bad.append(f"{p.name} stopped on an error")
    if not found or bad:
        raise SystemExit(f"no executed series in {folder}" + (f" ({'; '.join(bad)})" if bad else "")
                         + ": run `make tutorial` first (the book shows its outputs and does not run them)")
    return found


def _yaml(data) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)


def source(notebooks, src, readme=ROOT / "README.md"):
    """Write the book's sources: _config.yml, _toc.yml, the README as index.md, the notebooks as they ran."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / "index.md").write_text(Path(readme).read_text())
    for p in notebooks:
        shutil.copy(p, src / "notebooks" / p.name)
    (src / "_config.yml").write_text(_yaml(CONFIG))
    toc = {"format": "jb-book", "root": "index",
           "parts": [{"caption": "The executed series", "chapters": [{"file": f"notebooks/{p.stem}"}
                                                                     for p in notebooks]}]}
    (src / "_toc.yml").write_text(_yaml(toc))
    return src


# conf.py after `jupyter-book config sphinx`: the extensions that reach the network or add nothing offline go
# (thebe and comments load from a CDN, intersphinx fetches inventories, the LaTeX helper is for PDFs)
DROPPED = ("sphinx_thebe", "sphinx_comments", "sphinx.ext.intersphinx", "sphinx_jupyterbook_latex")
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#1f4e79"/><path d="M3 4h10v2H3zm0 3h10v2H3zm0 3h10v2H3z" fill="#fff"/></svg>')
OVERRIDES = f"""
extensions = [e for e in extensions if e not in {DROPPED!r}]
html_favicon = "favicon.svg"
html_context = {{"default_mode": "light"}}
"""


def build(notebooks_dir, out, readme=ROOT / "README.md", strict=False, show=False) -> Path:
    """Build the site into OUT/html from a folder of executed notebooks; returns the index page."""
    out = Path(out).resolve()
    notebooks = executed_notebooks(notebooks_dir)
    src = source(notebooks, out / "src", readme)
    (src / "favicon.svg").write_text(FAVICON)
    bin_dir = Path(sys.executable).parent
    r = subprocess.run([str(bin_dir / "jupyter-book"), "config", "sphinx", str(src)], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"jupyter-book config sphinx failed:\n{(r.stdout + r.stderr)[-3000:]}")
    with open(src / "conf.py", "a") as conf:
        conf.write(OVERRIDES)
    site = out / HTML
    shutil.rmtree(site, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-d", str(out / "doctrees"), str(src), str(site)]
    with open(out / "build.log", "w") as log:
        proc = subprocess.Popen(cmd + (["-W", "--keep-going"] if strict else []), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BUILD_SECONDS
        while proc.poll() is None:                      # a dot every 2 s, within a bound
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"the book did not build within {BUILD_SECONDS} s; see {out / 'build.log'}")
            time.sleep(2)
            if show and proc.poll() is None:
                print(".", end="", flush=True)
    text = (out / "build.log").read_text()
    if proc.returncode != 0 or not (site / "index.html").exists():
        raise RuntimeError(f"the book did not build (exit {proc.returncode}):\n{text[-4000:]}")
    return site / "index.html"


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m accel_lib.book", description=__doc__.splitlines()[0])
    p.add_argument("--notebooks", default="build/tutorial/notebooks", help="the executed notebooks (make tutorial's)")
    p.add_argument("--out", default="build/book")
    args = p.parse_args(argv)
    print(f"Building the book from {args.notebooks} ", end="", flush=True)
    index = build(args.notebooks, args.out, show=True)
    print(f"\nBook: {index}\nOpen it in a browser (file://{index}); it needs no server and no network.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
