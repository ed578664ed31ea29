"""The documentation site, as a reader's browser shows it.

Builds the site as `make docs` does (nbs/_mkdocs/build.py -> _site/; unchanged notebooks come from the
cache in _proc/), serves _site/ on 127.0.0.1 and loads every page in headless Chromium (Debian's
`chromium` package), driven over the DevTools protocol, one browser for all pages. A page passes when
it loads (HTTP 200, its <h1> and title), a notebook page has its headings and the API entries of what
its notebook exports, every figure stored in the notebook is an <img> that decodes, no image is broken,
no page shows error text (a Python traceback, an error or exception line in a cell's output, MkDocs'
404 page), no script throws, no page asks for anything but the site itself (it works offline), and
MathJax typesets without an error. MathJax runs on the 3 smallest pages with math and is blocked on
the others: typesetting every formula of every page takes minutes on 2 cores (DOCS_CHECK_MATH=all
typesets all, DOCS_CHECK_MATH=N the N smallest). Two tabs load pages in parallel. A screenshot of the
home page lands in _proc/check/index.png.

Without Chromium the tests skip: `apt-get install -y chromium` (.ci/run does it).
"""
import base64
import http.server
import json
import os
import resource
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE, PROC = ROOT / "_site", ROOT / "_proc"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="the docs check needs headless Chromium: apt-get install -y chromium (Debian's package)")

FIGURE_MIMES = ("image/png", "image/jpeg", "image/gif")
TABS = max(1, min(2, os.cpu_count() or 1))
MATH_PAGES = os.environ.get("DOCS_CHECK_MATH", "3")  # pages whose math MathJax typesets in the check
NO_MATHJAX = ["*/assets/mathjax/*", "*/assets/mathjax-config.js"]
ERROR_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception)\b:", re.M)

READY_JS = """(() => {
  if (document.readyState !== 'complete') return false;
  const M = window.MathJax;
  if (!M) return true;
  if (!M.Hub || !M.isReady) return false;              // MathJax.js still loading or starting
  return M.Hub.queue.pending === 0 && M.Hub.queue.running === 0;
})()"""

INFO_JS = """(() => {
  const q = (s, r) => Array.from((r || document).querySelectorAll(s));
  const art = document.querySelector('article') || document.body;
  const img = i => ({src: (i.getAttribute('src') || '').slice(0, 40), len: (i.getAttribute('src') || '').length,
                     w: i.naturalWidth, complete: i.complete});
  return {
    title: document.title,
    h1: q('h1', art).map(e => e.textContent.replace('\\u00b6', '').trim()),
    headings: q('h1, h2, h3', art).map(e => e.textContent.replace('\\u00b6', '').trim()),
    figures: q('.jp-OutputArea-output img', art).map(img),
    svgs: q('.jp-RenderedSVG svg', art).length,
    images: q('img', art).map(img),
    text: art.innerText,
    outputs: q('.jp-OutputArea-output', art).map(o => ({mime: o.getAttribute('data-mime-type') || '',
                                                        md: o.classList.contains('jp-RenderedMarkdown'),
                                                        text: o.innerText})),
    mathErrors: q('.MathJax_Error, .merror, merror, mjx-merror', art).length
                + (art.innerText.includes('Math Processing Error') ? 1 : 0),
    mathjax: !!(window.MathJax && window.MathJax.Hub),
    formulas: q('.MathJax, .MathJax_Display', art).length,
    api: q('.jp-OutputArea-output', art).filter(o => o.querySelector('a.nbdev-source') && o.querySelector('h3, h4'))
           .map(o => o.querySelector('h3, h4').textContent.replace('\\u00b6', '').trim())
  };
})()"""


