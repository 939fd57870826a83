import pytest
import torch
from conftest import cnn_xs_with_bn_stats
from torch import nn

from nfedge.models import create_base_model
from nfedge.sram.faults import InjectConfig
from nfedge.sram.image import build_image
from nfedge.train.perturb import fold_batchnorm, perturbed_weights


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
    return model.eval()


@pytest.mark.parametrize("make, n_bn", [(lambda: cnn_xs_with_bn_stats(), 3),
                                        (lambda: _randomise_bn(create_base_model("resnet18", 1, 10)), 20)])
def test_folded_base_computes_the_same_logits_and_input_gradients(make, n_bn):
    model = make()
    image = build_image(model, 8)
    w = perturbed_weights(image, InjectConfig(ber=0.01, chip=2))  # faulty weights, as in an EOPM step
    fb = fold_batchnorm(model)
    assert fb.folded == n_bn  # every BatchNorm2d follows a conv in these models
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fb.module.modules())
    x = (torch.rand(3, 1, 32, 32) * 2 - 1).requires_grad_(True)
    ref = torch.func.functional_call(model, w, (x,))
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    out = torch.func.functional_call(fb.module, fb.weights(w), (x,))
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(g_out, g_ref, rtol=1e-3, atol=1e-4 * float(g_ref.abs().max()))
    assert not torch.allclose(out, model(x))  # the faulty weights were used, not the module's own
    assert torch.allclose(fb.module(x), model(x), rtol=1e-4, atol=1e-4)  # the module alone is folded too


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) if float(x.sum()) > 0 else x  # not traceable by torch.fx


def test_untraceable_model_is_used_unfolded():
    m = _DataDependent().eval()
    fb = fold_batchnorm(m)
    assert fb.module is m and fb.folded == 0
    w = {"conv.weight": torch.ones(4, 1, 3, 3)}
    assert fb.weights(w)["conv.weight"] is w["conv.weight"]


def test_fold_refuses_a_training_mode_model():
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(create_base_model("cnn-xs", 1, 10).train())
