"""MkDocs hooks of the documentation site (nbs/_mkdocs/build.py names this file in _proc/mkdocs.yml).

Notebook pages are HTML from mkdocs-jupyter, which MkDocs does not rewrite, so here:
- links to the nbdev doc site (what nbdev's `add_links` writes for a backticked symbol,
  `{doc_host}{doc_baseurl}/warp.html#warp`) point at the pages of this site, and so do relative links
  and images, which a notebook writes relative to itself in the repository: a notebook
  (`03_losses.ipynb`) -> its page, `../results/README.md` -> the Results page, `../README.md` -> the
  home page, `../results/demo/results.png` -> its copy in the site, any other file of the repository
  -> its source on the git host;
- the JupyterLab CSS that mkdocs-jupyter inlines in every notebook page (about 0.6 MB) moves to one
  shared file, and nbconvert's empty MathJax `<script src="">` goes (extra_javascript loads MathJax);
- the table of contents is made from the page's headings as rendered: it lists the API entries (the
  `show_doc` headings) and keeps the code in headings, which mkdocs-jupyter's own table drops;
- the search plugin indexes the code as plain text: the syntax highlighting's thousands of <span>s
  made indexing half of the build time.
Every page without math does without MathJax (a good part of a second per page).
"""
import hashlib
import os
import posixpath
import re

from mkdocs.plugins import CombinedEvent, event_priority
from mkdocs.structure.toc import get_toc

_STYLE = re.compile(r'<style(?: type="text/css")?>\s*(.*?)\s*</style>', re.S)
_REL_LINK = re.compile(r'(<(?:a|img)\b[^>]*?\s(?:href|src)=")(?![a-zA-Z][a-zA-Z0-9+.-]*:|/|#)([^"#?]+)([?#][^"]*)?"')
_HEADING = re.compile(r'<h([1-6])\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
_PRE = re.compile(r"(<pre\b[^>]*>)(.*?)(</pre>)", re.S)
_CODE = re.compile(r"<(pre|code|script|style)\b.*?</\1>", re.S)
_MATH = re.compile(r"\$[^$<>]+\$|\\\(|\\\[|\\begin\{")
_styles = {}  # site-relative path -> CSS, written by on_post_build


def _is_nb(page) -> bool:
    return page.file.src_uri.endswith(".ipynb")


def _rel(target: str, page_url: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(page_url) or ".")


def _toc_tokens(html: str, depth: int) -> list:
    "MkDocs' table-of-contents tokens for the headings (with an id, down to level `depth`) of `html`"
    tokens, stack = [], []
    for m in _HEADING.finditer(html):
        level = int(m.group(1))
        if level > depth:
            continue
        name = re.sub(r'<a class="anchor-link".*?</a>', "", m.group(3), flags=re.S)
        tok = {"level": level, "id": m.group(2), "name": re.sub(r"<[^>]+>", "", name).strip(), "children": []}
        while stack and stack[-1]["level"] >= level:
            stack.pop()
        (stack[-1]["children"] if stack else tokens).append(tok)
        stack.append(tok)
    return tokens


def on_pre_build(config):
    _styles.clear()


def on_page_content(html, page, config, files):
    if not _is_nb(page):
        return html

    def move_style(m):
        css = m.group(1)
        if css.startswith("['"):  # mkdocs-jupyter also appends the repr of its list of inlined CSS
            return ""
        if len(css) < 2000:
            return m.group(0)
        name = f"assets/notebook-{hashlib.sha1(css.encode()).hexdigest()[:12]}.css"
        _styles[name] = css
        return f'<link rel="stylesheet" href="{_rel(name, page.url)}">'
    html = _STYLE.sub(move_style, html)
    html = re.sub(r'<script src="">\s*</script>', "", html)

    jupyter = config["plugins"].get("mkdocs-jupyter")
    page.toc = get_toc(_toc_tokens(html, jupyter.config["toc_depth"] if jupyter else 3))

    doc_url = config["extra"].get("nbdev_doc_url")
    if doc_url:
        def site_link(m):
            path, frag = m.group(1), m.group(2) or ""
            f = files.get_file_from_path(path[:-5] + ".ipynb") if path.endswith(".html") else None
            return f'href="{_rel(f.url, page.url)}{frag}"' if f else m.group(0)
        html = re.sub(r'href="' + re.escape(doc_url) + r'([^"#]*)(#[^"]*)?"', site_link, html)

    extra = config["extra"]
    pages = extra.get("nbdev_pages", {})  # nbs-relative notebook -> page (docs-relative .ipynb)
    src = {v: k for k, v in pages.items()}.get(page.file.src_uri)

    def repo_link(m):
        if src is None:
            return m.group(0)
        target = posixpath.normpath(posixpath.join("nbs", posixpath.dirname(src), m.group(2)))
        docs = ("index.ipynb" if target == "README.md" else pages.get(target[4:]) if target.startswith("nbs/")
                else target if target.startswith("results/") else None)
        f = files.get_file_from_path(docs) if docs else None
        if f:
            return f'{m.group(1)}{_rel(f.url, page.url)}{m.group(3) or ""}"'
        root = extra.get("nbdev_repo_root")
        if docs is None and root and os.path.exists(os.path.join(root, target)) and not target.startswith(".."):
            kind = "tree" if os.path.isdir(os.path.join(root, target)) else "blob"
            return f'{m.group(1)}{extra["nbdev_git_url"]}/{kind}/{extra["nbdev_branch"]}/{target}{m.group(3) or ""}"'
        return m.group(0)
    return _REL_LINK.sub(repo_link, html)


@event_priority(100)  # before the search plugin indexes the page
def _search_sees_plain_code(context, page, config, nav):
    if _is_nb(page):
        page.full_content = page.content
        page.content = _PRE.sub(lambda m: m.group(1) + re.sub(r"<[^>]+>", "", m.group(2)) + m.group(3), page.content)
    return context


@event_priority(-100)  # after it
def _page_keeps_highlighting(context, page, config, nav):
    full = getattr(page, "full_content", None)
    if full is not None:
        page.content, page.full_content = full, None
    return context


on_page_context = CombinedEvent(_search_sees_plain_code, _page_keeps_highlighting)


def on_post_page(output, page, config):
    if _MATH.search(_CODE.sub("", page.content or "")):
        return output
    return re.sub(r'<script src="[^"]*assets/(mathjax-config\.js|mathjax/MathJax\.js)"></script>\s*', "", output)


def on_post_build(config):
    for name, css in _styles.items():
        path = os.path.join(config["site_dir"], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(css)
