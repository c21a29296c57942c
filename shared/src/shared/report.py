"""Results and benchmark reports rendered only from data.

A report folder (``results/<pkg>/`` or ``benchmarks/<pkg>/``) holds:

* ``results.json``: the title, intro, sections (their text, claim rows with every per-seed value, free
  tables, figures) and notes: everything the page says;
* ``provenance.json``: how it was made (:mod:`shared.provenance`);
* ``results.csv``: the claim rows (and free-table rows) flat, for other tools;
* ``results.md``: rendered from the two JSON files by :func:`render_report`, never edited by hand (a
  contract test re-renders every committed ``results.md`` and compares).

Sections come in order; a package's reproduce puts its mechanism check first, with the reason the effect
must show there written in ``text`` before the numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from shared.metrics import MD_COLUMNS, ResultRow

__all__ = ["PACKAGE_ORDER", "Section", "Table", "render_report", "sync_readmes", "write_report"]


@dataclass
class Table:
    """A free table (benchmark timings, per-setting diagnostics): column names and rows of cells."""

    columns: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        def cell(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.4g}"
            return str(v).replace("|", "\\|")

        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in self.rows]
        return "\n".join(lines)


@dataclass
class Section:
    """One part of a report: a heading, the text before the numbers, claim rows and/or a free table, the
    text after them, and figures (file names in the report folder)."""

    heading: str
    text: str = ""
    rows: Sequence[ResultRow] = field(default_factory=list)
    table: Table | None = None
    after: str = ""
    figures: Sequence[str] = field(default_factory=list)


def _section_to_json(s: Section) -> dict[str, Any]:
    return {"heading": s.heading, "text": s.text, "rows": [dataclasses.asdict(r) for r in s.rows],
            "table": dataclasses.asdict(s.table) if s.table is not None else None, "after": s.after,
            "figures": list(s.figures)}


def _section_from_json(d: dict[str, Any]) -> Section:
    return Section(heading=d["heading"], text=d.get("text", ""), rows=[ResultRow(**r) for r in d.get("rows", [])],
                   table=Table(**d["table"]) if d.get("table") else None, after=d.get("after", ""),
                   figures=d.get("figures", []))


def _claims_table(rows: Sequence[ResultRow]) -> str:
    lines = ["| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for r in rows:
        d = r.as_dict()
        lines.append("| " + " | ".join(d[k].replace("|", "\\|") for k, _ in MD_COLUMNS) + " |")
    return "\n".join(lines)


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _provenance_md(p: dict[str, Any]) -> str:
    git = p.get("git", {})
    commit = (git.get("commit") or "unknown")[:12]
    tree = {True: "uncommitted code changes: " + ", ".join(git.get("dirty_files", [])[:5]), False: "clean tree",
            None: "tree state unknown"}[git.get("dirty")]
    m, load, v = p.get("machine", {}), p.get("load_1min", {}), p.get("versions", {})
    gpus = f", GPUs: {', '.join(m['gpus'])}" if m.get("gpus") else ", no GPU"
    lines = [
        "## Provenance",
        "",
        "Rendered from `results.json` and `provenance.json` (which also holds the full config of every run).",
        "",
        f"- command: `{p.get('command', '')}`",
        f"- commit: `{commit}` ({tree}), started {p.get('date', '?')}",
        f"- machine: {m.get('cores', '?')} cores ({m.get('cpu', '?')}){gpus}; "
        f"{p.get('worker_processes', 1)} worker process(es) x {p.get('threads_per_process', '?')} thread(s)",
        f"- load average (1 min): {load.get('start')} at start, {load.get('end')} at the end"
        + (" - **measured under load**: timings are not trustworthy" if p.get("under_load") else ""),
        f"- wall-clock: {_fmt_duration(float(p.get('wall_clock_s', 0)))}",
        f"- versions: Python {v.get('python', '?')}, torch {v.get('torch', '?')}, torchvision {v.get('torchvision', '?')}",
    ]
    if p.get("runs"):
        lines.append(f"- training runs aggregated: {len(p['runs'])}")
    return "\n".join(lines)


def render_report(doc: dict[str, Any] | str | os.PathLike, provenance: dict[str, Any] | None = None) -> str:
    """``results.md`` from ``results.json`` (a dict, or a report folder / file path) and ``provenance.json``."""
    if not isinstance(doc, dict):
        path = Path(doc)
        folder = path if path.is_dir() else path.parent
        doc = json.loads((folder / "results.json").read_text())
        prov_path = folder / "provenance.json"
        if provenance is None and prov_path.is_file():
            provenance = json.loads(prov_path.read_text())
    parts = [f"# {doc['title']}", ""]
    if doc.get("intro"):
        parts += [doc["intro"].strip(), ""]
    for s in map(_section_from_json, doc.get("sections", [])):
        parts += [f"## {s.heading}", ""]
        if s.text:
            parts += [s.text.strip(), ""]
        if s.rows:
            parts += [_claims_table(s.rows), ""]
        if s.table is not None:
            parts += [s.table.markdown(), ""]
        if s.after:
            parts += [s.after.strip(), ""]
        for fig in s.figures:
            parts += [f"![{Path(fig).stem}]({fig})", ""]
    if doc.get("notes"):
        parts += [doc["notes"].strip(), ""]
    if provenance:
        parts += [_provenance_md(provenance), ""]
    return "\n".join(parts)


def write_report(out_dir: str | os.PathLike, title: str, sections: Sequence[Section], intro: str = "",
                 notes: str = "", provenance: Any = None, headline: str = "") -> Path:
    """Write ``results.json``, ``results.csv``, ``provenance.json`` (from a :class:`~shared.provenance.Provenance`
    or a dict) and the rendered ``results.md`` into ``out_dir``; return the path of ``results.md``.
    ``headline``: one sentence with the main numbers and verdicts, quoted in the root README's table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"title": title, "headline": headline, "intro": intro, "sections": [_section_to_json(s) for s in sections],
           "notes": notes}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    prov = None
    if provenance is not None:
        prov = provenance.write(out) if hasattr(provenance, "write") else provenance
        if not hasattr(provenance, "write"):
            (out / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    claim_rows = [{"section": s.heading, **r.as_dict()} for s in sections for r in s.rows]
    with open(out / "results.csv", "w", newline="") as f:
        fields = ["section"] + (list(claim_rows[0])[1:] if claim_rows else [k for k, _ in MD_COLUMNS])
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(claim_rows)
    md = out / "results.md"
    md.write_text(render_report(doc, prov))
    return md


# ------------------------------------------------------------------------------ README blocks

#: The papers in the order of the root README's table.
PACKAGE_ORDER = ("conv-adapter", "gradnorm-al", "depatch", "opanas", "ir-softmax", "ffwm", "crssc", "dada",
                 "metamixup", "landmark-ambiguity")
_MARK = "<!-- {name}:{end} (generated by `make readme` from results/ and benchmarks/: do not edit) -->"


def _between(text: str, name: str) -> tuple[int, int] | None:
    begin, end = _MARK.format(name=name, end="begin"), _MARK.format(name=name, end="end")
    if begin not in text or end not in text:
        return None
    return text.index(begin) + len(begin), text.index(end)


def _paper_title(repo: Path, pkg: str) -> str:
    import tomllib

    path = repo / "packages" / pkg / "pyproject.toml"
    if not path.is_file():
        return pkg
    data = tomllib.loads(path.read_text())
    return data.get("tool", {}).get("repro", {}).get("paper") or data["project"].get("description", pkg)


def papers_table(repo: str | os.PathLike) -> str:
    """The root README's table: one row per paper, the headline read from ``results/<pkg>/results.json``."""
    repo = Path(repo)
    rows = ["| paper | package | status | headline small-scale result (synthetic data, CPU; details in "
            "`results/<pkg>/results.md`) |", "|---|---|---|---|"]
    for pkg in PACKAGE_ORDER:
        results = repo / "results" / pkg / "results.json"
        if not (repo / "packages" / pkg).is_dir():
            rows.append(f"| {pkg} | `{pkg}` | planned | |")
            continue
        headline = _headline(json.loads(results.read_text())) if results.is_file() else ""
        status = "implemented" if headline else "implemented (no committed results)"
        rows.append(f"| {_paper_title(repo, pkg)} | [`{pkg}`](packages/{pkg}) | {status} | "
                    f"{headline.replace('|', '/')} |")
    return "\n".join(rows)


def _headline(doc: dict[str, Any]) -> str:
    """The report's ``headline``, or, when it has none, the count of each verdict over all its claim rows
    (never a hand-picked subset: the first rows alone can hide the claims that fail)."""
    if doc.get("headline"):
        return doc["headline"]
    counts: dict[str, int] = {}
    for s in map(_section_from_json, doc.get("sections", [])):
        for r in s.rows:
            verdict = r.as_dict()["holds"]
            if verdict not in ("n/a", ""):
                counts[verdict] = counts.get(verdict, 0) + 1
    if not counts:
        return ""
    order = sorted(counts, key=lambda v: ("holds", "does not hold", "inconclusive").index(v)
                   if v in ("holds", "does not hold", "inconclusive") else 3)
    return (f"{sum(counts.values())} claim rows: " + ", ".join(f"{counts[v]} {v}" for v in order)
            + " (no headline written; see the package's results)")


def results_block(report_dir: str | os.PathLike, link: str) -> str:
    """A package README's copy of a committed report: headline, every claim table and free table, and a link."""
    doc = json.loads((Path(report_dir) / "results.json").read_text())
    parts = []
    if _headline(doc):
        parts += [_headline(doc), ""]
    for s in map(_section_from_json, doc.get("sections", [])):
        if not (s.rows or s.table is not None):
            continue
        parts += [f"**{s.heading}**", ""]
        if s.rows:
            parts += [_claims_table(s.rows), ""]
        if s.table is not None:
            parts += [s.table.markdown(), ""]
    parts += [f"Full report, with the reasons, figures and provenance: [{link}]({link})."]
    return "\n".join(parts)


def sync_readmes(repo: str | os.PathLike, check: bool = False) -> list[str]:
    """Refresh the generated blocks of the root README (``papers``) and of every package README
    (``results``, ``bench``); with ``check`` only report which are stale. Returns the stale/updated blocks."""
    repo = Path(repo)
    jobs: list[tuple[Path, str, str]] = [(repo / "README.md", "papers", papers_table(repo))]
    for pkg in PACKAGE_ORDER:
        readme = repo / "packages" / pkg / "README.md"
        if not readme.is_file():
            continue
        for name, folder in (("results", repo / "results" / pkg), ("bench", repo / "benchmarks" / pkg)):
            if (folder / "results.json").is_file():
                link = f"../../{folder.relative_to(repo)}/results.md"
                jobs.append((readme, name, results_block(folder, link)))
    changed = []
    for path, name, block in jobs:
        text = path.read_text()
        span = _between(text, name)
        if span is None:
            changed.append(f"{path.relative_to(repo)}: no {name} block (add the two marker lines)")
            continue
        new = text[:span[0]] + "\n" + block + "\n" + text[span[1]:]
        if new != text:
            changed.append(f"{path.relative_to(repo)}: {name} block is stale")
            if not check:
                path.write_text(new)
    return changed


if __name__ == "__main__":  # `make readme`
    import sys

    stale = sync_readmes(Path.cwd(), check="--check" in sys.argv)
    print("\n".join(stale) if stale else "README blocks are up to date")
    missing = [s for s in stale if "no " in s and "block" in s]
    raise SystemExit(1 if missing or ("--check" in sys.argv and stale) else 0)
