"""Step 1 of the documentation build (nbs/_mkdocs/build.py), in worker processes: one notebook through
nbdev's doc processors, then rendered to HTML.

`process_nb` runs `nbdev.processors.FilterDefaults` (what `nbdev_docs` runs before quarto) less the
quarto-only processors, with one change: nbdev's `exec_show_docs` runs every cell that imports
anything, and a cell that mixes imports with other code (a benchmark, a figure) would run whole;
here such a cell runs its imports only (`exec_api_cells`). `mkdocs_cell` then turns the quarto cell
options into tags that mkdocs-jupyter reads. `render_html` renders the processed notebook as
mkdocs-jupyter would, into its cache, so that `mkdocs build` finds every page rendered.
`exec_show_docs` runs cells in an IPython shell, which takes over `sys.modules["__main__"]`: hence a
module of its own, which the workers import.
"""
import ast
import os
import re
import time
import warnings
from pathlib import Path

# nbdev processors that only make sense for quarto (frontmatter, fold markup, the warning cell)
QUARTO_ONLY = {"FrontmatterProc", "insert_warning", "clean_show_doc", "add_fold"}


def exec_api_cells():
    "nbdev's `exec_show_docs`, except that a cell mixing imports and other code runs its imports only"
    from nbdev import processors as P

    class exec_show_docs(P.exec_show_docs):
        def __call__(self, cell):
            if not self.nb.has_docs_ or not hasattr(self, "k") or not P._do_eval(cell):
                return
            shown = set(cell.directives_) & {"export", "exports", "exporti", "exec_doc"}
            trees = cell.parsed_()
            imps = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
            if shown or P._show_docs(trees) or len(imps) == len(trees):
                return super().__call__(cell)
            # nbdev runs the whole cell (and warns): here a benchmark or a figure would run too
            self.k.run("\n".join(ast.unparse(t) for t in imps))
            if self.k.exc:
                raise Exception(f"Error in the imports of cell {cell.idx_}:\n{cell.source}") from self.k.exc
    return exec_show_docs


def _fix_md(md: str) -> str:
    "Markdown from nbdev's `show_doc` for nbconvert: quarto link attributes (`[t](u){...}`) go"
    md = re.sub(r"\[source\]\(([^)\s]+)\)\{[^}]*\}",  # the source link floats right, as on nbdev's pages
                lambda m: f'<a class="nbdev-source" href="{re.sub(r"#LNone$", "", m.group(1))}">source</a>', md)
    return re.sub(r"(\]\([^)\s]+\))\{[^}]*\}", r"\1", md)


def mkdocs_cell(cell):
    "Last processor: quarto cell options -> nbconvert (tags read by mkdocs-jupyter's remove_tag_config)"
    if cell.cell_type != "code":
        return
    d = getattr(cell, "directives_", {}) or {}
    val = lambda k: (d.get(k) or [""])[0].lower()  # noqa: E731
    if val("include:") == "false":
        del cell["source"]
        return
    tags = list(cell.metadata.get("tags", []))
    if val("echo:") == "false" or re.match(r"^show_doc\(", cell.source.strip()):
        tags.append("remove_input")
    if val("output:") == "false":
        tags.append("remove_output")
    if tags:
        cell.metadata["tags"] = tags
    for o in cell.get("outputs", []):
        data = o.get("data") or {}
        # a widget needs the widget manager from a CDN: its plain-text fallback shows instead
        data.pop("application/vnd.jupyter.widget-view+json", None)
        if "text/markdown" in data:
            md = data["text/markdown"]
            md = "".join(md) if isinstance(md, list) else md
            data["text/markdown"] = _fix_md(md)
    if not cell.source.strip() and not cell.get("outputs"):
        del cell["source"]


# what the exported cells import, and the doc tools: imported once before the workers fork
PRELOAD = ["matplotlib.pyplot", "torch", "pandas", "cv2", "execnb.shell", "nbdev.processors", "mkdocs_jupyter.convert"]


def skip_slow_imports():
    """jsonschema (under nbformat) builds 38 lark grammars at import for its optional "iri" format checks,
    seconds of CPU that no notebook needs: without rfc3987_syntax it skips those checks"""
    import sys
    sys.modules.setdefault("rfc3987_syntax", None)


def preload():
    "Import what every worker needs once, before the workers are forked (they share it)"
    import importlib
    skip_slow_imports()
    import matplotlib
    matplotlib.use("Agg")
    for m in PRELOAD:
        try:
            importlib.import_module(m)
        except ImportError:
            pass


def _share_jinja_bytecode():
    """nbconvert makes a Jinja environment, and compiles its templates, for every notebook: here the
    compiled templates are kept (Jinja's bytecode cache, keyed by template source) for the whole worker"""
    import functools
    import jinja2
    from nbconvert.exporters import templateexporter

    class MemoryBytecodeCache(jinja2.BytecodeCache):
        def __init__(self):
            self.codes = {}

        def load_bytecode(self, bucket):
            if bucket.key in self.codes:
                bucket.bytecode_from_string(self.codes[bucket.key])

        def dump_bytecode(self, bucket):
            self.codes[bucket.key] = bucket.bytecode_to_string()

    if getattr(templateexporter, "Environment", None) is jinja2.Environment:
        templateexporter.Environment = functools.partial(jinja2.Environment, bytecode_cache=MemoryBytecodeCache())


