"""The book's convolutional networks (BOOK.md §4, §4.8, §17), built from leedl_fast modules.

    ImageCNN           §4 / §3.7: the food-classification CNN -- conv-BN-ReLU-maxpool blocks,
                       flatten, a fully connected classifier (softmax in the loss)
    SeparableImageCNN  §17.4: the compressed student -- every conv replaced by a depthwise-
                       separable one (k*k*I + I*O weights instead of k*k*I*O)
    distillation_loss  §17.2: knowledge distillation with a temperature
    GoPolicyCNN        §4.8: AlphaGo's policy network -- 19 x 19 board planes in, 361 move logits
                       out, and no pooling

Every model takes `nn=`: leedl_fast.nn (the default) or torch.nn. Classes leedl_fast.nn does not
have (BatchNorm2d, ReLU, MaxPool2d, Linear, Flatten) come from torch.nn in both builds, so the
two builds have the same modules in the same places and the same state_dict keys: weights load
from one into the other, and the torch build is the tests' oracle and the benchmarks' baseline.
For inference, `leedl_fast.accelerate(model.eval())` folds each conv's BatchNorm, ReLU and 2 x 2
max-pool into one fused conv.
"""
import dataclasses
import itertools

import torch
import torch.nn.functional as F

from .. import nn as lf_nn


def _module(nn, name):
    """nn.<name> where the namespace has it, torch.nn.<name> otherwise."""
    return getattr(nn, name, None) or getattr(torch.nn, name)


# ------------------------------------------------------------------------------ §4 ImageCNN

@dataclasses.dataclass
class CNNConfig:
    """Sizes of ImageCNN / SeparableImageCNN. Each entry of `channels` is one block
    conv(k x k, 'same' padding) -> BN -> ReLU -> MaxPool(2), so the image shrinks by 2 per
    block; `hidden` are the classifier's hidden widths."""
    in_channels: int = 3
    image_size: int = 128
    num_classes: int = 11
    channels: tuple = (64, 128, 256, 512, 512)
    hidden: tuple = (1024, 512)
    kernel_size: int = 3

    @classmethod
    def base(cls):
        """The book's food-classification CNN (HW3's sample model): 3 x 128 x 128 images,
        11 classes, blocks of 64, 128, 256, 512, 512 channels, then 512*4*4 -> 1024 -> 512 -> 11."""
        return cls()

    @classmethod
    def tiny(cls):
        """3 x 16 x 16 images, 11 classes, two blocks of 16 and 32 channels, 512 -> 64 -> 11:
        trains on generated shapes (leedl_fast.data.images) in seconds."""
        return cls(in_channels=3, image_size=16, num_classes=11, channels=(16, 32), hidden=(64,))

    @property
    def feature_size(self):
        """Side of the last block's feature map (one 2 x 2 max-pool per block)."""
        side = self.image_size >> len(self.channels)
        if side < 1 or self.image_size % (1 << len(self.channels)):
            raise ValueError(f"CNNConfig: image_size {self.image_size} is not divisible by "
                             f"2**{len(self.channels)} (one 2 x 2 max-pool per block)")
        return side


def _classifier(config, nn):
    """flatten -> (Linear -> ReLU)* -> Linear to the class logits (the softmax is in the loss)."""
    Linear, ReLU = _module(nn, "Linear"), _module(nn, "ReLU")
    widths = [config.channels[-1] * config.feature_size ** 2, *config.hidden]
    layers = [_module(nn, "Flatten")()]
    for a, b in itertools.pairwise(widths):
        layers += [Linear(a, b), ReLU()]
    layers.append(Linear(widths[-1], config.num_classes))
    return torch.nn.Sequential(*layers)


