"""Build the documentation site from the notebooks: `make docs` runs `python nbs/_mkdocs/build.py`.

No quarto and nothing fetched: the notebooks are not executed (their stored outputs, figures included,
are what the pages show) except for the cells nbdev itself runs to document the API.

1. Every notebook under nbs/ (nbdev's `nbglob`: folders and files starting with `_` or `.` are skipped)
   goes through nbdev's own doc processors (`nbdev.processors.FilterDefaults`, what `nbdev_docs` runs
   before quarto) less the quarto-only ones: `add_show_docs` puts a `show_doc` cell after every exported
   symbol and `exec_show_docs` runs the exported cells, the imports and those `show_doc` cells, so each
   page carries the signature and docstring of everything its notebook exports (see nbproc.py for the
   one change: of a cell mixing imports and other code only the imports run); `#| export`/`#| hide` cells go,
   backticked symbols link to their API entry. A last processor turns the quarto cell options into
   what nbconvert understands (`echo: false` hides the input, `output: false` the outputs,
   `include: false` the cell).
2. The processed notebooks are written to `_proc/docs/` under nbdev's page names
   (`nbs/data/00_synthetic.ipynb` -> `data/synthetic.html`, as `nbdev_docs` would name it), with
   `results/` (its README.md becomes the Results page) and MathJax (from the `jupyter-server-mathjax`
   package) beside them; `_proc/mkdocs.yml` is `nbs/_mkdocs/mkdocs.yml` plus the navigation.
3. `mkdocs build` (MkDocs-Material, mkdocs-jupyter) writes the site to `_site/`.

Processed notebooks are cached in `_proc/cache/` by content, so a rebuild redoes only the notebooks
that changed. `python nbs/_mkdocs/build.py --help` lists the options.
"""
import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NBS = ROOT / "nbs"

sys.path.insert(0, str(HERE))
import nbproc  # noqa: E402  (step 1, in a module of its own so that worker processes can import it)

# Navigation: (section, patterns relative to nbs/); a notebook goes to the first section one of whose
# patterns matches it (a pattern without "/" matches top-level notebooks only). Within a section the
# order is the order of the patterns, then the file name. Results is results/README.md, when present.
SECTIONS = [
    ("Start", ["index.ipynb", "00a_conventions.ipynb"]),
    ("Training", ["05*.ipynb"]),
    ("Core", ["*.ipynb"]),
    ("Data", ["data/*.ipynb"]),
    ("Models", ["models/*.ipynb"]),
    ("Runs", ["runs/*.ipynb"]),
]
NAV_ORDER = ["Start", "Core", "Training", "Data", "Models", "Runs", "Results"]
RESULTS_SUFFIXES = {".md", ".png", ".jpg", ".jpeg", ".svg", ".gif", ".csv", ".json", ".txt"}


def _matches(rel: str, pat: str) -> bool:
    r, p = PurePosixPath(rel), PurePosixPath(pat)
    return r.parent == p.parent and fnmatch(r.name, p.name)


def page_name(rel: str) -> str:
    "nbdev's page name for notebook `rel` (nbs-relative): `data/00_synthetic.ipynb` -> `data/synthetic.ipynb`"
    p = PurePosixPath(rel)
    return str(p.with_name(re.sub(r"^\d+[a-zA-Z0-9]*_", "", p.name.lower())))


def first_heading(nb: dict, default: str) -> str:
    "Text of the notebook's first `# ` heading (markdown cells), else `default`"
    for c in nb.get("cells", []):
        if c.get("cell_type") != "markdown":
            continue
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        for line in src.splitlines():
            m = re.match(r"^#\s+(.+?)\s*#*\s*$", line)
            if m:
                return m.group(1).replace("`", "")
    return default


def find_notebooks():
    from nbdev.doclinks import nbglob
    return sorted(str(Path(p).relative_to(NBS).as_posix()) for p in nbglob(NBS))


def section_of(rel: str) -> tuple[str, int]:
    for name, pats in SECTIONS:
        for i, pat in enumerate(pats):
            if _matches(rel, pat):
                return name, i
    top = PurePosixPath(rel).parts[0]
    return (top.replace("_", " ").title() if "/" in rel else "Core"), 0


def _key(src: Path) -> str:
    h = hashlib.sha256()
    for p in (src, Path(__file__), Path(nbproc.__file__)):
        h.update(p.read_bytes())
    import nbdev
    h.update(nbdev.__version__.encode())
    return h.hexdigest()[:20]


def jupyter_opts(conf: dict):
    "The mkdocs-jupyter options in the MkDocs config `conf`"
    for p in conf.get("plugins", []):
        if isinstance(p, dict) and "mkdocs-jupyter" in p:
            return p["mkdocs-jupyter"]
    return None


