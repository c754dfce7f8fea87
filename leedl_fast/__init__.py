"""leedl_fast: fast fused PyTorch operators (Triton, C++, CUDA) for the LeeDL textbook's models.

    import leedl_fast.functional as F      # instead of torch.nn.functional
    leedl_fast.nn.LayerNorm(...)           # instead of torch.nn.LayerNorm
    leedl_fast.accelerate(model)           # swap a model's modules in place, weights kept
    with leedl_fast.backend("reference"):  # force an implementation (cpu/triton/cuda/reference)
"""
import torch  # noqa: F401  (first: loads libc10/libtorch, which _C links against)

from . import _C  # noqa: F401  (registers the op schemas and the C++ CPU kernels)
from ._backend import BACKENDS, available_backends, backend, forced_backend
from ._ops import attention as _attention_ops  # noqa: F401  (fake, GPU, autograd)
from ._ops import conv as _conv_ops  # noqa: F401  (fake, GPU, autograd)
from ._ops import quant as _quant_ops  # noqa: F401  (fake, GPU, autograd)
from ._ops import norm as _norm_ops  # noqa: F401  (fake, GPU and autograd registrations)
from ._ops import rnn as _rnn_ops  # noqa: F401  (fake and autograd registrations)
from ._ops import rnn_gpu as _rnn_gpu_ops  # noqa: F401
from ._ops import optim as _optim_ops  # noqa: F401  (fakes and GPU kernels)
from . import functional, nn, optim, quant  # noqa: E402
from .accelerate import accelerate  # noqa: E402
from .nn.conv import fold_batchnorm  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BACKENDS", "available_backends", "backend", "forced_backend", "functional", "nn",
           "accelerate", "fold_batchnorm", "optim", "quant"]
