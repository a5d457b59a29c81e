"""The published seed tables (benchmarks/results/*.md) are re-made from their JSON by today's code."""
import contextlib
import io
import json
from collections import OrderedDict
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _stored(name):
    """A results JSON, with the seeds back to ints (JSON keys are strings)."""
    payload = json.loads((RESULTS / f"{name}.json").read_text(), object_pairs_hook=OrderedDict)
    payload["per_model"] = OrderedDict(
        (method, OrderedDict((int(seed), value) for seed, value in seeds.items()))
        for method, seeds in payload["per_model"].items()
    )
    return payload


def _leaderboard_tables(payload):
    import ood_leaderboard  # benchmarks/ is on sys.path (tests/conftest.py)

    with contextlib.redirect_stdout(io.StringIO()):
        return ood_leaderboard.leaderboard_tables(
            payload["per_model"], payload["training_diagnostics"], list(payload["protocols"]), payload["confidence"]
        )


def _without_new_columns(rows, stored_rows):
    """The rows with only the keys of the stored ones (a table made before a column was added)."""
    return [{key: row[key] for key in stored} for row, stored in zip(rows, stored_rows)]


@pytest.mark.parametrize("name", ["ood_leaderboard", "ood_leaderboard_r18"])
def test_leaderboard_rows_are_remade_from_the_cached_summaries(name):
    payload = _stored(name)
    tables, _ = _leaderboard_tables(payload)
    for protocol, stored in payload["tables"].items():
        rows = json.loads(json.dumps(tables[protocol]["rows"]))
        assert len(rows) == len(stored["rows"])
        assert _without_new_columns(rows, stored["rows"]) == stored["rows"]
        assert tables[protocol]["target"] == stored["target"]
        if "shift_guide" in stored:  # tables made before the guide have none
            assert tables[protocol]["shift_guide"] == stored["shift_guide"]


def test_r18_leaderboard_markdown_is_remade_byte_for_byte():
    # ood_leaderboard.md itself predates the matched far split's columns and the target line.
    _, markdown = _leaderboard_tables(_stored("ood_leaderboard_r18"))
    assert markdown == (RESULTS / "ood_leaderboard_r18.md").read_text()


def test_digits_cls_markdown_is_remade_byte_for_byte():
    import ood_leaderboard

    payload = _stored("digits_cls_seeds")
    with contextlib.redirect_stdout(io.StringIO()):
        _, verdict, markdown = ood_leaderboard.classification_tables(payload["per_model"])
    assert markdown == (RESULTS / "digits_cls_seeds.md").read_text()
    # The file written before the two studies shared one script names the verdict target_met_by.
    stored = payload["target"]["met_by"] if "target" in payload else payload["target_met_by"]
    assert verdict["met_by"] == stored


def _shift_guide_table(markdown, protocol):
    """The table lines of one protocol's "which score for which shift" section."""
    section = markdown[markdown.index(f"#### Which score for which shift (`{protocol}`)"):]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_readme_shows_the_published_shift_guide():
    # README's results table is the R-18 leaderboard's guide under vos_det, copied line for line.
    guide = _shift_guide_table((RESULTS / "ood_leaderboard_r18.md").read_text(), "vos_det")
    readme = (RESULTS.parent.parent / "README.md").read_text().splitlines()
    assert len(guide) >= 3
    start = readme.index(guide[0])
    assert readme[start:start + len(guide)] == guide