class DevTools:
    "A minimal Chrome DevTools protocol client for one page target (websocket-client)"

    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.n, self.events = 0, []

    def call(self, method, timeout=60, **params):
        self.n += 1
        me = self.n
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        end = time.time() + timeout
        while time.time() < end:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(method)

    def wait_event(self, name, timeout=60):
        end = time.time() + timeout
        while not any(e["method"] == name for e in self.events):
            if time.time() > end:
                raise TimeoutError(name)
            self.ws.settimeout(max(0.1, end - time.time()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
        self.ws.settimeout(60)

    def evaluate(self, js):
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _expected(page_rel):
    "Figures and API entries the processed notebook behind page `page_rel` (site-relative .html) has"
    nb_path = PROC / "docs" / (page_rel[:-5] + ".ipynb")
    if not nb_path.exists():
        return None
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    figs = svgs = api = 0
    for c in nb["cells"]:
        if c["cell_type"] != "code" or "remove_output" in c.get("metadata", {}).get("tags", []):
            continue
        for o in c.get("outputs", []):
            data = o.get("data", {})
            figs += any(m in data for m in FIGURE_MIMES)
            svgs += "image/svg+xml" in data and not any(m in data for m in FIGURE_MIMES)
            md = data.get("text/markdown", "")
            md = "".join(md) if isinstance(md, list) else md
            api += bool(re.search(r"^#{3,4} \S", md, re.M)) and 'class="nbdev-source"' in md
    src = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    return {"figures": figs, "svgs": svgs, "api": api, "first": src}


def _load(dt, url, mathjax=True):
    "Load `url` in the tab of `dt`, wait for MathJax (or block it); what the page shows and what it asked for"
    tp = time.time()
    dt.call("Network.setBlockedURLs", urls=[] if mathjax else NO_MATHJAX)
    dt.events.clear()
    dt.call("Page.navigate", url=url)
    dt.wait_event("Page.loadEventFired")
    end, ready = time.time() + 60, False
    while not ready and time.time() < end:
        ready = dt.evaluate(READY_JS)
        if not ready:
            time.sleep(0.05)
    info = dt.evaluate(INFO_JS)
    info["ready"], info["load_s"] = ready, time.time() - tp
    ev = lambda name: [e["params"] for e in dt.events if e["method"] == name]  # noqa: E731
    info["status"] = next((e["response"]["status"] for e in ev("Network.responseReceived")
                           if e.get("type") == "Document"), None)
    urls = {e["requestId"]: e["request"]["url"] for e in ev("Network.requestWillBeSent")}
    info["requests"] = sorted(set(urls.values()))
    info["failed"] = [(urls.get(e["requestId"]), e.get("errorText")) for e in ev("Network.loadingFailed")
                      if not e.get("canceled") and not e.get("blockedReason")
                      and not urls.get(e["requestId"], "").startswith("about:")]
    info["mathjax_checked"] = mathjax
    info["failed"] += [(e["response"]["url"], e["response"]["status"]) for e in ev("Network.responseReceived")
                       if e["response"]["status"] >= 400]
    info["exceptions"] = [e["exceptionDetails"] for e in ev("Runtime.exceptionThrown")]
    return info


@pytest.fixture(scope="module")
def site():
    "Build the site, load every page in Chromium; {page: info} with what the browser saw"
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / "nbs" / "_mkdocs" / "build.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"the docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    build_s = time.time() - t0
    pages = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                   if p.name != "404.html" and not {"assets", "search"} & set(p.relative_to(SITE).parts))
    math = sorted((p for p in pages if "mathjax/MathJax.js" in (SITE / p).read_text(encoding="utf-8")),
                  key=lambda p: (SITE / p).stat().st_size)  # pages with math, the smallest first
    typeset = set(math if MATH_PAGES == "all" else math[:int(MATH_PAGES)])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(SITE)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    prof = tempfile.mkdtemp(prefix="docs-chromium-")
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    chrome = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--disable-background-timer-throttling",
         "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows", f"--user-data-dir={prof}",
         "--remote-debugging-port=0", "--window-size=1280,1600", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, t1 = {}, time.time()
    try:
        port_file = Path(prof) / "DevToolsActivePort"
        end = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert chrome.poll() is None and time.time() < end, "Chromium did not start (no DevToolsActivePort)"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        tabs = [next(t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
                     if t["type"] == "page")]
        if TABS > 1:  # one window per core: a page's layout and MathJax keep one core busy
            browser = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=30))
            bt = DevTools(browser["webSocketDebuggerUrl"])
            for _ in range(TABS - 1):
                tid = bt.call("Target.createTarget", url="about:blank", newWindow=True)["targetId"]
                tabs.append({"webSocketDebuggerUrl": f"ws://127.0.0.1:{port}/devtools/page/{tid}"})
        todo = list(reversed(pages))
        lock, errors = threading.Lock(), []

        def work(tab):
            try:
                dt = DevTools(tab["webSocketDebuggerUrl"])
                for domain in ("Page", "Runtime", "Network"):
                    dt.call(f"{domain}.enable")
                dt.call("Emulation.setDeviceMetricsOverride", width=1280, height=1600, deviceScaleFactor=1,
                        mobile=False)
                while True:
                    with lock:
                        if not todo:
                            return
                        page = todo.pop()
                    seen[page] = _load(dt, base + page, mathjax=page in typeset or page not in math)
                    if page == "index.html":
                        (PROC / "check").mkdir(parents=True, exist_ok=True)
                        shot = dt.call("Page.captureScreenshot", format="png")["data"]
                        (PROC / "check" / "index.png").write_bytes(base64.b64decode(shot))
            except Exception as e:  # reported by the fixture below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(t,)) for t in tabs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    finally:
        chrome.terminate()
        try:
            chrome.wait(10)
        except subprocess.TimeoutExpired:
            chrome.kill()
        server.shutdown()
        shutil.rmtree(prof, ignore_errors=True)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    chrome_cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    slow = ", ".join(f"{p} {seen[p]['load_s']:.1f} s" for p in sorted(seen, key=lambda p: -seen[p]["load_s"])[:3])
    print(f"\ndocs: build {build_s:.0f} s, {len(pages)} pages checked in Chromium in {time.time() - t1:.0f} s "
          f"({chrome_cpu:.0f} s CPU), "
          f"MathJax on {len(typeset)} of the {len(math)} with math (slowest: {slow})")
    return {"pages": seen, "base": base, "typeset": typeset}


