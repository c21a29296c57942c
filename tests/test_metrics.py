import csv

import pytest
import torch

from shared.metrics import ResultRow, confusion_matrix, mean_std, topk_accuracy, write_results


def test_topk_known_values():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2, top3 = topk_accuracy(logits, target, (1, 2, 3))
    assert top1 == 25.0 and top2 == 50.0 and top3 == 100.0


def test_confusion_matrix_known():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 2, 0]), 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_write_results(tmp_path):
    rows = [ResultRow("synthetic 10-class", "top-1 (%)", [80.0, 82.0, 84.0], baseline=[70.0, 71.0, 72.0],
                      paper="77.4 vs 75.1", direction="higher", holds=True)]
    csv_path, md_path = write_results(rows, tmp_path, "Title", preamble="Data: synthetic.")
    rec = list(csv.DictReader(open(csv_path)))[0]
    assert rec["ours"] == "82.00 ± 2.00" and rec["baseline"] == "71.00 ± 1.00" and rec["holds"] == "yes"
    md = md_path.read_text()
    assert "| setting | metric | ours (mean ± std) | n seeds | baseline | paper value | claimed direction | holds? |" in md
    assert "| synthetic 10-class | top-1 (%) | 82.00 ± 2.00 | 3 | 71.00 ± 1.00 | 77.4 vs 75.1 | higher | yes |" in md
