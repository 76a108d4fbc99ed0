"""optimize_for_inference: same features as the trained model, faster layout."""
import pytest
import torch
from conftest import randomize_bn

from hacnn import HACNN
from hacnn.blocks import ConvBlock
from hacnn.inference import CUDAGraphFeatures, FusedInceptionA, FusedInceptionB, fold_conv_bn, optimize_for_inference


def test_fold_conv_bn_hand_example():
    """1x1 conv w=2, b=1; BN mu=3, var=4-eps, gamma=0.5, beta=1: y = (2x+1-3)/2*0.5+1 = 0.5x + 0.5."""
    block = ConvBlock(1, 1, 1, act=False).eval()
    with torch.no_grad():
        block.conv.weight.fill_(2.0)
        block.conv.bias.fill_(1.0)
        block.bn.running_mean.fill_(3.0)
        block.bn.running_var.fill_(4.0 - block.bn.eps)
        block.bn.weight.fill_(0.5)
        block.bn.bias.fill_(1.0)
    conv = fold_conv_bn(block)
    assert conv.weight.item() == pytest.approx(0.5) and conv.bias.item() == pytest.approx(0.5)
    x = torch.tensor([[[[0.0, 2.0]]]])
    torch.testing.assert_close(conv(x), torch.tensor([[[[0.5, 1.5]]]]))


@pytest.mark.parametrize("kw", [{}, dict(attention_relu=False), dict(local_branch=False)])
def test_optimized_model_matches_eval_model(kw):
    m = randomize_bn(HACNN(9, **kw)).eval()
    fast = optimize_for_inference(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fast.modules())
    assert any(isinstance(x, FusedInceptionA) for x in fast.modules())
    assert any(isinstance(x, FusedInceptionB) for x in fast.modules())
    x = torch.randn(4, 3, 160, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), m(x), atol=1e-5, rtol=0)
    assert m.training is False and any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_bf16_weights_keep_the_features():
    m = randomize_bn(HACNN(9)).eval()
    fast = optimize_for_inference(m, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    x = torch.randn(4, 3, 160, 64)
    with torch.no_grad():
        f16 = fast(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
        cos = torch.nn.functional.cosine_similarity(f16, m(x), dim=1)
    assert cos.min() > 0.999, cos


# ----------------------------------------------------------------------------- CUDA graphs

def test_cuda_graphs_on_the_cpu_are_one_clear_error():
    m = HACNN(9).eval()
    with pytest.raises(ValueError, match=r"CUDA graphs need a model on a CUDA device; this one is on cpu\. "
                                         r"Elsewhere run the model itself"):
        CUDAGraphFeatures(optimize_for_inference(m), batch_size=8)
    with pytest.raises(ValueError, match="capture an eval-mode model"):
        CUDAGraphFeatures(m.train(), batch_size=8)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        CUDAGraphFeatures(m.eval(), batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("optimize", [False, True])
def test_cuda_graph_features_equal_the_eager_forward(optimize):
    """Batches of 8: 19 images are two full batches and one padded (3 of 8); TF32 off on both sides."""
    m = randomize_bn(HACNN(9)).cuda().eval()
    net = optimize_for_inference(m) if optimize else m
    layout = torch.channels_last if optimize else torch.contiguous_format
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        graphed = CUDAGraphFeatures(net, batch_size=8, channels_last=optimize)
        with torch.no_grad():
            for n in (19, 8, 5):                  # each call replays the same graph on new images
                x = torch.randn(n, 3, 160, 64)
                got = graphed(x)                  # from host memory, NCHW
                assert got.shape == (n, 1024) and got.device.type == "cuda"
                torch.testing.assert_close(got, net(x.cuda().contiguous(memory_format=layout)), rtol=1e-4,
                                           atol=1e-5)
            half = CUDAGraphFeatures(net, batch_size=8, autocast=torch.bfloat16, channels_last=optimize)
            x = torch.randn(11, 3, 160, 64, device="cuda").contiguous(memory_format=layout)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                want = net(x).float()
            cos = torch.nn.functional.cosine_similarity(half(x).float(), want, dim=1)
            assert cos.min() > 0.9999, cos
            assert graphed(x[:0]).shape == (0, 1024)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
