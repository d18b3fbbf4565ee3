"""Checks of a built book (imported as ``booksite``): links and images resolve, nothing loads from the network,
and in headless Chromium every page loads without a console error."""
import functools
import html.parser
import http.server
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.loads, self.links = [], []          # what the page loads (scripts, styles, images) / where it links

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source") and a.get("src"):
            self.loads.append(a["src"])
        if tag == "link" and a.get("href") and a.get("rel") in ("stylesheet", "preload", "icon", "modulepreload"):
            self.loads.append(a["href"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def pages(site):
    """The site's pages (not the theme's templates under _static)."""
    return [p for p in sorted(Path(site).rglob("*.html")) if not p.relative_to(site).parts[0].startswith("_")]


def broken(site):
    """(page, reference, why) for every load from the network and every local link or load that resolves to no file."""
    site, found = Path(site), []
    for page in pages(site):
        refs = _Refs()
        refs.feed(page.read_text(errors="replace"))
        for ref in refs.loads + refs.links:
            url = urlsplit(ref)
            if url.scheme in ("http", "https") or ref.startswith("//"):
                if ref in refs.loads:
                    found.append((page.relative_to(site), ref, "loaded from the network"))
                continue
            if url.scheme or not url.path:          # mailto:, javascript:, a fragment of this page
                continue
            target = (page.parent / unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                found.append((page.relative_to(site), ref, "no such file"))
    return found


class Served:
    """The site over HTTP on loopback, in a thread (as a reader's static host serves it)."""

    def __init__(self, site):
        handler = functools.partial(_Quiet, directory=str(site))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


LOADED = "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
RESOURCES = "return performance.getEntriesByType('resource').map(e => e.name)"
BAD_IMAGES = ("return Array.from(document.images).filter(i => i.naturalWidth === 0 && i.offsetParent !== null)"
              ".map(i => i.src)")


def wait(drv, script, seconds=30):
    """Poll a script in the page until it is true (bounded)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if drv.execute_script(script):
            return True
        time.sleep(0.2)
    return False


def load_every_page(drv, site, base):
    """Open each page; (page, problem) for console errors, broken images and requests that left the site."""
    problems = []
    drv.get_log("browser")
    for page in pages(site):
        rel = page.relative_to(site).as_posix()
        drv.get(base + rel)
        if not wait(drv, LOADED):
            problems.append((rel, "did not finish loading"))
        time.sleep(0.3)
        problems += [(rel, f"console: {e['message'][:300]}") for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        problems += [(rel, f"image did not load: {src}") for src in drv.execute_script(BAD_IMAGES)]
        problems += [(rel, f"request left the site: {u}") for u in drv.execute_script(RESOURCES)
                     if not u.startswith(base) and not u.startswith("data:")]
    return problems
