"""The shared projection-head builder keeps each objective's head as it was built before."""

import pytest
import torch
from torch import nn

from objectives.helpers.heads import projection_head


@pytest.mark.parametrize(
    "activation,out_bias,keys",
    [
        (nn.GELU, False, ["0.weight", "0.bias", "2.weight"]),  # contrastive
        (nn.GELU, True, ["0.weight", "0.bias", "2.weight", "2.bias"]),  # masked audio
        (nn.ReLU, True, ["0.weight", "0.bias", "2.weight", "2.bias"]),  # graph contrastive
    ],
)
def test_mlp_head_layers_names_and_seeded_init(activation, out_bias, keys):
    torch.manual_seed(3)
    head = projection_head(8, 4, "mlp", activation=activation, out_bias=out_bias)
    assert list(head.state_dict()) == keys
    assert isinstance(head[1], activation)
    # created hidden layer first, then output layer: the same draws as building them by hand
    torch.manual_seed(3)
    by_hand = nn.Sequential(nn.Linear(8, 8), activation(), nn.Linear(8, 4, bias=out_bias))
    for name, tensor in by_hand.state_dict().items():
        assert torch.equal(head.state_dict()[name], tensor), name
    assert head(torch.ones(2, 8)).shape == (2, 4)


@pytest.mark.parametrize("out_bias,keys", [(False, ["weight"]), (True, ["weight", "bias"])])
def test_linear_head(out_bias, keys):
    torch.manual_seed(1)
    head = projection_head(8, 4, "linear", out_bias=out_bias)
    torch.manual_seed(1)
    assert list(head.state_dict()) == keys
    assert torch.equal(head.weight, nn.Linear(8, 4, bias=out_bias).weight)


def test_unknown_head_kind_lists_choices():
    with pytest.raises(ValueError, match=r"Could not resolve head 'deep' among choices \['linear', 'mlp'\]"):
        projection_head(8, 4, "deep")