def process_all(rels, docs: Path, cache: Path, conf: dict, workers: int):
    """Processed copies of the notebooks `rels` in `docs`, from `cache` where their content is unchanged;
    the workers also render each processed notebook into mkdocs-jupyter's cache (see nbproc.render_html)"""
    cache.mkdir(parents=True, exist_ok=True)
    opts = jupyter_opts(conf)
    todo, done = [], {}
    for rel in rels:
        dst = docs / page_name(rel)
        cached = cache / f"{page_name(rel).replace('/', '__')}.{_key(NBS / rel)}.ipynb"
        done[rel] = (cached, dst)
        if not cached.exists():
            todo.append((str(NBS / rel), str(cached), opts, opts and opts["cache_dir"]))
    if todo:
        print(f"docs: processing {len(todo)} notebook(s) with nbdev ({workers} worker(s)) ...", flush=True)
        t0 = time.time()
        if workers <= 1:
            try:
                times = [nbproc.process_nb(a) for a in todo]
            except RuntimeError as e:
                sys.exit(f"docs: {e}")
        else:
            import multiprocessing as mp
            fork = "fork" in mp.get_all_start_methods()
            if fork:
                nbproc.preload()
            ctx = mp.get_context("fork" if fork else "spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                try:
                    times = list(ex.map(nbproc.process_nb, todo))
                except RuntimeError as e:  # a notebook whose exported or show_doc cells fail (nbproc)
                    sys.exit(f"docs: {e}")
        slow = sorted(times, key=lambda t: -t[1])[:3]
        print(f"docs: processed in {time.time() - t0:.1f} s (slowest: "
              + ", ".join(f"{Path(n).relative_to(NBS)} {t:.1f} s" for n, t in slow) + ")", flush=True)
    for rel, (cached, dst) in done.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, dst)
    live = {c.name for c, _ in done.values()}
    for old in cache.glob("*.ipynb"):  # entries of notebooks that changed or went
        if old.name not in live:
            old.unlink()


def _results_link(target: str, md_rel: str, pages: dict, blob: str) -> str | None:
    """Where link `target` of the results page `md_rel` (e.g. `results/README.md`) goes on the site, when
    it leaves results/: the README (whose content is the home page's) -> the home page, a notebook -> its
    page, any other file of the repository -> its source on the git host. None: leave it as it is."""
    path, frag = re.match(r"([^#?]*)(.*)", target).groups()
    if not path or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|/", path):
        return None
    rel = posixpath.normpath(posixpath.join(posixpath.dirname(md_rel), path))
    if rel.startswith("results/") or rel.startswith("../"):
        return None
    dest = {"README.md": "index.ipynb"}.get(rel) or (pages.get(rel[4:]) if rel.startswith("nbs/") else None)
    if dest:
        return posixpath.relpath(dest, posixpath.dirname(md_rel)) + frag
    return f"{blob}/{rel}{frag}"


def copy_results(docs: Path, pages: dict) -> str | None:
    """results/ (tracked or not ignored: README.md and the files it links to) -> docs/results/; in its
    markdown, links that leave results/ are rewritten (`_results_link`)"""
    from nbdev.config import get_config
    res = ROOT / "results"
    if not (res / "README.md").exists():
        return None
    cfg = get_config()
    blob = f"{cfg.git_url.rstrip('/')}/blob/{cfg.branch}"
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "results"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / f for f in out]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but runs/ and data/
        files = [p for p in res.rglob("*") if p.is_file() and not {"runs", "data"} & set(p.parts)]
    for f in files:
        if f.suffix.lower() not in RESULTS_SUFFIXES or not f.is_file():
            continue
        rel = f.relative_to(ROOT).as_posix()
        d = docs / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix.lower() == ".md":
            def link(m):
                new = _results_link(m.group(2), rel, pages, blob)
                return m.group(0) if new is None else f"{m.group(1)}({new})"
            d.write_text(re.sub(r"(\])\(([^)\s]+)\)", link, f.read_text(encoding="utf-8")),
                         encoding="utf-8")
        else:
            shutil.copy2(f, d)
    return "results/README.md"


def copy_mathjax(docs: Path):
    "MathJax 2.7 from the jupyter-server-mathjax package (nbconvert's default loads it from a CDN)"
    import jupyter_server_mathjax
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = docs / "assets" / "mathjax"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.md", "unpacked"))


