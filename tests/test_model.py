"""HA-CNN components and the full model: shapes, ranges, gradients, paths."""
import pytest
import torch
import torch.nn.functional as F

import hacnn
from hacnn import (HACNN, HACNNConfig, HardRegionalAttention, InceptionA, InceptionB,
                   SoftAttention, SoftChannelAttention, SoftSpatialAttention)
from hacnn.attention import dense_region_matrices, region_matrices, stripe_translations
from hacnn.blocks import AvgPool3x3, ConvBlock, mean_keep_layout


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 160, 64, generator=g)


def test_inception_shapes():
    x = torch.randn(2, 32, 80, 32)
    assert InceptionA(32, 128)(x).shape == (2, 128, 80, 32)
    assert InceptionB(32, 128)(x).shape == (2, 128, 40, 16)



LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("fmt", LAYOUTS)
def test_avg_pool_3x3_is_avg_pool2d_with_its_adjoint_as_backward(fmt):
    """Same forward bit for bit; the gradient is the pool's adjoint (checked in float64), in x's layout."""
    x = torch.randn(2, 5, 7, 4, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn(2, 5, 7, 4, dtype=torch.float64)
    y = AvgPool3x3()(x)
    assert torch.equal(y, F.avg_pool2d(x, 3, stride=1, padding=1))
    (grad,) = torch.autograd.grad(y, x, g)
    # brute force: d y[o] / d x[i] = 1/9 for every o whose 3x3 window holds i (padding counted)
    ref = torch.zeros_like(g)
    for i in range(7):
        for j in range(4):
            ref[:, :, i, j] = g[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].sum((2, 3)) / 9
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-15)
    assert grad.is_contiguous(memory_format=fmt)
    with torch.no_grad():                                      # eval / export: plain avg_pool2d
        assert torch.equal(AvgPool3x3()(x), y)


