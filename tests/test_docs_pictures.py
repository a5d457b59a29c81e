"""The pictures of the docs and reports: leaderboard forest plot, failure gallery, detection
examples, and histograms whose range survives a heavy tail."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vos_det.evaluation.records import DetectionRecords
from vos_det.evaluation.plots import (
    histogram_range,
    plot_detection_examples,
    plot_failure_gallery,
    plot_score_histograms,
)

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def leaderboard_plots():
    import leaderboard_plots  # benchmarks/ is on sys.path (tests/conftest.py)

    return leaderboard_plots


def test_forest_plot_of_the_committed_leaderboard(leaderboard_plots, tmp_path):
    payload = json.loads((REPO / "benchmarks" / "results" / "ood_leaderboard.json").read_text())
    path = leaderboard_plots.plot_leaderboard_forest(payload, str(tmp_path / "forest.png"))
    width, height = Image.open(path).size
    rows = max(len(table["rows"]) for table in payload["tables"].values()) - 1  # the reference is not drawn
    assert height == round(100 * (1.6 + 0.24 * rows))
    assert width == round(100 * (6.0 * len(payload["tables"]) + 1.5))
    assert leaderboard_plots.forest_path("a/ood_leaderboard.json") == "a/ood_leaderboard_forest.png"


def test_forest_plot_of_a_run_without_the_reference(leaderboard_plots, tmp_path):
    """A run of one method alone (--methods vos) has rows without paired differences: they get
    no interval, the plot is still written."""
    payload = json.loads((REPO / "benchmarks" / "results" / "ood_leaderboard_r18.json").read_text())
    for table in payload["tables"].values():
        table["rows"] = [row for row in table["rows"] if row["method"] != payload["reference"][0]]
        for row in table["rows"]:
            for cell in row.values():
                if isinstance(cell, dict) and "diff" in cell:
                    cell["diff"] = None
    path = leaderboard_plots.plot_leaderboard_forest(payload, str(tmp_path / "forest.png"))
    assert Path(path).read_bytes()[:8] == PNG_MAGIC


def test_histogram_range_leaves_out_a_heavy_tail():
    values = np.concatenate([np.linspace(0.0, 10.0, 1000), [6e6, np.nan, np.inf]])
    low, high, outside = histogram_range(values)
    assert low == 0.0 and high < 11.0  # the bulk fills the axis
    assert outside == 1  # 6e6, and only it (NaN and inf are not counted)
    assert histogram_range(np.linspace(0.0, 1.0, 50))[2] == 0  # no tail, nothing left out
    assert histogram_range(np.array([3.0, 3.0])) == (3.0, 4.0, 0)


def test_histogram_title_says_how_many_boxes_are_outside(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_title", lambda self, text, **kw: titles.append(text))
    id_scores = {"mahalanobis_multilayer": np.concatenate([np.linspace(0, 5, 200), [6e6]])}
    ood_scores = {"mahalanobis_multilayer": np.linspace(3, 9, 100)}
    plot_score_histograms(id_scores, ood_scores, str(tmp_path / "h.png"), id_name="id", ood_name="ood")
    assert titles == ["mahalanobis_multilayer\n1 of 301 boxes outside the range shown"]


def _scene(tmp_path, name, count):
    """``count`` images of 64 x 64 with one box each, and their records (OOD score = index)."""
    files = {}
    for index in range(count):
        path = tmp_path / f"{name}{index}.png"
        Image.fromarray(np.full((64, 64, 3), 40 * index % 255, dtype=np.uint8)).save(path)
        files[f"{name}{index}"] = str(path)
    records = DetectionRecords(
        image_ids=np.array(list(files), dtype=object),
        boxes=np.tile([10.0, 12.0, 30.0, 40.0], (count, 1)),
        classes=np.zeros(count, dtype=np.int64),
        scores=np.full(count, 0.9),
        ood_score_table={"vos": np.arange(count, dtype=np.float64) / count},
        num_images=count,
    )
    return records, files


def test_failure_gallery_shows_the_most_fooling_boxes(tmp_path, monkeypatch):
    id_records, id_files = _scene(tmp_path, "id", 10)
    ood_records, ood_files = _scene(tmp_path, "ood", 3)
    titles = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_title", lambda self, text, **kw: titles.append(text))
    path = plot_failure_gallery(
        id_records, ood_records, str(tmp_path / "gallery.png"), score="vos", id_files=id_files, ood_files=ood_files,
        class_names=["zero"], id_name="id", ood_name="ood",
    )
    assert Path(path).read_bytes().startswith(PNG_MAGIC)
    # First the OOD boxes, most ID-like (lowest score) first; then the 8 most OOD-like ID boxes.
    ood_scores = [0.0, 1 / 3, 2 / 3]
    id_scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    assert titles == [f"zero 0.90\nOOD {s:.3g}" for s in ood_scores + id_scores]


def test_failure_gallery_without_any_box(tmp_path):
    empty = DetectionRecords.empty(["vos"])
    assert plot_failure_gallery(
        empty, empty, str(tmp_path / "g.png"), score="vos", id_files={}, ood_files={}, class_names=[],
        id_name="i", ood_name="o",
    ) is None


def test_detection_examples_draw_the_verdict(tmp_path, monkeypatch):
    id_records, id_files = _scene(tmp_path, "id", 4)
    ood_records, ood_files = _scene(tmp_path, "ood", 2)
    drawn = []

    def fake_draw(image, instances, class_names):
        drawn.append(instances.is_ood.tolist())
        return image

    monkeypatch.setattr("vos_det.evaluation.plots.draw_ood_detections", fake_draw)
    path = plot_detection_examples(
        id_records, ood_records, str(tmp_path / "examples.png"), score="vos", threshold=0.3,
        id_files=id_files, ood_files=ood_files, class_names=["zero"], id_name="id", ood_name="ood",
    )
    assert Path(path).read_bytes().startswith(PNG_MAGIC)
    # The first 3 ID images (scores 0, 0.25, 0.5) and both OOD images (0, 0.5), flagged above 0.3.
    assert drawn == [[False], [False], [True], [False], [True]]
