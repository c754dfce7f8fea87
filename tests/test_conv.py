"""Convolution family, public surface: leedl_fast.functional.conv2d / separable_conv2d on every
backend against the float64 reference (outputs and gradients), nn.Conv2d and
DepthwiseSeparableConv2d against torch with loaded weights, fold_batchnorm, accelerate's BN
folding, opcheck, torch.compile and bad input. The kernels' own edge cases (tile edges, every
layout and dtype) are in tests/test_conv_cpu.py and tests/test_conv_triton.py."""
import pytest
import torch
import torch.nn.functional as TF

import leedl_fast
import leedl_fast.functional as F
from leedl_fast.reference import conv as reference

from .conftest import cpu_backends

# (name, x shape, weight shape, kwargs): the odd sizes, stride, dilation, groups, padding
CASES = [
    ("1x1-image", (2, 3, 1, 1), (4, 3, 1, 1), {}),
    ("7x9-pad1", (2, 3, 7, 9), (5, 3, 3, 3), {"padding": 1}),
    ("31x33-stride2", (1, 4, 31, 33), (6, 4, 3, 3), {"stride": 2, "padding": 1}),
    ("dilation2", (2, 3, 11, 10), (4, 3, 3, 3), {"dilation": 2, "padding": 2}),
    ("groups2", (2, 4, 8, 7), (6, 2, 3, 3), {"groups": 2, "padding": 1}),
    ("depthwise", (2, 5, 9, 8), (5, 1, 3, 3), {"groups": 5, "padding": 1}),
    ("depthwise-x2", (1, 3, 6, 7), (6, 1, 5, 5), {"groups": 3, "padding": "same"}),
    ("same-even-kernel", (1, 3, 7, 6), (4, 3, 2, 4), {"padding": "same"}),
    ("valid", (1, 2, 5, 5), (3, 2, 5, 5), {"padding": "valid"}),
]
FP32_TOL = {"atol": 2e-5, "rtol": 2e-5}


def _inputs(x_shape, w_shape, out_ch, bias=True, dtype=torch.float64):
    x = torch.randn(x_shape, dtype=dtype)
    w = torch.randn(w_shape, dtype=dtype) / (w_shape[1] * w_shape[2] * w_shape[3]) ** 0.5
    b = torch.randn(out_ch, dtype=dtype) if bias else None
    return x, w, b


def _forward_backward(fn, x, w, b, residual, kwargs, dout_seed=0):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b, residual)]
    out = fn(leaves[0], leaves[1], leaves[2], residual=leaves[3], **kwargs)
    gen = torch.Generator().manual_seed(dout_seed)
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    out.backward(dout)
    return [out] + [t.grad if t is not None else None for t in leaves]


def _reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
               residual=None):
    with leedl_fast.backend("reference"):
        return F.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation,
                        residual=residual)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("name, x_shape, w_shape, kwargs", CASES, ids=[c[0] for c in CASES])
def test_conv2d_matches_float64(backend, name, x_shape, w_shape, kwargs):
    """fp32 output and all four gradients against the float64 reference; the activation and
    residual rotate with the case so every combination runs on some shape."""
    x, w, b = _inputs(x_shape, w_shape, w_shape[0])
    out_shape = TF.conv2d(x, w, b, kwargs.get("stride", 1), kwargs.get("padding", 0),
                          kwargs.get("dilation", 1), kwargs.get("groups", 1)).shape
    act = reference.ACTIVATIONS[len(name) % 4]
    residual = torch.randn(out_shape, dtype=torch.float64) if len(name) % 2 else None
    kw = dict(kwargs, activation=act)
    want = _forward_backward(_reference, x, w, b, residual, kw)
    with leedl_fast.backend(backend):
        got = _forward_backward(F.conv2d, *(t.float() if t is not None else None
                                            for t in (x, w, b, residual)), kw)
    for g, r in zip(got, want):
        if r is not None:
            torch.testing.assert_close(g.double(), r, **FP32_TOL)


def test_reference_is_torch_conv():
    """The sliding-window reference against torch's conv (float64): the oracle is right."""
    for _, x_shape, w_shape, kwargs in CASES:
        x, w, b = _inputs(x_shape, w_shape, w_shape[0])
        torch.testing.assert_close(_reference(x, w, b, **kwargs), TF.conv2d(x, w, b, **kwargs))