class ImageCNN(torch.nn.Module):
    """The §4 image classifier: blocks of conv -> BatchNorm (§3.7) -> ReLU -> 2 x 2 max-pool,
    each conv a k x k receptive field shared over the image (parameter sharing) and each pool
    halving the resolution, then flatten -> fully connected layers -> class logits.

    Input (B, in_channels, image_size, image_size); output (B, num_classes) logits."""

    def __init__(self, config=None, nn=None):
        super().__init__()
        config = config or CNNConfig.tiny()
        nn = nn or lf_nn
        self.config = config
        Conv2d, BatchNorm2d = _module(nn, "Conv2d"), _module(nn, "BatchNorm2d")
        ReLU, MaxPool2d = _module(nn, "ReLU"), _module(nn, "MaxPool2d")
        k = config.kernel_size
        blocks, c_in = [], config.in_channels
        for c_out in config.channels:
            blocks.append(torch.nn.Sequential(
                Conv2d(c_in, c_out, k, 1, k // 2), BatchNorm2d(c_out), ReLU(), MaxPool2d(2, 2)))
            c_in = c_out
        self.features = torch.nn.Sequential(*blocks)
        self.classifier = _classifier(config, nn)

    def forward(self, images):
        return self.classifier(self.features(images))


# ------------------------------------------------------------------------------ §17 student

class TorchSeparableConv2d(torch.nn.Module):
    """torch.nn's build of leedl_fast.nn.DepthwiseSeparableConv2d (activation=None): the same
    submodule names ("depthwise", "pointwise"), so the same state_dict keys. depthwise: one
    k x k filter per input channel (groups = in_channels); pointwise: 1 x 1 filters mixing the
    channels (§17.4)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                                         groups=in_channels, bias=bias)
        self.pointwise = torch.nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, input):
        return self.pointwise(self.depthwise(input))


class SeparableImageCNN(ImageCNN):
    """The compressed student of §17.4: ImageCNN with each k x k conv replaced by a depthwise
    k x k conv followed by a pointwise 1 x 1 conv -- a low-rank factorization of the same
    layer, k*k*I + I*O weights instead of k*k*I*O (ratio 1/O + 1/(k*k), 17.5). Everything
    else (BN, ReLU, pooling, classifier) is the teacher's, so the two differ only where §17.4
    says. Train it with distillation_loss against a trained ImageCNN (§17.2).

    With nn=leedl_fast.nn each factorized conv is one leedl_fast.nn.DepthwiseSeparableConv2d
    (inference: one fused op that keeps the depthwise result on chip); with torch.nn it is
    TorchSeparableConv2d, with the same state_dict keys."""

    def __init__(self, config=None, nn=None):
        super().__init__(config, nn)
        nn = nn or lf_nn
        k = self.config.kernel_size
        for block in self.features:
            conv = block[0]
            if hasattr(nn, "DepthwiseSeparableConv2d"):
                block[0] = nn.DepthwiseSeparableConv2d(conv.in_channels, conv.out_channels, k,
                                                       1, k // 2, activation=None)
            else:
                block[0] = TorchSeparableConv2d(conv.in_channels, conv.out_channels, k, 1, k // 2)


def conv_parameter_count(model):
    """Weights (biases excluded) of the model's convolutions: k*k*I*O per standard conv,
    k*k*I + I*O per depthwise-separable one -- the counts of BOOK.md §17.4 (17.5)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def distillation_loss(student_logits, teacher_logits, labels=None, temperature=4.0, alpha=0.9):
    """Knowledge distillation (BOOK.md §17.2, Hinton et al. 2015): the student learns the
    teacher's output distribution softened by a temperature T,
        y'_i = exp(y_i / T) / sum_j exp(y_j / T)                               (17.2)
    (T > 1 spreads the probability over the classes the teacher finds similar; at T = 1 the
    teacher is nearly one-hot, 17.3 / 17.4), plus the usual cross-entropy on the hard labels:

        loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels)

    The T^2 keeps the soft term's gradients the same size as T changes (they scale as 1/T^2).
    The KL is averaged over the batch; the teacher gets no gradient. labels=None (or alpha=1)
    is pure distillation."""
    if temperature <= 0:
        raise ValueError(f"distillation_loss: temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation_loss: alpha must be in [0, 1], got {alpha}")
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    loss = alpha * t * t * soft
    if labels is not None and alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


# ------------------------------------------------------------------------------ §4.8 Go policy

@dataclasses.dataclass
class GoConfig:
    """Sizes of GoPolicyCNN: `planes` input features per board point, one 5 x 5 conv to
    `channels`, then `layers` 3 x 3 convs of `channels`."""
    planes: int = 48
    channels: int = 192
    layers: int = 11
    board: int = 19

    @classmethod
    def base(cls):
        """AlphaGo's policy network as the book describes it: 48 planes, 5 x 5 conv with 192
        filters, then 11 layers of 192 3 x 3 filters (layers 2-12), 361 moves."""
        return cls()

    @classmethod
    def tiny(cls):
        """4 planes (own, opponent, empty, ones: leedl_fast.data.images.go_positions), 16
        channels, two 3 x 3 layers."""
        return cls(planes=4, channels=16, layers=2)


class GoPolicyCNN(torch.nn.Module):
    """AlphaGo's policy network (BOOK.md §4.8): the board is a 19 x 19 image with one channel
    per expert feature. Layer 1: 5 x 5 filters, zero padding, stride 1, ReLU; then 3 x 3
    filters, zero padding, stride 1, ReLU; a final 1 x 1 conv gives one logit per point,
    softmax over the 361 moves (in the loss).

    There is no pooling. Pooling subsamples: it drops rows and columns, or merges neighbouring
    points, and is harmless for a photo (a bird is still a bird at half the resolution), but on
    a Go board every point matters -- removing a row or a column changes the game, and the
    network must name the exact point to play. So every layer keeps the full 19 x 19
    resolution ('same' padding, stride 1); the receptive field grows by stacking layers.

    Input (B, planes, 19, 19); output (B, 361) move logits (row-major: index = 19 * row + col)."""

    def __init__(self, config=None, nn=None):
        super().__init__()
        config = config or GoConfig.tiny()
        nn = nn or lf_nn
        self.config = config
        Conv2d, ReLU = _module(nn, "Conv2d"), _module(nn, "ReLU")
        layers = [Conv2d(config.planes, config.channels, 5, 1, 2), ReLU()]
        for _ in range(config.layers):
            layers += [Conv2d(config.channels, config.channels, 3, 1, 1), ReLU()]
        layers.append(Conv2d(config.channels, 1, 1))
        self.body = torch.nn.Sequential(*layers)

    def forward(self, planes):
        return self.body(planes).flatten(1)
