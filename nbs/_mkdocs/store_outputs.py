"""Store the outputs of notebooks (figures, tables, printed checks) in the notebooks themselves, for JupyterLab and
the documentation site, which renders stored outputs and does not re-run anything.

    python nbs/_mkdocs/store_outputs.py NOTEBOOK...        (`make outputs` runs it on the documented notebooks)

It runs exactly the cells `nbdev_test` runs (cells flagged with settings.ini's `tst_flags` and `#| eval: false`
cells are skipped and keep what they had), in one execnb shell, in the notebook's folder, with IN_TEST=1; stderr
(warnings, progress bars) is dropped; then nbdev's cleaning with the settings.ini options, and the repository's
JSON format. The first exception stops it and leaves that notebook as it was."""
import json
import os
import sys
from pathlib import Path

from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.clean import clean_nb
from nbdev.config import get_config
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor


def skipped(cell, flags: set) -> bool:
    "Whether `nbdev_test` would skip `cell` (not code, `#| eval: false`, or a test flag such as `#| slow`)."
    if cell.cell_type != "code":
        return True
    d = getattr(cell, "directives_", {}) or {}
    return d.get("eval:", [""])[0].lower() == "false" or bool(flags & d.keys())


def kept(output: dict) -> bool:
    "Stored outputs leave out stderr: warnings and progress bars differ between runs and say nothing to a reader."
    return not (output.get("output_type") == "stream" and output.get("name") == "stderr")


def store(path: Path) -> None:
    cfg = get_config()
    flags, path = set(cfg.get("tst_flags", "").split()), path.resolve()
    os.environ["IN_TEST"] = "1"
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    shell = CaptureShell(path, mpl_format="png")
    with working_directory(path.parent):
        shell.run_all(nb, exc_stop=True, preproc=lambda c: skipped(c, flags))
    outputs = {c.id: [o for o in json.loads(json.dumps(c.get("outputs", []))) if kept(o)]
               for c in nb.cells if not skipped(c, flags)}
    raw = json.loads(path.read_text(encoding="utf-8"))
    for c in raw["cells"]:
        if c["cell_type"] == "code" and c["id"] in outputs:
            c["outputs"] = outputs[c["id"]]
    clean_nb(raw, clear_all=False, allowed_metadata_keys=cfg.get("allowed_metadata_keys", "").split(),
             allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys", "").split(),
             clean_ids=str(cfg.get("clean_ids", "True")).lower() == "true")
    tmp = path.with_name(f".{path.name}.tmp")           # never a half-written notebook
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(raw, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python nbs/_mkdocs/store_outputs.py NOTEBOOK...")
    for arg in sys.argv[1:]:
        store(Path(arg))
        print(f"stored the outputs of {arg}")