class _Soup:
    """Stands in for BeautifulSoup in nbconvert's `HTMLExporter.from_notebook_node`, whose pass over the
    page with it (pure-Python parsing, 60% of the rendering time) only adds alt text to images and
    tabindex to cells: done here with regular expressions"""

    def __init__(self, html, features=None):
        self.html = html

    def select(self, selector):
        return []

    def __str__(self):
        html = re.sub(r"<img\b(?![^>]*\balt=)", '<img alt="No description has been provided for this image"',
                      self.html)
        cells = r'\bclass="[^"]*\b(?:jp-Cell-inputWrapper|jp-OutputArea-output)\b[^"]*"'
        return re.sub(r"<div\b(?![^>]*\btabindex=)([^>]*" + cells + r"[^>]*)>", r'<div\1 tabindex="0">', html)


def _light_html_pass():
    "Use `_Soup` when nbconvert's exporter does just what it replaces (as nbconvert 7.17 does)"
    import inspect
    from nbconvert.exporters import html as nbhtml
    src = inspect.getsource(nbhtml.HTMLExporter.from_notebook_node)
    if (src.count("soup.select(") == 3 and 'soup.select("img:not([alt])")' in src and "jp-Cell-inputWrapper" in src
            and "jp-OutputArea-output" in src and "return str(soup), resources" in src):
        nbhtml.BeautifulSoup = _Soup


_sped_up = False


def _speed_up_nbconvert():
    "Both speed-ups above, once per process"
    global _sped_up
    if not _sped_up:
        _share_jinja_bytecode()
        _light_html_pass()
        _sped_up = True


def render_html(nb_path: Path, opts: dict, cache_dir: Path):
    """mkdocs-jupyter's rendering of `nb_path`, written where its own cache will find it

    `mkdocs build` renders the pages one after the other; doing it here, in the worker processes, is
    what makes the build use both cores. It relies on mkdocs-jupyter's cache functions (private, of
    the pinned version): if they change, this does nothing and `mkdocs build` renders the pages itself.
    """
    import json
    try:
        from mkdocs_jupyter import convert, plugin
        p = plugin.Plugin()
        errors, _ = p.load_config(opts)
        c = p.config
        key = plugin._compute_cache_key(nb_path, c, c["execute"])
        path = plugin._get_cache_path(cache_dir, key)
        get_toc = plugin._get_nb_toc_tokens
    except (ImportError, AttributeError, TypeError, KeyError):
        return
    if errors or path.exists():
        return
    _speed_up_nbconvert()
    body = convert.nb2html(
        str(nb_path), execute=c["execute"], kernel_name=c["kernel_name"], theme=c["theme"],
        allow_errors=c["allow_errors"], show_input=c["show_input"], no_input=c["no_input"],
        no_prompt=c["no_prompt"], remove_tag_config=c["remove_tag_config"],
        highlight_extra_classes=c["highlight_extra_classes"], include_requirejs=c["include_requirejs"],
        custom_mathjax_url=c["custom_mathjax_url"])
    toc_tokens, title = get_toc(str(nb_path), c["toc_depth"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"content": body, "toc_tokens": toc_tokens, "title": title}), encoding="utf-8")


def process_nb(args):
    """Run nbdev's doc processors (less the quarto-only ones) on notebook `src`, write the result to `dst`;
    with mkdocs-jupyter's options and cache folder, render `dst` to HTML too (`render_html`)"""
    src, dst, opts, cache_dir = args
    src, dst = Path(src), Path(dst)
    t0 = time.time()
    os.environ["IN_TEST"] = "1"  # as nbdev's own doc processing (nbdev.serve_drv) does
    warnings.filterwarnings("ignore")
    import matplotlib
    matplotlib.use("Agg")
    from execnb.nbio import read_nb, write_nb
    from nbdev.process import NBProcessor
    from nbdev.processors import FilterDefaults

    ours = {"exec_show_docs": exec_api_cells()}
    procs = [ours.get(p.__name__, p) for p in FilterDefaults().procs() if p.__name__ not in QUARTO_ONLY]
    procs.append(mkdocs_cell)
    nb = read_nb(src)
    try:
        NBProcessor(nb=nb, procs=procs).process()
    except Exception as e:  # a failing exported or show_doc cell: name the notebook, keep the cause
        cause = e.__cause__ or e
        raise RuntimeError(f"{src}: {e}\n{type(cause).__name__}: {cause}") from None
    for c in nb.cells:  # nbdev's attributes are not part of the notebook format
        for k in [k for k in c if k.endswith("_") or k == "has_sd"]:
            c.pop(k, None)
    for k in [k for k in nb if k.endswith("_")]:
        nb.pop(k, None)
    nb.metadata.pop("widgets", None)  # widget state (exec_show_docs adds it) makes nbconvert load a CDN script
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)
    if opts is not None:
        render_html(dst, opts, Path(cache_dir))
    return str(src), time.time() - t0
