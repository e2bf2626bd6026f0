import pytest
import torch
from torch import nn

from hf_mixssl.models.heads import SplitBatchNorm, build_mlp, convert_split_bn, revert_split_bn


class TestBuildMLP:
    def test_moco_v2_head(self):
        mlp = build_mlp([512, 512, 128])
        assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
        assert mlp[0].bias is not None

    def test_moco_v3_projector(self):
        mlp = build_mlp([64, 32, 16], norm=True, bias=False, last_norm=True, last_norm_affine=False)
        assert [type(m) for m in mlp] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
        assert mlp[0].bias is None and mlp[3].bias is None
        assert mlp[4].weight is None  # last BN without affine

    def test_bad_dims(self):
        with pytest.raises(ValueError, match="dims"):
            build_mlp([8])


class TestSplitBatchNorm:
    def test_matches_per_split_batchnorm(self):
        torch.manual_seed(0)
        x = torch.randn(8, 3, 4, 4)
        split = SplitBatchNorm(3, num_splits=2).train()
        out = split(x)
        for j in range(2):  # split j holds samples j, j+2, j+4, ...
            ref = nn.BatchNorm2d(3).train()(x[j::2])
            assert torch.allclose(out[j::2], ref, atol=1e-5)

    def test_eval_is_plain_bn_and_convert_roundtrip(self):
        model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        convert_split_bn(model, 4)
        assert isinstance(model[1], SplitBatchNorm)
        keys = set(model.state_dict())
        revert_split_bn(model)
        assert type(model[1]) is nn.BatchNorm2d and set(model.state_dict()) == keys
