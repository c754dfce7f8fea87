"""The book's CNNs (leedl_fast.models.cnn: ImageCNN, SeparableImageCNN, GoPolicyCNN) at the tiny
size: forward + backward, the leedl_fast build against the same model built from torch.nn
(weights copied), state_dict round trip, torch.compile(fullgraph=True), accelerate() on the
torch build, training, int8 heads, distillation_loss against a float64 hand computation, and
the example script end to end."""
import copy
import io
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import leedl_fast
import leedl_fast.quant as Q
from leedl_fast.data.images import SHAPES, go_positions, shapes_dataset
from leedl_fast.models.cnn import (
    CNNConfig,
    GoConfig,
    GoPolicyCNN,
    ImageCNN,
    SeparableImageCNN,
    conv_parameter_count,
    distillation_loss,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (class, tiny config, input shape without the batch, number of outputs)
MODELS = {
    "ImageCNN": (ImageCNN, CNNConfig.tiny, (3, 16, 16), 11),
    "SeparableImageCNN": (SeparableImageCNN, CNNConfig.tiny, (3, 16, 16), 11),
    "GoPolicyCNN": (GoPolicyCNN, GoConfig.tiny, (4, 19, 19), 361),
}
RTOL, ATOL = 1e-4, 1e-5  # fp32, same math in a different order


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP threads
    waiting for each other cost 5x; restored afterwards for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_pair(name):
    """(leedl_fast build, torch.nn build with the same weights, input batch of 5)."""
    cls, config, shape, _ = MODELS[name]
    ours = cls(config())
    theirs = cls(config(), nn=torch.nn)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs, torch.randn(5, *shape)


def randomize_batchnorm(model):
    """Non-trivial BN statistics and affine parameters, so eval mode tests real folding."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    ours, _, x = build_pair(name)
    x.requires_grad_(True)
    out = ours(x)
    assert out.shape == (5, MODELS[name][3])
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODELS)
def test_same_state_dict_keys(name):
    ours, theirs, _ = build_pair(name)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        assert value.shape == theirs.state_dict()[key].shape, key


# (dtype, rtol, atol). Gradients are compared in float64 only: in float32 a pre-activation
# within rounding of zero can land on different sides of a ReLU (or a max-pool tie break
# differently) in the two builds -- about 1 run in 100 at these sizes -- and the gradients
# then differ by far more than rounding, in either build's disfavour against float64.
DTYPES = {"float32": (torch.float32, RTOL, ATOL), "float64": (torch.float64, 1e-10, 1e-12)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", MODELS)
def test_matches_torch_build(name, training, dtype):
    """Outputs and (train mode) the BN running statistics; in float64 also the input and
    weight gradients."""
    dtype, rtol, atol = DTYPES[dtype]
    ours, theirs, x = build_pair(name)
    randomize_batchnorm(ours)
    theirs.load_state_dict(ours.state_dict())
    ours.to(dtype).train(training)
    theirs.to(dtype).train(training)
    x = x.to(dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = ours(xa), theirs(xb)
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=atol)
    buffers_b = dict(theirs.named_buffers())
    for bname, b in ours.named_buffers():
        torch.testing.assert_close(b, buffers_b[bname], rtol=rtol, atol=atol)
    if dtype != torch.float64:
        return
    grad = torch.randn_like(out_a)
    out_a.backward(grad)
    out_b.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=rtol, atol=atol)
    params_b = dict(theirs.named_parameters())
    # One scale for all: a conv bias before a train-mode BN has a true gradient of zero, and
    # both builds give rounding noise there.
    scale = max(p.grad.abs().max() for p in params_b.values())
    for pname, p in ours.named_parameters():
        torch.testing.assert_close(p.grad / scale, params_b[pname].grad / scale, rtol=rtol,
                                   atol=atol, msg=lambda m, pname=pname: f"{pname}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    ours, _, x = build_pair(name)
    randomize_batchnorm(ours)
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    cls, config, _, _ = MODELS[name]
    torch.manual_seed(1234)  # different initial weights
    loaded = cls(config())
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    ours.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_torch_compile_fullgraph(name):
    """torch.compile(fullgraph=True) of a training step's forward and backward, and of eval."""
    ours, theirs, x = build_pair(name)
    randomize_batchnorm(ours)
    theirs.load_state_dict(ours.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = compiled(xa)
    expected = theirs(xb)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    # float32 gradients: by relative norm, robust to a ReLU gate flip (see DTYPES); a wrong
    # backward is off by order one.
    # (A conv bias before a train-mode BN has a zero gradient: hence the absolute floor.)
    params_b = dict(theirs.named_parameters())
    pairs = [("input", xa.grad, xb.grad)] + [
        (n, p.grad, params_b[n].grad) for n, p in ours.named_parameters()]
    floor = 1e-5 * max(want.abs().max() for _, _, want in pairs)
    for n, got, want in pairs:
        assert (got - want).norm() <= 0.05 * want.norm() + floor, n
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), theirs(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", MODELS)
def test_accelerate_torch_build(name):
    """accelerate() on the eval-mode torch build: every Conv2d becomes leedl_fast's (the
    ImageCNN's BN, ReLU and 2 x 2 max-pool folded into it), outputs unchanged."""
    _, theirs, x = build_pair(name)
    randomize_batchnorm(theirs)
    theirs.eval()
    fast = leedl_fast.accelerate(copy.deepcopy(theirs))
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is leedl_fast.nn.Conv2d for m in convs)
    if name == "ImageCNN":
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
        assert all(block[0].activation == "relu" and block[0].pool == ("max", 2)
                   for block in fast.features)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), theirs(x), rtol=RTOL, atol=ATOL)