@pytest.mark.parametrize("backend", cpu_backends())
def test_layouts_and_unbatched(backend):
    """channels_last in gives channels_last out; a sliced (non-contiguous) input and an
    unbatched (C, H, W) input give the same values as the contiguous batched one."""
    x, w, b = _inputs((2, 6, 9, 11), (4, 6, 3, 3), 4, dtype=torch.float32)
    want = _reference(x.double(), w.double(), b.double(), padding=1, activation="relu")
    with leedl_fast.backend(backend):
        cl = F.conv2d(x.to(memory_format=torch.channels_last), w, b, padding=1,
                      activation="relu")
        assert cl.is_contiguous(memory_format=torch.channels_last)
        wide = torch.randn(2, 12, 9, 22)
        wide[:, ::2, :, ::2] = x
        sliced = F.conv2d(wide[:, ::2, :, ::2], w, b, padding=1, activation="relu")
        single = F.conv2d(x[1], w, b, padding=1, activation="relu")
    for got in (cl, sliced):
        torch.testing.assert_close(got.double(), want, **FP32_TOL)
    torch.testing.assert_close(single.double(), want[1], **FP32_TOL)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_nn_conv2d_matches_torch_with_loaded_weights(mode):
    torch_conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=mode).double()
    ours = leedl_fast.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=mode).double()
    ours.load_state_dict(torch_conv.state_dict())
    assert ours.state_dict().keys() == torch_conv.state_dict().keys()
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    want = torch_conv(x)
    want.sum().backward()
    want_grads = [x.grad.clone(), torch_conv.weight.grad, torch_conv.bias.grad]
    x.grad = None
    got = ours(x)
    got.sum().backward()
    torch.testing.assert_close(got, want)
    for g, r in zip([x.grad, ours.weight.grad, ours.bias.grad], want_grads):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("conv_bias", [True, False])
def test_fold_batchnorm_matches_conv_then_bn(conv_bias):
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=conv_bias).double()
    bn = torch.nn.BatchNorm2d(5).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    weight, bias = leedl_fast.fold_batchnorm(conv, bn)
    torch.testing.assert_close(TF.conv2d(x, weight, bias, padding=1), bn(conv(x)))
    with pytest.raises(ValueError, match="features"):
        leedl_fast.fold_batchnorm(conv, torch.nn.BatchNorm2d(4))


def test_separable_parameter_count_is_the_books():
    """BOOK.md §17.4's worked example: I = 2, O = 4, 3 x 3: 72 standard, 18 + 8 separable."""
    assert reference.separable_parameter_count(3, 2, 4) == (72, 26)
    block = leedl_fast.nn.DepthwiseSeparableConv2d(2, 4, 3, bias=False)
    assert sum(p.numel() for p in block.parameters()) == 26


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_separable_block_inference_and_training(backend, stride, padding):
    """Inference (the fused op) and training (two conv ops, with gradients) both match the
    float64 reference of the block."""
    block = leedl_fast.nn.DepthwiseSeparableConv2d(6, 5, 3, stride, padding, activation="relu")
    x = torch.randn(2, 6, 9, 10)
    ref_block = [p.detach().double() for p in (block.depthwise.weight, block.depthwise.bias,
                                               block.pointwise.weight, block.pointwise.bias)]
    xd = x.double().requires_grad_()
    want = reference.separable_conv2d(xd, ref_block[0], ref_block[1], "relu", ref_block[2],
                                      ref_block[3], "relu", (stride, stride),
                                      (padding,) * 4, (1, 1))
    want.sum().backward()
    with leedl_fast.backend(backend):
        with torch.no_grad():
            fused = block(x)
        xg = x.clone().requires_grad_()
        trained = block(xg)
        trained.sum().backward()
    torch.testing.assert_close(fused.double(), want.detach(), **FP32_TOL)
    torch.testing.assert_close(trained.double(), want.detach(), **FP32_TOL)
    torch.testing.assert_close(xg.grad.double(), xd.grad, **FP32_TOL)
    assert block.depthwise.weight.grad is not None and block.pointwise.bias.grad is not None