def make_config(nav, pages: dict, proc: Path, site: Path, strict: bool) -> dict:
    "nbs/_mkdocs/mkdocs.yml with what settings.ini and the notebooks give"
    import yaml
    from nbdev.config import get_config
    cfg = get_config()
    conf = yaml.safe_load((HERE / "mkdocs.yml").read_text())
    conf.update({
        "site_name": cfg.title,
        "site_description": cfg.description,
        "copyright": f"Copyright {cfg.copyright}",
        "docs_dir": "docs",
        "site_dir": os.path.relpath(site, proc),
        "nav": nav,
        "hooks": [str(HERE / "hooks.py")],
        "strict": strict,
    })
    jupyter_opts(conf)["cache_dir"] = str(proc / "cache" / "mkdocs-jupyter")
    extra = conf.setdefault("extra", {})
    # a link, not repo_url: MkDocs-Material would fetch the repository's stars from GitHub's API
    extra["social"] = [{"icon": "fontawesome/brands/github", "link": cfg.git_url, "name": "source repository"}]
    extra["nbdev_doc_url"] = cfg.doc_host.rstrip("/") + "/" + cfg.doc_baseurl.strip("/") + "/"  # for hooks.py
    extra["nbdev_pages"] = pages
    extra["nbdev_repo_root"] = str(ROOT)
    extra["nbdev_git_url"], extra["nbdev_branch"] = cfg.git_url.rstrip("/"), cfg.branch
    return conf


def write_config(conf: dict, proc: Path) -> Path:
    import yaml
    path = proc / "mkdocs.yml"
    path.write_text("# written by nbs/_mkdocs/build.py from nbs/_mkdocs/mkdocs.yml: edit that one\n"
                    + yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    return path


def mkdocs_build(path: Path, strict: bool):
    "`mkdocs build --clean -q -f path`, in this process (mkdocs-jupyter and nbconvert are imported already)"
    import logging
    os.environ["NO_MKDOCS_2_WARNING"] = "1"  # MkDocs-Material's banner about its successor
    nbproc.skip_slow_imports()
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException
    log = logging.getLogger("mkdocs")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("mkdocs %(levelname)s: %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.WARNING)
    try:
        build(load_config(str(path), strict=strict), dirty=False)
    except MkDocsException as e:
        sys.exit(f"docs: mkdocs build failed: {e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_site"), help="site folder (default: _site/)")
    ap.add_argument("--proc", default=str(ROOT / "_proc"), help="scratch folder (default: _proc/)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes for the nbdev step (default: min(2, CPUs))")
    ap.add_argument("--strict", action="store_true", help="mkdocs --strict: warnings fail the build")
    ap.add_argument("--no-build", action="store_true", help="write _proc/ only, do not run mkdocs")
    a = ap.parse_args(argv)
    t0 = time.time()
    os.chdir(ROOT)
    if not (NBS / "index.ipynb").exists():
        sys.exit("docs: nbs/index.ipynb is missing: it is the home page of the site (nbdev's index notebook); "
                 "add it, then run make docs again")
    proc, site = Path(a.proc).resolve(), Path(a.out).resolve()
    docs = proc / "docs"
    if docs.exists():
        shutil.rmtree(docs)
    docs.mkdir(parents=True)

    rels = find_notebooks()
    pages = {}  # nbs-relative notebook -> its page in docs/
    for rel in rels:
        n = page_name(rel)
        if n in pages.values():
            other = next(r for r, p in pages.items() if p == n)
            sys.exit(f"docs: {rel} and {other} would both be the page {n[:-6]}.html: rename one")
        pages[rel] = n
    sections = {}
    for rel in rels:
        name, order = section_of(rel)
        nb = json.loads((NBS / rel).read_text(encoding="utf-8"))
        title = first_heading(nb, PurePosixPath(rel).stem)
        sections.setdefault(name, []).append(((order, rel), {title: pages[rel]}))
    results = copy_results(docs, pages)
    if results:
        sections["Results"] = [((0, ""), {"Results": results})]
    order = NAV_ORDER + sorted(set(sections) - set(NAV_ORDER))
    nav = [{s: [e for _, e in sorted(sections[s], key=lambda x: x[0])]} for s in order if s in sections]
    conf = make_config(nav, pages, proc, site, a.strict)

    process_all(rels, docs, proc / "cache", conf, a.workers)
    copy_mathjax(docs)
    for f in ("extra.css", "mathjax-config.js"):
        shutil.copy2(HERE / f, docs / "assets" / f)
    path = write_config(conf, proc)
    print(f"docs: {len(rels)} notebooks{' and results/README.md' if results else ''} in {docs}, config {path}",
          flush=True)
    if a.no_build:
        return
    mkdocs_build(path, a.strict)
    print(f"docs: site in {os.path.relpath(site)}/ ({time.time() - t0:.0f} s); open {os.path.relpath(site)}/index.html "
          f"or serve it: .venv/bin/python -m http.server -d {os.path.relpath(site)}", flush=True)


if __name__ == "__main__":
    main()
