"""Selection strategies: known values, core-set on a toy set, budget/uniqueness, the select() API."""

import pytest
import torch
from torch import nn

from gradnorm_al import k_center_greedy, list_strategies, select
from gradnorm_al.strategies import get_strategy


class FixedLogits(nn.Module):
    """Ignores its input's content: sample i gets logits[i] (the input is the row index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits[x.long().view(-1)]


def test_uncertainty_scores_have_known_orders():
    probs = torch.tensor([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0001], [1 / 3, 1 / 3, 1 / 3]])
    model = FixedLogits(probs.log())
    rows = torch.arange(4)
    assert select(model, rows, 1, "entropy").tolist() == [3]           # uniform has the largest entropy
    assert select(model, rows, 1, "least_confidence").tolist() == [3]  # max p = 1/3
    assert select(model, rows, 1, "margin").tolist() == [2]            # top-2 tie: margin 0
    assert select(model, rows, 4, "entropy").tolist() == [3, 1, 2, 0]


def test_gradnorm_prefers_intermediate_uncertainty_unlike_entropy():
    from gradnorm_al import entropy_logit_gradient

    probs = torch.tensor([[1 - 2e-9, 1e-9, 1e-9], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]],
                         dtype=torch.float64)
    model = FixedLogits(probs.log())
    rows = torch.arange(4)
    # the gradient reaches only the row's own logits: score = ||dH/dz|| = ||-p (log p + H)||
    expected = entropy_logit_gradient(probs.log()).norm(dim=1)
    assert expected[0] < 1e-6 and expected[3] < 1e-12 and expected[1:3].min() > 0.1
    assert select(model, rows, 4, "entropy_gradnorm", impl="loop").tolist() == torch.sort(-expected, stable=True).indices.tolist()
    assert set(select(model, rows, 2, "entropy_gradnorm", impl="loop").tolist()) == {1, 2}
    assert select(model, rows, 1, "entropy").tolist() == [3]  # max-entropy picks the uniform row instead


def test_coreset_picks_the_known_farthest_points():
    feats = torch.tensor([[1.0], [2.0], [3.0], [10.0], [11.0]])
    centres = torch.tensor([[0.0]])
    # farthest from 0 is 11 (pos 4); then the distances to {0, 11} are 1, 2, 3, 1 -> 3 (pos 2)
    assert k_center_greedy(feats, centres, 2).tolist() == [4, 2]
    assert k_center_greedy(feats, centres, 5).tolist()[:2] == [4, 2]
    assert sorted(k_center_greedy(feats, centres, 5).tolist()) == [0, 1, 2, 3, 4]


def test_coreset_through_select_uses_penultimate_features_and_labelled_centres():
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 3))  # features = the input itself
    pool = torch.tensor([[0.0, 1.0], [5.0, 5.0], [0.1, 0.0], [-4.0, 0.0]])
    labelled = torch.tensor([[0.0, 0.0], [5.0, 4.0]])
    # distances to the labelled set: 1, 1, 0.1, 4 -> pos 3 first; then 1 vs 1 (tie -> lower position 0)
    assert select(model, pool, 2, "coreset", labelled=labelled).tolist() == [3, 0]


def test_bald_is_zero_when_dropout_cannot_change_the_output_and_positive_otherwise():
    torch.manual_seed(0)
    dead = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3))
    with torch.no_grad():
        dead[1].weight.zero_()
        dead[1].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    x = torch.randn(6, 4)
    s = get_strategy("bald").scores(dead, x, _ctx())
    assert s.abs().max() < 1e-12
    live = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3))
    assert get_strategy("bald").scores(live, x, _ctx()).min() > 0
    with pytest.raises(ValueError, match="needs MC dropout"):
        select(nn.Linear(4, 3), x, 2, "bald")


def _ctx():
    from gradnorm_al.strategies import SelectionContext

    return SelectionContext(mc_samples=8)


@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_returns_budget_distinct_positions(strategy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    pool, labelled = torch.randn(20, 3, 2, 2), torch.randn(5, 3, 2, 2)
    model.train()
    idx = select(model, pool, 7, strategy, labelled=labelled, seed=1)
    assert len(idx) == 7 and len(set(idx.tolist())) == 7 and 0 <= idx.min() and idx.max() < 20
    assert model.training  # select() leaves the mode as it found it
    if strategy == "random":
        assert torch.equal(idx, select(model, pool, 7, "random", seed=1))
        assert not torch.equal(idx, select(model, pool, 7, "random", seed=2))


def test_select_rejects_bad_budgets_and_strategies():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="exceeds the 3 unlabelled"):
        select(model, torch.randn(3, 2), 4, "entropy")
    with pytest.raises(ValueError, match="strategy=.badge. is not a known name"):
        select(model, torch.randn(3, 2), 1, "badge")
    assert select(model, torch.randn(3, 2), 0, "entropy").numel() == 0


def test_select_accepts_a_dataset():
    ds = torch.utils.data.TensorDataset(torch.arange(4), torch.zeros(4))
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01]])
    assert select(FixedLogits(probs.log()), ds, 2, "entropy", batch_size=3).tolist() == [1, 2]