def test_separable_from_modules_matches_torch_eval_block():
    """from_modules folds both BatchNorms: equal to torch's dw -> BN -> ReLU -> pw -> BN ->
    ReLU in eval mode."""
    dw = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False).double()
    pw = torch.nn.Conv2d(4, 7, 1, bias=False).double()
    bn1, bn2 = torch.nn.BatchNorm2d(4).double(), torch.nn.BatchNorm2d(7).double()
    for bn in (bn1, bn2):
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    torch_block = torch.nn.Sequential(dw, bn1, torch.nn.ReLU(), pw, bn2, torch.nn.ReLU()).eval()
    ours = leedl_fast.nn.DepthwiseSeparableConv2d.from_modules(dw, bn1, pw, bn2, "relu")
    x = torch.randn(2, 4, 8, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), torch_block(x))


@pytest.mark.parametrize("depthwise, pointwise", [
    ({"padding_mode": "reflect"}, {}),
    ({}, {"padding": 1}),
    ({}, {"stride": 2}),
    ({}, {"kernel_size": 3, "padding": 1}),
    ({}, {"groups": 2}),
], ids=["dw-reflect", "pw-padding", "pw-stride", "pw-3x3", "pw-groups"])
def test_separable_from_modules_rejects_what_the_block_cannot_run(depthwise, pointwise):
    """The fused block pads with zeros and its pointwise conv is a plain 1 x 1: anything else
    gave a silently different result (reflect padding, a padded or strided pointwise conv) or an
    unrelated shape error."""
    dw = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, **depthwise)
    pw = torch.nn.Conv2d(4, 6, **{"kernel_size": 1, **pointwise})
    with pytest.raises(ValueError, match="from_modules"):
        leedl_fast.nn.DepthwiseSeparableConv2d.from_modules(dw, None, pw, None)


def test_accelerate_folds_conv_bn_act_in_eval_only():
    def make():
        torch.manual_seed(1)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
            torch.nn.GELU(), torch.nn.MaxPool2d(2)).double()
        for m in model:
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
        return model
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = make().eval()(x)
    model = leedl_fast.accelerate(make().eval())
    assert type(model[0]) is leedl_fast.nn.Conv2d and model[0].activation == "relu"
    assert model[3].activation == "gelu" and model[3].pool == ("max", 2)
    assert all(type(model[i]) is torch.nn.Identity for i in (1, 2, 4, 5, 6))
    torch.testing.assert_close(model(x), want)
    trained = leedl_fast.accelerate(make().train())
    assert type(trained[1]) is torch.nn.BatchNorm2d and trained[0].activation is None



def _bn(channels):
    bn = torch.nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("layout", ["same-sequential", "two-sequentials", "two-bns"])
