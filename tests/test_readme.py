"""The README tables are generated from the committed results (`make readme`), never edited by hand."""

from pathlib import Path

from shared.report import PACKAGE_ORDER, papers_table, sync_readmes

REPO = Path(__file__).resolve().parents[1]


def test_readme_blocks_match_the_committed_results():
    stale = sync_readmes(REPO, check=True)
    assert not stale, "run `make readme` and commit:\n  " + "\n  ".join(stale)


def test_every_package_is_in_the_papers_table():
    packages = {p.name for p in (REPO / "packages").glob("*") if (p / "pyproject.toml").is_file()}
    assert packages <= set(PACKAGE_ORDER)
    table = papers_table(REPO)
    for pkg in packages:
        assert f"[`{pkg}`](packages/{pkg})" in table