def _fail(problems):
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_home_results_and_every_notebook_have_a_page(site):
    pages = site["pages"]
    assert "index.html" in pages, "no home page (nbs/index.ipynb)"
    nbs = sorted(p.relative_to(PROC / "docs").as_posix()[:-6] + ".html" for p in (PROC / "docs").rglob("*.ipynb"))
    assert len(nbs) > 10
    _fail([f"{p}: no page for a notebook" for p in nbs if p not in pages])
    if (ROOT / "results" / "README.md").exists():
        assert "results/index.html" in pages, "results/README.md is not on the site"


def test_links_within_the_site_resolve(site):
    "Every relative link and image of every page (as built) names a file of the site"
    problems = []
    for page in site["pages"]:
        html = (SITE / page).read_text(encoding="utf-8")
        for m in re.finditer(r'<(?:a|img|link|script)\b[^>]*?\s(?:href|src)="([^"#?]*)', html):
            url = m.group(1)
            if not url or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", url):
                continue
            target = (SITE / page).parent / urllib.request.url2pathname(url)
            if not (target.is_file() or (target / "index.html").is_file()):
                problems.append(f"{page}: link to {url}, not in the site")
    _fail(sorted(set(problems)))


def test_pages_load_with_title_and_heading(site):
    problems = []
    for page, i in site["pages"].items():
        if i["status"] != 200:
            problems.append(f"{page}: HTTP {i['status']}")
        if not i["ready"]:
            problems.append(f"{page}: did not finish loading (MathJax typesetting included) within 60 s")
        if len(i["h1"]) < 1 or not i["h1"][0]:
            problems.append(f"{page}: no <h1>")
        if not i["title"] or "etc_nb" not in i["title"]:
            problems.append(f"{page}: title {i['title']!r}")
    _fail(problems)


