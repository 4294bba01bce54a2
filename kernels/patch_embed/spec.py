"""Argument checks for patch_embed, shared by the PyTorch and JAX front-ends.

    patch_embed(images, weight, bias, pos_embed, *, patch) -> tokens

images [batch, height, width, channels] (channels-last, floating); height % patch == 0 and
width % patch == 0; patches = (height // patch) * (width // patch), row-major over the
patch grid (patch (gh, gw) is token gh * (width // patch) + gw).
weight [patch * patch * channels, dim]: row k = (ph * patch + pw) * channels + c multiplies
pixel (gh * patch + ph, gw * patch + pw, c), i.e. the flattening order is (ph, pw, c) --
a conv2d weight w[dim, c, ph, pw] maps to weight = w.permute(2, 3, 1, 0).reshape(-1, dim).
bias [dim]; pos_embed [patches, dim] (learned position embedding added to every image).
tokens [batch, patches, dim] = unfold(images) @ weight + bias + pos_embed, images' dtype.
All four arrays share one floating dtype. Every check runs before any kernel launches.
NaN / inf in images (not checked, no sync): confined to the token of the patch holding the
pixel (all its dims non-finite, other tokens unaffected); dimages, dbias and dpos do not read
the images and stay finite, dweight sums over tokens and becomes non-finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .._checks import devices_differ

PATCH_SIZES = (14, 16)


def padded_row_length(k: int, element_size: int) -> int:
    """K rounded up so that rows of a [M, K] patch matrix start 16 bytes apart (what cuBLAS's
    vectorized kernels and cp.async want; p14 RGB bf16 rows are 1176 bytes unpadded)."""
    per = 16 // element_size
    return (k + per - 1) // per * per


@dataclass(frozen=True)
class PatchProblem:
    batch: int
    height: int
    width: int
    channels: int
    patch: int
    dim: int

    @property
    def grid_h(self) -> int:
        return self.height // self.patch

    @property
    def grid_w(self) -> int:
        return self.width // self.patch

    @property
    def patches(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def k(self) -> int:
        return self.patch * self.patch * self.channels


def _shape(name: str, x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
    return tuple(int(s) for s in shape)


def check_patch_embed_args(images, weight, bias, pos_embed, *, patch, dtypes: Sequence[Any],
                           device_of=None) -> PatchProblem:
    """Validate one call; ``dtypes`` are the accepted floating dtypes (framework objects)."""
    if isinstance(patch, bool) or not isinstance(patch, int) or patch not in PATCH_SIZES:
        raise ValueError(f"patch must be one of {PATCH_SIZES}, got {patch!r}")
    s = _shape("images", images)
    if len(s) != 4:
        raise ValueError(f"images must be 4-D [batch, height, width, channels] (channels-last), got shape {s}")
    if images.dtype not in dtypes:
        raise TypeError(f"images dtype must be one of {[str(t) for t in dtypes]}, got {images.dtype}")
    b, h, w, c = s
    if min(b, h, w, c) < 1:
        raise ValueError(f"images dimensions must all be >= 1, got shape {s}")
    if h % patch or w % patch:
        raise ValueError(f"images height={h} and width={w} must be multiples of patch={patch}")
    ws = _shape("weight", weight)
    if len(ws) != 2 or ws[0] != patch * patch * c:
        raise ValueError(
            f"weight must be [patch * patch * channels, dim] = [{patch * patch * c}, dim] for "
            f"patch={patch} and channels={c} (flattening order (ph, pw, c)), got shape {ws}"
            + (f" (its rows fit {ws[0] // (patch * patch)} channels)" if len(ws) == 2
               and ws[0] % (patch * patch) == 0 else ""))
    dim = ws[1]
    if dim < 1:
        raise ValueError(f"weight dim must be >= 1, got shape {ws}")
    n = (h // patch) * (w // patch)
    if _shape("bias", bias) != (dim,):
        raise ValueError(f"bias must have shape ({dim},), got {_shape('bias', bias)}")
    if _shape("pos_embed", pos_embed) != (n, dim):
        raise ValueError(f"pos_embed must have shape [patches, dim] = ({n}, {dim}) for "
                         f"{h}x{w} images and patch={patch}, got {_shape('pos_embed', pos_embed)}")
    for name, x in (("weight", weight), ("bias", bias), ("pos_embed", pos_embed)):
        if x.dtype != images.dtype:
            raise TypeError(f"{name} dtype must equal images dtype {images.dtype}, got {x.dtype}")
    if device_of is not None:
        dev = device_of(images)
        for name, x in (("weight", weight), ("bias", bias), ("pos_embed", pos_embed)):
            if devices_differ(dev, device_of(x)):  # None (a JAX tracer, uncommitted): not compared
                raise ValueError(f"{name} must be on images' device {dev}, got {device_of(x)}")
    return PatchProblem(batch=b, height=h, width=w, channels=c, patch=patch, dim=dim)


def patch_embed_flops(p: PatchProblem, *, backward: bool = False) -> float:
    """2 * B * N * K * D for the forward matmul; the backward's dweight and dimages double it twice."""
    f = 2.0 * p.batch * p.patches * p.k * p.dim
    return 3 * f if backward else f