def test_separable_parameter_counts():
    """§17.4: k*k*I + I*O conv weights instead of k*k*I*O, block by block."""
    config = CNNConfig.tiny()
    teacher, student = ImageCNN(config), SeparableImageCNN(config)
    k = config.kernel_size
    sizes = list(zip((config.in_channels, *config.channels), config.channels))
    assert conv_parameter_count(teacher) == sum(k * k * i * o for i, o in sizes)
    assert conv_parameter_count(student) == sum(k * k * i + i * o for i, o in sizes)
    # The book's worked example: I = 2, O = 4, 3 x 3: 72 weights against 18 + 8.
    sep = leedl_fast.nn.DepthwiseSeparableConv2d(2, 4, 3, bias=False)
    assert conv_parameter_count(sep) == 26
    assert conv_parameter_count(torch.nn.Conv2d(2, 4, 3, bias=False)) == 72
    # Classifier unchanged: the student differs from the teacher only in its convolutions.
    assert [k for k in student.state_dict() if "classifier" in k] == \
        [k for k in teacher.state_dict() if "classifier" in k]


def test_go_policy_shape_and_no_pooling():
    model = GoPolicyCNN(GoConfig.tiny())
    x, move = go_positions(3, planes=4)
    assert model(x).shape == (3, 361) and move.shape == (3,)
    pools = (torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d,
             torch.nn.AdaptiveMaxPool2d)
    assert not any(isinstance(m, pools) for m in model.modules())
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    base = GoPolicyCNN(GoConfig.base(), nn=torch.nn)
    convs = [m for m in base.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (convs[0].in_channels, convs[0].out_channels, convs[0].kernel_size) == (48, 192, (5, 5))
    assert [c.kernel_size for c in convs[1:-1]] == [(3, 3)] * 11
    assert (convs[-1].out_channels, convs[-1].kernel_size) == (1, (1, 1))


def test_go_positions_rule():
    """The target is the unique empty point with the most own stones among its 4 neighbours."""
    x, move = go_positions(64, planes=6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (64, 6, 19, 19) and (x[:, 4:] == 0).all() and (x[:, 3] == 1).all()
    assert torch.equal(x[:, 0] + x[:, 1] + x[:, 2], torch.ones(64, 19, 19))
    own = F.pad(x[:, 0], (1, 1, 1, 1))
    neighbours = own[:, :-2, 1:-1] + own[:, 2:, 1:-1] + own[:, 1:-1, :-2] + own[:, 1:-1, 2:]
    score = torch.where(x[:, 2] == 1, neighbours, torch.full_like(neighbours, -1)).flatten(1)
    assert torch.equal(score.argmax(1), move)
    assert ((score == score.max(1, keepdim=True).values).sum(1) == 1).all()


def test_shapes_dataset():
    g = torch.Generator().manual_seed(0)
    x, y = shapes_dataset(200, size=16, channels=3, classes=len(SHAPES), generator=g)
    assert x.shape == (200, 3, 16, 16) and x.dtype == torch.float32
    assert y.min() >= 0 and y.max() < len(SHAPES)
    x2, y2 = shapes_dataset(200, size=16, channels=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="classes"):
        shapes_dataset(4, classes=len(SHAPES) + 1)


def _train(model, data, steps, lr=3e-3, batch=32):
    g = torch.Generator().manual_seed(0)
    x, y = data
    opt = leedl_fast.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[:5]) / 5, sum(losses[-10:]) / 10


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_falls(name):
    torch.manual_seed(0)
    cls, config, shape, _ = MODELS[name]
    g = torch.Generator().manual_seed(0)
    if name == "GoPolicyCNN":
        data = go_positions(1024, planes=shape[0], generator=g)
    else:
        data = shapes_dataset(1024, size=shape[1], channels=shape[0], generator=g)
    start, end = _train(cls(config()), data, steps=80)
    assert end < 0.5 * start, (start, end)


def test_distillation_loss_hand_computed():
    """Against a float64 computation written out from the formulas (BOOK.md §17.2)."""
    teacher = torch.tensor([[100.0, 10.0, 1.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
    student = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.3, -0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    t, alpha = 100.0, 0.7

    def softmax(z, temp):
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]

    # (17.4): the teacher's (100, 10, 1) at T = 100 is about (0.56, 0.23, 0.21).
    assert [round(p, 2) for p in softmax([100.0, 10.0, 1.0], 100.0)] == [0.56, 0.23, 0.21]
    kl = ce = 0.0
    for s_row, t_row, label in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p_t, p_s = softmax(t_row, t), softmax(s_row, t)
        kl += sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
        ce += -math.log(softmax(s_row, 1.0)[label])
    expected = alpha * t * t * kl / 2 + (1 - alpha) * ce / 2
    got = distillation_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert got.dtype == torch.float64
    assert math.isclose(got.item(), expected, rel_tol=1e-10)
    # alpha = 1 (or no labels): pure distillation; zero when the student equals the teacher.
    assert distillation_loss(teacher, teacher, labels, temperature=3.0, alpha=1.0).item() == \
        pytest.approx(0.0, abs=1e-12)
    # The teacher gets no gradient.
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    distillation_loss(student, teacher, labels, temperature=2.0).backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, labels, temperature=0.0)


def test_int8_head():
    """quantize_ of the classifier (§17.3): 4x fewer weight bytes, logits nearly unchanged."""
    model = ImageCNN(CNNConfig.tiny()).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        Q.quantize_(model, Q.Int8WeightOnly(), filter_fn=lambda m, name: "classifier" in name)
        after = model(x)
    heads = [m for m in model.classifier if isinstance(m, Q.QuantizedLinear)]
    assert len(heads) == 2 and not any(type(m) is torch.nn.Linear for m in model.modules())
    assert (after - before).abs().max() <= 0.02 * before.abs().max()


def test_example_script_runs():
    script = os.path.join(ROOT, "examples", "image_cnn.py")
    result = subprocess.run(
        [sys.executable, script, "--steps", "30", "--train", "512", "--test", "256"],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for line in ("teacher", "student", "int8 head", "parameters"):
        assert line in result.stdout, result.stdout