def test_accelerate_leaves_a_shared_conv_unfolded(layout):
    """A conv module that runs in two places must not take the BN of one of them: folding would
    scale its weights for the other use too."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()
    relu = torch.nn.ReLU
    if layout == "same-sequential":
        model = torch.nn.Sequential(conv, _bn(4), relu(), conv, relu())
    elif layout == "two-sequentials":
        model = torch.nn.Sequential(torch.nn.Sequential(conv, _bn(4)),
                                    torch.nn.Sequential(conv, relu()))
    else:
        model = torch.nn.Sequential(conv, _bn(4), relu(), conv, _bn(4))
    model.eval()
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        got = leedl_fast.accelerate(model)(x)
    torch.testing.assert_close(got, want)



def test_accelerate_folds_by_sequential_index_with_a_repeated_module():
    """One activation module used twice (a common pattern): Sequential.children() lists it once,
    so its positions are not the Sequential's indices; the fold must replace the BN, act and
    pool at their real indices (it used to turn the second conv into an Identity)."""
    torch.manual_seed(0)
    act = torch.nn.ReLU()
    model = torch.nn.Sequential(act, torch.nn.Conv2d(3, 4, 3, padding=1), _bn(4), act,
                                torch.nn.Conv2d(4, 5, 3, padding=1), _bn(5), torch.nn.SiLU(),
                                torch.nn.MaxPool2d(2)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        model = leedl_fast.accelerate(model)
        got = model(x)
    assert [type(m).__name__ for m in model] == ["ReLU", "Conv2d", "Identity", "Identity",
                                                 "Conv2d", "Identity", "Identity", "Identity"]
    assert model[1].activation == "relu" and model[4].activation == "silu"
    assert model[4].pool == ("max", 2)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("pool", [("max", 2), ("avg", 2), ("max", 3), ("avg", 3)])
@pytest.mark.parametrize("groups", [1, 4])
def test_conv_pool_inference_and_training(backend, pool, groups):
    """pool= fused for inference (conv2d_pool_fwd), conv then torch's pooling with gradients;
    both against the float64 reference; odd conv outputs (7 x 9 -> floor)."""
    x, w, b = _inputs((2, 4, 7, 9), (8, 4 // groups, 3, 3), 8)
    want = reference.conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), groups, "relu")
    want = getattr(reference, f"{pool[0]}_pool2d")(want, pool[1])
    xf, wf, bf = x.float(), w.float(), b.float()
    with leedl_fast.backend(backend):
        with torch.no_grad():
            fused = F.conv2d(xf, wf, bf, padding=1, groups=groups, activation="relu", pool=pool)
        xg = xf.clone().requires_grad_()
        trained = F.conv2d(xg, wf, bf, padding=1, groups=groups, activation="relu", pool=pool)
        trained.sum().backward()
    torch.testing.assert_close(fused.double(), want, **FP32_TOL)
    torch.testing.assert_close(trained.double(), want, **FP32_TOL)
    assert xg.grad is not None
    with pytest.raises(ValueError, match="pool must be"):
        F.conv2d(xf, wf, bf, padding=1, groups=groups, pool=("max", 4))


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_opcheck(activation):
    x = torch.randn(2, 3, 6, 5)
    w = torch.randn(4, 3, 3, 3)
    b, res = torch.randn(4), torch.randn(2, 4, 3, 3)
    args = (x, w, b, res, [2, 2], [1, 1, 1, 1], [1, 1], 1, activation)
    torch.library.opcheck(torch.ops.leedl_fast.conv2d_fwd.default, args)
    out, z = torch.ops.leedl_fast.conv2d_fwd(*args)
    torch.library.opcheck(torch.ops.leedl_fast.conv2d_bwd.default,
                          (torch.randn_like(out), x, w, out, z, [2, 2], [1, 1, 1, 1], [1, 1], 1,
                           activation, [True, True, True, True]))
    xcl = x.to(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.leedl_fast.conv2d_pool_fwd.default,
                          (xcl, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, activation, "max", 2))
    torch.library.opcheck(torch.ops.leedl_fast.separable_conv2d_fwd.default,
                          (xcl, torch.randn(3, 1, 3, 3), torch.randn(3), "relu",
                           torch.randn(5, 3, 1, 1), None, activation, [1, 1], [1, 1, 1, 1],
                           [1, 1]))


def test_torch_compile_fullgraph():
    conv = leedl_fast.nn.Conv2d(3, 4, 3, padding=1)
    conv.activation = "silu"
    block = leedl_fast.nn.DepthwiseSeparableConv2d(4, 6, 3, padding=1, activation="relu")

    def step(x):
        return block(conv(x)).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    compiled(x).backward()
    got = [x.grad.clone(), conv.weight.grad.clone()]
    x.grad, conv.weight.grad = None, None
    step(x).backward()
    torch.testing.assert_close(got[0], x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], conv.weight.grad, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        inference = torch.compile(block, fullgraph=True)
        mid = conv(x)
        torch.testing.assert_close(inference(mid), block(mid))


@pytest.mark.parametrize("args, kwargs, error, match", [
    (((2, 3, 8, 8), (4, 2, 3, 3)), {}, ValueError, "input has 3 channels"),
    (((2, 4, 8, 8), (6, 4, 3, 3)), {"groups": 3}, ValueError, "groups=3 must divide"),
    (((2, 3, 4, 4), (4, 3, 7, 7)), {}, ValueError, "bigger than the padded input"),
    (((2, 3, 4, 4), (4, 3, 3, 3)), {"dilation": 3, "padding": 1}, ValueError, "dilated"),
    (((2, 3, 8, 8), (4, 3, 3, 3)), {"stride": 2, "padding": "same"}, ValueError, "strided"),
    (((2, 3, 8, 8), (4, 3, 3, 3)), {"activation": "tanh"}, ValueError, "activation"),
    (((2, 3, 8, 8), (4, 3, 3, 3)), {"padding": "full"}, ValueError, "padding"),
    (((1, 2, 3, 8, 8), (4, 3, 3, 3)), {}, ValueError, "input must be"),
    (((2, 3, 8, 8), (4, 3, 3)), {}, ValueError, "weight must be"),
    (((2, 3, 8, 8), (4, 3, 3, 3)), {"residual": (2, 4, 5, 5)}, ValueError, "residual"),
])
def test_bad_input_raises_clear_errors(args, kwargs, error, match):
    x, w = torch.randn(args[0]), torch.randn(args[1])
    if "residual" in kwargs:
        kwargs = dict(kwargs, residual=torch.randn(kwargs["residual"]))
    with pytest.raises(error, match=match):
        F.conv2d(x, w, **kwargs)


def test_bad_dtypes_and_devices():
    x, w = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    with pytest.raises(TypeError, match="dtype"):
        F.conv2d(x.int(), w.int())
    with pytest.raises(TypeError, match="weight has dtype"):
        F.conv2d(x, w.double())
    with pytest.raises(TypeError, match="bias has dtype"):
        F.conv2d(x, w, torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias must be"):
        F.conv2d(x, w, torch.randn(5))
    with pytest.raises(ValueError, match="dw_weight must be"):
        F.separable_conv2d(x, torch.randn(4, 1, 3, 3), None, torch.randn(2, 3, 1, 1), None)



def test_non_tensor_arguments_raise_errors_naming_them():
    """A missing weight, a non-tensor residual next to an unbatched input, a non-tensor pw_bias
    and a float stride used to fail deep inside with AttributeError / "'float' object is not
    iterable"; each now names its argument."""
    x, w = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    with pytest.raises(TypeError, match="weight must be a Tensor"):
        F.conv2d(x, None)
    with pytest.raises(TypeError, match="residual must be a Tensor"):
        F.conv2d(x[0], w, residual=[0.0])
    with pytest.raises(TypeError, match="stride must be"):
        F.conv2d(x, w, stride=1.5)
    with pytest.raises(TypeError, match="padding must be"):
        F.conv2d(x, w, padding=0.5)
    with pytest.raises(TypeError, match="pw_bias must be a Tensor"):
        F.separable_conv2d(x, torch.randn(3, 1, 3, 3), None, torch.randn(2, 3, 1, 1), [1.0, 2.0])