def _notebook_pages(site):
    "(page, what the browser saw, what its notebook holds) for every page made from a notebook."
    for page, i in site["pages"].items():
        if (exp := _expected(page)) is not None:
            yield page, i, exp


def test_notebook_pages_have_their_headings_and_api(site):
    problems = []
    for page, i, exp in _notebook_pages(site):
        src = exp["first"]
        src = "".join(src["source"]) if src and isinstance(src["source"], list) else (src or {}).get("source", "")
        m = re.search(r"^#\s+(.+)$", src, re.M)
        want = m and " ".join(re.sub(r"`|\*\*", "", m.group(1)).split())
        if want and (not i["h1"] or " ".join(i["h1"][0].split()) != want):
            problems.append(f"{page}: first <h1> {i['h1'][:1]}, the notebook's first heading is {want!r}")
        if not i["headings"]:
            problems.append(f"{page}: no heading")
        if len(i["api"]) < exp["api"]:
            problems.append(f"{page}: {len(i['api'])} API entries shown, the notebook documents {exp['api']}")
    _fail(problems)


def test_figures_are_images_that_decode(site):
    problems = []
    for page, i, exp in _notebook_pages(site):
        good = [f for f in i["figures"] if f["src"].startswith("data:image/") and f["len"] > 100 and f["w"] > 0]
        if len(good) < exp["figures"]:
            problems.append(f"{page}: {len(good)} figure(s) shown of the {exp['figures']} stored in the notebook "
                            f"({i['figures'][:3]})")
        if i["svgs"] < exp["svgs"]:
            problems.append(f"{page}: {i['svgs']} SVG figure(s) shown of {exp['svgs']}")
    for page, i in site["pages"].items():
        broken = [f["src"] for f in i["images"] if not (f["complete"] and f["w"] > 0)]
        if broken:
            problems.append(f"{page}: broken image(s) {broken[:3]}")
    _fail(problems)


def test_no_error_text(site):
    problems = []
    for page, i in site["pages"].items():
        if "Traceback (most recent call last)" in i["text"]:
            problems.append(f"{page}: shows a Python traceback")
        if re.search(r"\b404\b.{0,5}Not found", i["text"], re.I):
            problems.append(f"{page}: shows the 404 page")
        for o in i["outputs"]:
            if o["md"]:
                continue
            line = ERROR_LINE.search(o["text"])
            if line or ("stderr" in o["mime"] and re.search(r"Error|Traceback", o["text"])):
                problems.append(f"{page}: error output: {o['text'].strip()[:300]!r}")
        if i["mathErrors"]:
            problems.append(f"{page}: {i['mathErrors']} MathJax error(s)")
        if i["exceptions"]:
            e = i["exceptions"][0]
            problems.append(f"{page}: script error: {e.get('exception', {}).get('description', e.get('text'))}")
    _fail(problems)


def test_mathjax_typesets_offline(site):
    assert site["typeset"], "no page with math was typeset"
    problems = []
    for page in sorted(site["typeset"]):
        i = site["pages"][page]
        if not i["mathjax"] or not i["formulas"]:
            problems.append(f"{page}: MathJax {'ran' if i['mathjax'] else 'did not load'}, {i['formulas']} formulas")
    _fail(problems)


def test_offline_nothing_fetched_from_elsewhere(site):
    base, problems = site["base"], []
    for page, i in site["pages"].items():
        far = [u for u in i["requests"] if not u.startswith((base, "data:", "blob:", "about:"))]
        if far:
            problems.append(f"{page}: requests {far[:3]}")
        if i["failed"]:
            problems.append(f"{page}: failed to load {i['failed'][:3]}")
    _fail(problems)
