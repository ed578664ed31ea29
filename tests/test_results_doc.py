"""README.md and results/README.md quote committed result files; these tests keep them from drifting apart.

A table quoted from result files is preceded by `<!-- source: PATH[, PATH...] -->`. Every number in the table's
body must be a number of one of those files, rounded to the decimals the table shows. The result files
themselves must use the scheme names the code writes today."""
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from etc_nb.config import parse_scheme
from etc_nb.demo import DEMO_SCHEMES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "results/README.md")
MARK = re.compile(r"^<!-- source: (?P<paths>[^>]+?) -->$")
NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w|\.\d)")


def numbers(text: str) -> list[str]:
    "The decimal numbers of `text`, as written (e.g. '67.60'), outside of words such as 'pspnet18' or 'v2'."
    return NUM.findall(text.replace("−", "-"))


def quoted_tables(doc: Path):
    "(line number, source paths, body rows) of every marked table of `doc`."
    lines = doc.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if m := MARK.match(line.strip()):
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                rows.append(row)
            assert len(rows) > 2, f"{doc}:{i + 1}: a source mark must be followed by a table"
            yield i + 1, [p.strip() for p in m["paths"].split(",")], rows[2:]   # skip header and rule


def matches(quoted: str, source: list[float]) -> bool:
    "Does the number `quoted` equal one of `source` rounded to as many decimals as `quoted` shows?"
    d = len(quoted.split(".")[1]) if "." in quoted else 0
    q = float(quoted)
    return any(abs(round(s, d) - q) < 10 ** -d / 2 for s in source)


def test_some_tables_are_marked():
    marks = [m for doc in DOCS for m in quoted_tables(ROOT / doc)]
    assert len(marks) >= 5, marks


@pytest.mark.parametrize("doc", DOCS)
def test_quoted_numbers_come_from_committed_files(doc):
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    for line, paths, rows in quoted_tables(ROOT / doc):
        for p in paths:
            assert (ROOT / p).is_file(), f"{doc}:{line}: source {p} does not exist"
            if tracked:                                   # not a git checkout (an sdist): existence is enough
                assert p in tracked, f"{doc}:{line}: source {p} is not committed"
        source = [float(n) for p in paths for n in numbers((ROOT / p).read_text(encoding="utf-8"))]
        for row in rows:
            for cell in row.strip("|").split("|")[1:]:     # the first cell names the row
                bad = [n for n in numbers(cell) if not matches(n, source)]
                assert not bad, f"{doc}:{line}: {bad} in row {row!r} are in none of {paths}"


def test_matches_rounds_to_the_quoted_decimals():
    assert matches("67.60", [67.6]) and matches("67.6", [67.63]) and matches("9.7", [9.66])
    assert not matches("67.64", [67.6]) and not matches("71.0", [70.9]) and not matches("3", [2.4])
    assert numbers("pspnet18 at 512x1024: 1.90× (738 ms), v2") == ["1.90", "738"]


def test_committed_results_use_the_scheme_names_of_the_code():
    csvs = sorted(ROOT.glob("results/*/results.csv"))
    assert csvs
    for path in csvs:
        df = pd.read_csv(path)
        for scheme in df.get("scheme", pd.Series(dtype=str)).dropna().unique():
            parse_scheme(str(scheme).removeprefix("teacher: "))   # raises on a name the code no longer knows
    demo = pd.read_csv(ROOT / "results/demo/results.csv")
    assert tuple(demo.scheme.unique()) == DEMO_SCHEMES, "results/demo is not what `make demo` writes now: rerun it"