# ------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name, x_shape, w_shape, kwargs", CASES, ids=[c[0] for c in CASES])
def test_gpu_conv2d_against_float64(dtype, name, x_shape, w_shape, kwargs):
    """Every GPU backend, output and gradients against float64: fp32 within 1e-4 (kernels use
    IEEE fp32 dots); fp16/bf16 within 2x (output) / 3x (gradients) of torch's own error in
    the dtype (cuDNN conv + the activation as torch ops), plus a floor of 4 ulps."""
    x, w, b = _inputs(x_shape, w_shape, w_shape[0])
    act = reference.ACTIVATIONS[len(name) % 4]
    kw = dict(kwargs, activation=act)
    want = _forward_backward(_reference, x, w, b, None, kw)
    dev = [t.cuda().to(dtype) for t in (x, w, b)]

    def torch_conv(x, w, b, residual=None, activation=None, **conv_kw):
        return reference.activation(TF.conv2d(x, w, b, **conv_kw), activation)

    theirs = _forward_backward(torch_conv, *dev, None, kw)
    eps = torch.finfo(dtype).eps
    for backend in leedl_fast.available_backends("cuda"):
        if backend == "reference":
            continue
        with leedl_fast.backend(backend):
            got = _forward_backward(F.conv2d, *dev, None, kw)
        for i, (g, t, r) in enumerate(zip(got, theirs, want)):
            if r is None:
                continue
            err = (g.double().cpu() - r).abs().max().item()
            scale = r.abs().max().item()
            if dtype == torch.float32:
                assert err <= 1e-4 * (scale + 1), (backend, i, err)
            else:
                torch_err = (t.double().cpu() - r).abs().max().item()
                assert err <= (2 if i == 0 else 3) * torch_err + 4 * eps * scale, (
                    backend, i, err, torch_err)