@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dims", [(2, 3), (1,)])
def test_mean_keep_layout_equals_mean_and_keeps_the_gradient_layout(fmt, dims):
    x0 = torch.randn(3, 8, 5, 4).contiguous(memory_format=fmt)
    x, xr = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    y, yr = mean_keep_layout(x, dims), xr.mean(dims, keepdim=True)
    assert torch.equal(y, yr)
    g = torch.randn_like(yr)
    (grad,), (ref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(yr, xr, g)
    assert torch.equal(grad, ref)                              # the same numbers ...
    assert grad.is_contiguous(memory_format=fmt)               # ... in x's layout
    if fmt == torch.channels_last:
        assert not ref.is_contiguous(memory_format=fmt)        # where mean's own backward is NCHW
    with pytest.raises(ValueError, match=r"\(2, 3\) or \(1,\)"):
        mean_keep_layout(x, (3,))


@pytest.mark.parametrize("n, m, s", [(80, 24, 0.25), (32, 28, 1.0), (20, 6, 0.25), (12, 5, 0.5),
                                     (6, 1, 1.0), (5, 9, 1.0)])
def test_region_matrices_equal_the_dense_transformer_times_resize(n, m, s):
    """Values and d/dt, for boxes inside, across and outside the image, down- and upsampling."""
    t = torch.linspace(-1.3, 1.3, 27, dtype=torch.float64).view(3, 9)
    t[0, :3] = torch.tensor([0.0, -0.75, 0.5], dtype=torch.float64)   # on-pixel coordinates (kinks)
    w = torch.randn(3, 9, m, n, dtype=torch.float64)
    got, ref = t.clone().requires_grad_(), t.clone().requires_grad_()
    a, b = region_matrices(got, s, n, m), dense_region_matrices(ref, s, n, m).float()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    (a.double() * w).sum().backward()
    (b.double() * w).sum().backward()
    torch.testing.assert_close(got.grad, ref.grad, rtol=0, atol=1e-12)


def test_crop_precision_in_training_and_inference():
    """Training under bf16 autocast: bf16 products, within a few bf16 ulps of float32.
    Without a gradient: float32 products, so the bf16 result is the float32 crop rounded once."""
    ha = HardRegionalAttention(32, num_regions=4)
    x = torch.randn(4, 32, 40, 16).contiguous(memory_format=torch.channels_last)
    theta = torch.rand(4, 4, 2) - 0.5
    ref = ha.crop(x, theta, (12, 14))
    assert ref.dtype == torch.float32
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ha.crop(xb, theta, (12, 14))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    err = (out.float() - ref).abs() / ref.abs().clamp_min(1.0)
    assert err.max() < 4 * 2 ** -8, err.max()      # input, weights and result each rounded to bf16
    assert err.max() > 2 ** -9                     # ... and the products really ran in bf16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inference = ha.crop(xb, theta, (12, 14))
    exact = ha.crop(xb.detach().float(), theta, (12, 14)).bfloat16()
    assert inference.dtype == torch.bfloat16 and torch.equal(inference, exact)


def test_soft_attention_components_shapes_and_range():
    x = torch.randn(4, 64, 20, 8)
    assert SoftSpatialAttention()(x).shape == (4, 1, 20, 8)
    assert SoftChannelAttention(64)(x).shape == (4, 64, 1, 1)
    for relu, lo in ((True, 0.5), (False, 0.0)):
        a = SoftAttention(64, relu=relu)(x)
        assert a.shape == x.shape
        assert a.min() >= lo and a.max() < 1
        assert a.min() > 0
    # without the ReLU the attention really uses the lower half of (0, 1)
    assert SoftAttention(64, relu=False)(x).min() < 0.5


def test_spatial_attention_is_shared_across_channels():
    """Permuting channels must not change the spatial map (it averages over channels)."""
    m = SoftSpatialAttention().eval()
    x = torch.randn(2, 16, 10, 4)
    torch.testing.assert_close(m(x), m(x[:, torch.randperm(16)]))


def test_hard_attention_starts_on_the_four_stripes():
    ha = HardRegionalAttention(64, num_regions=4)
    theta = ha(torch.randn(3, 64, 10, 4))
    expected = torch.tensor([[0.0, -0.75], [0.0, -0.25], [0.0, 0.25], [0.0, 0.75]])
    torch.testing.assert_close(theta, expected.expand(3, 4, 2), atol=1e-6, rtol=0)
    boxes = ha.boxes(theta, (160, 64))[0]
    torch.testing.assert_close(boxes, torch.tensor(
        [[0.0, 0, 64, 40], [0, 40, 64, 80], [0, 80, 64, 120], [0, 120, 64, 160]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(stripe_translations(2), torch.tensor([[0.0, -0.5], [0.0, 0.5]]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_crop_equals_per_region_spatial_transformer(channels_last):
    """The batched separable crop == T separate spatial transformers + resize (reference), both layouts."""
    ha = HardRegionalAttention(8, num_regions=4)
    x = torch.randn(3, 8, 20, 8)
    theta = torch.rand(3, 4, 2) * 1.6 - 0.8
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = ha.crop(x, theta, (6, 7))
    # the crop keeps the input's layout, so a channels_last model stays channels_last
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    out = out.reshape(3, 4, 8, 6, 7)
    x, theta = x.double(), theta.double()          # float64 reference
    for t in range(4):
        aff = torch.zeros(3, 2, 3, dtype=torch.float64)
        aff[:, 0, 0], aff[:, 1, 1] = 1.0, 0.25
        aff[:, :, 2] = theta[:, t]
        grid = F.affine_grid(aff, list(x.shape), align_corners=False)
        ref = F.interpolate(F.grid_sample(x, grid, align_corners=False), (6, 7),
                            mode="bilinear", align_corners=True)
        torch.testing.assert_close(out[:, t].double(), ref, atol=2e-6, rtol=0)


def test_crop_of_stripe_reads_the_right_rows():
    """Hand-worked: an image whose value is its row's stripe index crops to constants."""
    ha = HardRegionalAttention(1, num_regions=4)
    rows = torch.arange(80).div(20, rounding_mode="floor").float()       # stripe id per row
    x = rows.view(1, 1, 80, 1).expand(1, 1, 80, 32).contiguous()
    crops = ha.crop(x, stripe_translations(4).unsqueeze(0), (24, 28))     # (4, 1, 24, 28)
    for t in range(4):
        # away from the stripe borders the crop sees only stripe t
        torch.testing.assert_close(crops[t, 0, 2:-2], torch.full((20, 28), float(t)))


def test_crop_gradient_matches_grid_sample():
    """d crop / d theta equals the spatial transformer's (grid_sample) gradient."""
    ha = HardRegionalAttention(4, num_regions=2, scale=(1.0, 0.5))
    x = torch.randn(2, 4, 12, 6, dtype=torch.float64)
    theta = (torch.rand(2, 2, 2, dtype=torch.float64) - 0.5).requires_grad_()
    w = torch.randn(4, 4, 5, 3, dtype=torch.float64)
    (ha.crop(x, theta, (5, 3)).double() * w).sum().backward()
    g_ours = theta.grad.clone()
    theta.grad = None
    aff = torch.cat([torch.diag_embed(torch.tensor([1.0, 0.5], dtype=torch.float64)).expand(2, 2, 2, 2),
                     theta.unsqueeze(-1)], -1).reshape(4, 2, 3)
    grid = F.affine_grid(aff, [4, 4, 12, 6], align_corners=False)
    ref = F.grid_sample(x.repeat_interleave(2, 0), grid, align_corners=False)
    ref = F.interpolate(ref, (5, 3), mode="bilinear", align_corners=True)
    (ref * w).sum().backward()
    torch.testing.assert_close(g_ours, theta.grad, atol=1e-4, rtol=1e-4)


def test_crop_channels_last_gradients_equal_contiguous():
    """Both crop paths (einsum / channels_last matmuls) give the same gradients for x and theta."""
    ha = HardRegionalAttention(5, num_regions=3)
    x0 = torch.randn(2, 5, 16, 6)
    theta0 = torch.rand(2, 3, 2) - 0.5
    w = torch.randn(6, 5, 4, 3)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = x0.clone().contiguous(memory_format=fmt).requires_grad_()
        theta = theta0.clone().requires_grad_()
        (ha.crop(x, theta, (4, 3)) * w).sum().backward()
        grads.append((x.grad, theta.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-4, rtol=1e-5)


def test_model_outputs_and_feature_dim(batch):
    m = HACNN(7)
    out = m(batch)
    assert isinstance(out, hacnn.HACNNOutput)
    assert out.global_logits.shape == out.local_logits.shape == (6, 7)
    assert out.global_features.shape == out.local_features.shape == (6, 512)
    m.eval()
    f = m(batch)
    assert f.shape == (6, 1024) and m.feature_dim == 1024
    # each half is L2-normalised
    torch.testing.assert_close(f[:, :512].norm(dim=1), torch.ones(6))
    torch.testing.assert_close(f[:, 512:].norm(dim=1), torch.ones(6))


def test_every_parameter_gets_a_gradient(batch):
    m = HACNN(5)
    out = m(batch)
    y = torch.arange(6) % 5
    (F.cross_entropy(out.global_logits, y) + F.cross_entropy(out.local_logits, y)).backward()
    # Into a batch norm in training mode, a conv's bias shifts each channel by a constant the norm
    # subtracts again, and the weight of a 1x1 conv from one channel to one only scales it by a
    # factor the norm divides out again (the spatial attention's last conv): their gradients are 0
    # in exact arithmetic, float32 rounding in practice, so they need only reach the graph; every
    # other parameter's gradient must be non-zero.
    blocks = {n: mod.conv for n, mod in m.named_modules() if isinstance(mod, ConvBlock)}
    cancelled = {f"{n}.conv.bias" for n in blocks} | \
        {f"{n}.conv.weight" for n, c in blocks.items() if c.weight.shape == (1, 1, 1, 1)}
    assert len(cancelled) == len(blocks) + len(m.attention)          # one such conv per attention module
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        if name not in cancelled:
            assert p.grad.abs().sum() > 0, name


def test_local_loss_reaches_global_attention(batch):
    """CAIL: the local loss alone trains the global stream's hard attention (Sec. 3.2)."""
    m = HACNN(5)
    F.cross_entropy(m(batch).local_logits, torch.arange(6) % 5).backward()
    assert m.attention[1].hard.fc.weight.grad.abs().sum() > 0
    assert m.global_levels[0][0].stream1[0].conv.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_batch_independent(batch):
    m = HACNN(5).eval()
    with torch.no_grad():
        full = m(batch)
        torch.testing.assert_close(m(batch), full, atol=0, rtol=0)
        torch.testing.assert_close(m(batch[:2]), full[:2], atol=1e-5, rtol=0)
        torch.testing.assert_close(m(batch[5:]), full[5:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw,dim", [
    (dict(local_branch=False), 512),
    (dict(soft_attention=False), 1024),
    (dict(hard_attention=False), 1024),
    (dict(cross_attention=False), 1024),
    (dict(attention_relu=False), 1024),
])
def test_ablation_variants(batch, kw, dim):
    m = HACNN(5, **kw)
    out = m(batch[:2])
    assert (out.local_logits is None) == (not m.config.local_branch)
    assert m.eval()(batch[:2]).shape == (2, dim)
    # no parameter is left without a role
    out = m.train()(batch[:4])
    loss = sum(F.cross_entropy(o, torch.arange(4)) for o in (out.global_logits, out.local_logits) if o is not None)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_named_variants_are_the_ladder(batch):
    """hacnn.experiment.VARIANTS (notebook 09): each step adds parameters; without CAIL, only
    the first level's regions are used (the crop of the input), so levels 2-3 lose their fc."""
    from hacnn.experiment import VARIANTS

    models = {name: HACNN(5, **kw).eval() for name, kw in VARIANTS.items()}
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert n["global only"] < n["+ soft"] < n["full HA-CNN"]
    assert n["global only"] < n["+ hard"] < n["full HA-CNN"]
    hard_fc = [sum(p.numel() for p in ha.hard.parameters()) for ha in models["full HA-CNN"].attention]
    assert n["full HA-CNN"] - n["without CAIL"] == hard_fc[1] + hard_fc[2] > 0
    assert n["full HA-CNN"] - n["fixed stripes"] == sum(hard_fc)
    dims = {name: m(batch[:2]).shape[1] for name, m in models.items()}
    assert dims == {name: 512 if name in ("global only", "+ soft") else 1024 for name in VARIANTS}


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="multiples of 16"):
        HACNNConfig(input_size=(150, 64))
    with pytest.raises(ValueError, match="num_classes"):
        HACNN(0)
    with pytest.raises(ValueError, match=r"\(B, 3, 160, 64\)"):
        HACNN(3).eval()(torch.randn(1, 3, 128, 64))
    cfg = HACNN(3, feat_dim=256).config
    assert HACNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="init must be 'kaiming' or 'pytorch'"):
        HACNNConfig(init="xavier")


@pytest.mark.parametrize("init", ["kaiming", "pytorch"])
def test_init_modes(init):
    """kaiming: N(0, 2 / fan_out) weights, zero biases; pytorch: each conv's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases (torchreid's HACNN)."""
    torch.manual_seed(0)
    model = HACNN(5, init=init)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 2000]
    assert len(convs) > 20
    for m in convs:
        fan_in = m.weight[0].numel()
        fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
        w = m.weight.detach()
        if init == "kaiming":
            assert w.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)
            assert torch.all(m.bias == 0)
        else:
            bound = fan_in ** -0.5
            assert w.abs().max().item() <= bound and w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)
            assert torch.all(m.bias.abs() <= bound) and m.bias.abs().max() > 0
    # the hard attention starts on the four stripes either way
    for ha in model.attention:
        assert ha.hard.fc is not None and torch.all(ha.hard.fc.weight == 0)


def test_explain_returns_maps_and_boxes(batch):
    m = HACNN(5).eval()
    levels = m.explain(batch[:2])
    assert [lv.soft.shape[1:] for lv in levels] == [(40, 16), (20, 8), (10, 4)]
    assert all(lv.boxes.shape == (2, 4, 4) for lv in levels)
    assert all(((lv.soft > 0) & (lv.soft < 1)).all() for lv in levels)
    torch.testing.assert_close(levels[0].boxes[0, :, 1], torch.tensor([0.0, 40, 80, 120]), atol=1e-4, rtol=0)
    assert not m.training


def test_size_matches_paper():
    """~2.7 M parameters without classifiers (+-10 %), 1.09 GFLOPs (+-5 %) at 1x3x160x64."""
    from torch.utils.flop_counter import FlopCounterMode

    m = HACNN(751).eval()
    n = sum(p.numel() for k, p in m.named_parameters() if not k.startswith("classifier"))
    assert abs(n / 2.7e6 - 1) < 0.10, n
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(torch.randn(1, 3, 160, 64))
    assert abs(fc.get_total_flops() / 1.09e9 - 1) < 0.05, fc.get_total_flops()


def test_bf16_autocast_and_channels_last(batch):
    m = HACNN(5).eval()
    with torch.no_grad():
        ref = m(batch)
        m_cl = m.to(memory_format=torch.channels_last)
        cl = m_cl(batch.to(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, atol=1e-4, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = m(batch)
    assert bf.shape == ref.shape
    cos = F.cosine_similarity(bf.float(), ref, dim=1)
    assert cos.min() > 0.98, cos


def test_torch_export_of_eval_model(batch):
    m = HACNN(5).eval()
    ep = torch.export.export(m, (batch[:2],))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(batch[:2]), m(batch[:2]), atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fp16_autocast(batch):
    m = HACNN(5).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        f = m(batch.cuda())
    ref = HACNN(5).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        cos = F.cosine_similarity(f.float().cpu(), ref(batch), dim=1)
    assert cos.min() > 0.99


# ----------------------------------------------------------------------------- local_bn="per_region"

@pytest.mark.parametrize("channels_last", [False, True])
def test_per_region_batch_norm_is_torchreids_region_by_region_loop(channels_last):
    """Independent reference: a plain local Inception-B called once per region (torchreid's loop),
    region 0 first, gives the same outputs, running statistics and batch counts."""
    from hacnn.blocks import RegionBatchNorm2d, per_region_batch_norms

    torch.manual_seed(0)
    B, T, C = 3, 4, 32
    plain = InceptionB(C, 64).train()
    batched = per_region_batch_norms(__import__("copy").deepcopy(plain), T).train()
    assert sum(isinstance(m, RegionBatchNorm2d) for m in batched.modules()) == 6
    assert batched.state_dict().keys() == plain.state_dict().keys()
    # regions with different statistics, so that pooling them would give other numbers
    x = torch.randn(B, T, C, 12, 14) * torch.arange(1, T + 1).view(1, T, 1, 1, 1) \
        + torch.arange(T).view(1, T, 1, 1, 1)
    x = x.flatten(0, 1)                                                     # (B*T, C, h, w), rows b*T + t
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = batched(x)
    reference = torch.stack([plain(x.view(B, T, *x.shape[1:])[:, t]) for t in range(T)], 1).flatten(0, 1)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    for key, value in plain.state_dict().items():                          # T momentum updates, in order
        torch.testing.assert_close(batched.state_dict()[key], value, rtol=1e-6, atol=1e-6)
    assert int(batched.stream1[0].bn.num_batches_tracked) == T
    pooled = InceptionB(C, 64).train()                                      # the batched default differs
    pooled.load_state_dict(__import__("copy").deepcopy(plain).state_dict())
    assert (pooled(x) - reference).abs().max() > 1e-2
    batched.eval(), plain.eval()                                            # eval: one function
    torch.testing.assert_close(batched(x), plain(x))
    with pytest.raises(ValueError, match=r"\(B\*4, C, H, W\)"):
        batched.train()(x[:5])


def test_per_region_local_bn_in_the_model(batch):
    """Only the local stream's batch norms change; same state dict, same eval features, other
    training logits; sync_bn refuses it."""
    from hacnn.blocks import RegionBatchNorm2d
    from hacnn.distributed import convert_sync_bn

    torch.manual_seed(0)
    plain, regions = HACNN(5), HACNN(5, local_bn="per_region")
    regions.load_state_dict(plain.state_dict())
    kinds = {name for name, m in regions.named_modules() if isinstance(m, RegionBatchNorm2d)}
    assert kinds and all(name.startswith("local_levels.") for name in kinds)
    assert len(kinds) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.local_levels.modules())
    torch.testing.assert_close(regions.eval()(batch[:2]), plain.eval()(batch[:2]))
    a, b = plain.train()(batch[:4]), regions.train()(batch[:4])
    torch.testing.assert_close(a.global_logits, b.global_logits)            # global stream untouched
    assert (a.local_logits - b.local_logits).abs().max() > 1e-4
    assert HACNNConfig.from_dict(regions.config.to_dict()).local_bn == "per_region"
    with pytest.raises(ValueError, match="local_bn must be 'batched' or 'per_region'"):
        HACNNConfig(local_bn="grouped")
    with pytest.raises(ValueError, match="sync_bn.*per_region"):
        convert_sync_bn(regions, torch.device("cpu"))


def test_sync_bn_with_per_region_local_bn_is_refused_before_anything_is_written(tmp_path):
    from hacnn.experiment import run_experiment

    with pytest.raises(ValueError, match="--sync-bn.*per_region"):
        run_experiment("synthetic", tmp_path / "run", model={"local_bn": "per_region"}, sync_bn=True,
                       progress=False)
    assert not (tmp_path / "run").exists()
