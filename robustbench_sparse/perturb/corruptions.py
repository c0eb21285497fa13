"""The 15 common corruptions of MNIST-C (Mu & Gilmer 2019, `google-research/mnist-c:corruptions.py`).

`corrupt(name, x, severity, gens)` applies one corruption to a batch [B, C, H, W] in [0, 1]; each
corruption follows the published per-severity parameters (docs/suites.md#corruptions) and defaults to
MNIST-C's severity (`CORRUPTIONS[name].default_severity`).

Randomness follows `noise.py`: one private generator per image, and every draw for image i (signs,
angles, noise, line positions, fractals) comes from `gens[i]` alone through torch's `generator=`
(converted to numpy where a library needs numpy), so an image's corruption never depends on the
batch it is in. All work runs on the CPU in float64 and the result goes back to the input's device
and dtype, so a GPU run corrupts its images exactly as a CPU run does, and the same inputs and
generators give bit-identical outputs.

Where a library has the operation it does the work (scipy.ndimage's Gaussian filter, kornia's
warp_affine and HSV conversions, skimage's Canny); the rest is our own code, marked as such: glass
blur's pixel swaps, motion blur (ImageMagick's one-sided Gaussian line, which no Python library
builds), fog's diamond-square plasma fractal, spatter's liquid layer, stripe, and MNIST-C's soft
lines for dotted_line and zigzag.

Beyond MNIST-C's 28 x 28 grey images, every corruption is defined for C = 1 or 3 channels and any
H, W >= 8: lines, stripes and the affine centre scale with the image; pixel-sized parameters (blur
sigmas, swap distances, translations, zigzag legs) stay in pixels; colour images get the same
spatter/fog/line layer on every channel, brightness in HSV, and Canny on the luminance. The
`grey_28_only` flag and `check_shape` exist for a corruption that could not be generalised; none of
the 15 needs it today.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Generators = list[torch.Generator]
CorruptionFn = Callable[[torch.Tensor, int, Generators], torch.Tensor]

SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 8
_F64 = torch.float64


@dataclass(frozen=True)
class Corruption:
    """One corruption. `fn(x, severity, gens)` works on a batch already validated by `corrupt`
    (float64, CPU, non-empty); call `corrupt`, not `fn`. `source` names the library doing the work."""

    name: str
    description: str
    default_severity: int
    source: str
    fn: CorruptionFn
    grey_28_only: bool = False


# --- shared helpers -----------------------------------------------------------------------------


def _per_image(x: torch.Tensor, gens: Generators,
               one: Callable[[torch.Tensor, torch.Generator], torch.Tensor]) -> torch.Tensor:
    """Corrupt image by image, image i drawing only from gens[i]."""
    return torch.stack([one(img, g) for img, g in zip(x, gens, strict=True)])


def _uniform(g: torch.Generator, shape: Sequence[int] = ()) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=g, dtype=_F64)


def _sign(g: torch.Generator) -> float:
    """-1 or +1 with equal probability (MNIST-C's `np.random.choice([-1, 1])`)."""
    return 1.0 if int(torch.randint(0, 2, (), generator=g)) else -1.0


def _gaussian_blur(a: np.ndarray, sigma: float, rows_only: bool = False) -> np.ndarray:
    """skimage.filters.gaussian as MNIST-C calls it (scipy.ndimage.gaussian_filter, mode 'nearest',
    truncate 4) over the last two axes, or over the rows axis only (see `_glass_blur`)."""
    from scipy.ndimage import gaussian_filter

    sigmas = (0.0,) * (a.ndim - 2) + (sigma, 0.0 if rows_only else sigma)
    return gaussian_filter(a, sigma=sigmas, mode="nearest", truncate=4.0)


# --- noise --------------------------------------------------------------------------------------

_SHOT = (60, 25, 12, 5, 3)
_IMPULSE = (0.03, 0.06, 0.09, 0.17, 0.27)


def _shot_noise(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Shot noise, torch.poisson: x' = Poisson(c x) / c per pixel and channel,
    c = [60, 25, 12, 5, 3] (MNIST-C's shot_noise)."""
    c = float(_SHOT[severity - 1])
    return _per_image(x, gens, lambda img, g: torch.poisson(img * c, generator=g) / c)


def _impulse_noise(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Salt-and-pepper noise as skimage.util.random_noise(mode='s&p') defines it (MNIST-C calls
    that): each pixel and channel is hit with probability amount = [.03, .06, .09, .17, .27], a hit
    set to 1 or 0 with equal odds. Drawn with torch (skimage's function takes only numpy seeds)."""
    amount = _IMPULSE[severity - 1]

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        hit = _uniform(g, img.shape) < amount
        salt = _uniform(g, img.shape) < 0.5
        return torch.where(hit, salt.to(img.dtype), img)

    return _per_image(x, gens, one)


# --- blur ---------------------------------------------------------------------------------------

_GLASS = ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2))
_MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))


def _glass_blur(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Glass blur: Gaussian blur sigma (scipy.ndimage.gaussian_filter), stored as 8 bits as MNIST-C
    does, then `iterations` sweeps of local pixel swaps, then the same blur again;
    (sigma, delta, iterations) = [(0.7,1,2), (0.9,2,1), (1,2,3), (1.1,3,2), (1.5,4,2)].

    The blur is exactly what MNIST-C's call gaussian(x, sigma, multichannel=True) did on its 2-D
    28 x 28 arrays in the skimage of its time: it took the last axis for channels, so a grey image
    is blurred along the rows axis only (vertically); on an H x W x 3 array the same call blurs
    both spatial axes, which is what a colour image gets here.

    The swaps are our own (no library has them), in MNIST-C's order: rows H-delta down to delta+1,
    within each row columns W-delta down to delta+1; each site with probability 1/2 swaps (all
    channels) with the pixel at offset (dy, dx), each uniform in [-delta, delta - 1] (numpy's
    randint(-delta, delta), as published)."""
    sigma, delta, iterations = _GLASS[severity - 1]
    _, c, h, w = x.shape
    rows_only = c == 1
    sites = [(r, q) for r in range(h - delta, delta, -1) for q in range(w - delta, delta, -1)]

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a = np.floor(_gaussian_blur(img.numpy(), sigma, rows_only) * 255.0) / 255.0
        # The swaps only move pixels: follow them on an index permutation, then move every channel
        # once. perm[p] = the original position of the pixel now at p.
        perm = list(range(h * w))
        for _ in range(iterations):
            swap = (_uniform(g, (len(sites),)) < 0.5).tolist()
            step = torch.randint(-delta, delta, (len(sites), 2), generator=g).tolist()
            for (r, q), do, (dy, dx) in zip(sites, swap, step, strict=True):
                if do:
                    p, p2 = r * w + q, (r + dy) * w + (q + dx)
                    perm[p], perm[p2] = perm[p2], perm[p]
        a = a.reshape(c, h * w)[:, perm].reshape(c, h, w)
        return torch.from_numpy(_gaussian_blur(a, sigma, rows_only))

    return _per_image(x, gens, one)


def _motion_taps(radius: float, sigma: float, angle_deg: float) -> list[tuple[int, int, float]]:
    """ImageMagick's MotionBlurImage taps (MNIST-C calls it through Wand), our own build: width =
    2 ceil(radius) + 1 taps with one-sided Gaussian weights exp(-i^2 / 2 sigma^2), i = 0 .. width-1,
    normalised; tap i samples the pixel (ceil(i sin a - 1/2), ceil(i cos a - 1/2)) rows/columns
    away. Returns (row offset, column offset, weight) per tap."""
    width = 2 * math.ceil(radius) + 1
    weight = torch.exp(-torch.arange(width, dtype=_F64) ** 2 / (2.0 * sigma * sigma))
    weight = (weight / weight.sum()).tolist()
    angle = math.radians(angle_deg)
    px, py = width * math.sin(angle), width * math.cos(angle)
    hyp = math.hypot(px, py)
    return [(math.ceil(i * px / hyp - 0.5), math.ceil(i * py / hyp - 0.5), weight[i]) for i in range(width)]


def _motion_blur(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Motion blur: ImageMagick's motion blur (radius, sigma) = [(10,3), (15,5), (15,8), (15,12),
    (20,15)] at an angle uniform in [-45, 45) degrees, as MNIST-C. Our own code (`_motion_taps`):
    kornia's motion_blur / get_motion_kernel2d build a uniform (or linearly ramped) line, not
    ImageMagick's one-sided Gaussian, and a dense (4 radius + 1)^2 kernel through kornia's filter2d
    is 20x slower than summing the 2 radius + 1 shifted copies ImageMagick sums. Pixels beyond the
    border repeat the edge (torch.nn.functional.pad 'replicate', ImageMagick's default virtual
    pixels). MNIST-C's 8-bit PNG round trip is not reproduced."""
    import torch.nn.functional as F

    radius, sigma = _MOTION[severity - 1]
    _, _, h, w = x.shape
    reach = 2 * math.ceil(radius)

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        angle = float(_uniform(g)) * 90.0 - 45.0
        padded = F.pad(img[None], (reach,) * 4, mode="replicate")[0]
        out = torch.zeros_like(img)
        for dy, dx, weight in _motion_taps(radius, sigma, angle):
            out += weight * padded[:, reach + dy:reach + dy + h, reach + dx:reach + dx + w]
        return out

    return _per_image(x, gens, one)


# --- geometry -----------------------------------------------------------------------------------

_SHEAR = (0.2, 0.4, 0.6, 0.8, 1.0)
_ROTATE = (0.2, 0.4, 0.6, 0.8, 1.0)
_ZOOM = (0.9, 0.8, 0.7, 0.6, 0.5)
_SHIFT = (1, 2, 3, 4, 5)


def _centred(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """The 3x3 map p -> A p + t with t chosen so that the image centre ((W-1)/2, (H-1)/2), i.e.
    MNIST-C's (13.5, 13.5), is fixed; coordinates are (column, row)."""
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    out = np.eye(3)
    out[:2, :2] = a
    out[:2, 2] = centre - a @ centre
    return out


def _warp(x: torch.Tensor, inverse_maps: list[np.ndarray]) -> torch.Tensor:
    """skimage.transform.warp(x, inverse_map, order=1, mode='constant', cval=0), MNIST-C's call,
    done by kornia.geometry.transform.warp_affine (bilinear, zero padding, align_corners=True puts
    pixel centres on integer coordinates as skimage does). `inverse_maps[i]` maps an output pixel
    (column, row) of image i to where it samples the input; kornia takes the forward map."""
    from kornia.geometry.transform import warp_affine

    forward = torch.linalg.inv(torch.from_numpy(np.stack(inverse_maps)))[:, :2, :]
    h, w = x.shape[-2:]
    return torch.stack([
        warp_affine(img[None], m[None], dsize=(h, w), mode="bilinear", padding_mode="zeros",
                    align_corners=True)[0]
        for img, m in zip(x, forward, strict=True)])


def _shear(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Shear: MNIST-C's skimage AffineTransform(shear=s) as inverse map, s = +-[0.2, 0.4, 0.6, 0.8,
    1.0] (random sign), centre fixed. The matrix is the one of the skimage MNIST-C used,
    [[1, -sin s], [0, cos s]] on (column, row) (skimage >= 0.21 builds [[1, -tan s], [0, 1]]
    instead); warped by kornia.geometry.transform.warp_affine."""
    _, _, h, w = x.shape
    maps = []
    for g in gens:
        s = _sign(g) * _SHEAR[severity - 1]
        maps.append(_centred(np.array([[1.0, -math.sin(s)], [0.0, math.cos(s)]]), h, w))
    return _warp(x, maps)


def _rotate(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Rotate: skimage AffineTransform(rotation=a) as inverse map, a = +-[0.2, 0.4, 0.6, 0.8, 1.0]
    radians (random sign), centre fixed (MNIST-C); warped by kornia.geometry.transform.warp_affine."""
    _, _, h, w = x.shape
    maps = []
    for g in gens:
        a = _sign(g) * _ROTATE[severity - 1]
        maps.append(_centred(np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]), h, w))
    return _warp(x, maps)


def _scale(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Scale: zoom out by z = [0.9, 0.8, 0.7, 0.6, 0.5] about the fixed centre, i.e. skimage
    AffineTransform(scale=1/z) as inverse map (MNIST-C); no randomness. Warped by
    kornia.geometry.transform.warp_affine."""
    _, _, h, w = x.shape
    inv = 1.0 / _ZOOM[severity - 1]
    return _warp(x, [_centred(np.eye(2) * inv, h, w)] * len(gens))


def _translate(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Translate: k = [1, 2, 3, 4, 5] pixels along each axis with independent random signs, i.e.
    skimage AffineTransform(translation=(+-k, +-k)) as inverse map (MNIST-C; the content moves by
    minus that). Warped by kornia.geometry.transform.warp_affine (integer shifts are exact)."""
    k = float(_SHIFT[severity - 1])
    maps = []
    for g in gens:
        m = np.eye(3)
        m[0, 2] = k * _sign(g)
        m[1, 2] = k * _sign(g)
        maps.append(m)
    return _warp(x, maps)


# --- colour and weather -------------------------------------------------------------------------

_BRIGHT = (0.1, 0.2, 0.3, 0.4, 0.5)
_FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))
# (loc, scale, liquid sigma, threshold, mask sigma); MNIST-C's sixth value (mud or water) is unused there.
_SPATTER = ((0.65, 0.3, 4, 0.69, 0.6), (0.65, 0.3, 3, 0.68, 0.6), (0.65, 0.3, 2, 0.68, 0.5),
            (0.65, 0.3, 1, 0.65, 1.5), (0.67, 0.4, 1, 0.65, 1.5))
_MUD = 63.0 / 255.0
_GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, which MNIST-C goes back through


def _brightness(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Brightness: V channel + [.1, .2, .3, .4, .5] in HSV, clipped to [0, 1] (MNIST-C). kornia.color
    does rgb_to_hsv / hsv_to_rgb; a grey image goes through RGB and back with skimage's rgb2gray
    weights as published (which reduces to clip(x + c, 0, 1)). No randomness."""
    import kornia.color as kc

    c = _BRIGHT[severity - 1]
    grey = x.shape[1] == 1
    rgb = x.expand(-1, 3, -1, -1) if grey else x
    hsv = kc.rgb_to_hsv(rgb)
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)], dim=1)
    out = kc.hsv_to_rgb(hsv)
    if grey:
        out = kc.rgb_to_grayscale(out, rgb_weights=torch.tensor(_GREY_WEIGHTS, dtype=_F64))
    return out


def _plasma_fractal(size: int, decay: float, g: torch.Generator) -> torch.Tensor:
    """Our own diamond-square height map (no library has it), as MNIST-C's plasma_fractal: a
    size x size toroidal grid (size a power of two) starting from 0 at the corner; at each level the
    square centres and then the diamond centres get the mean of their four neighbours plus
    wibble * U(-wibble, wibble), wibble starting at 100 and divided by `decay` per level; the map is
    then rescaled to [0, 1]."""
    grid = torch.zeros(size, size, dtype=_F64)
    wibble = 100.0
    step = size

    def jitter(total: torch.Tensor) -> torch.Tensor:
        return total / 4.0 + wibble * (_uniform(g, total.shape) * 2.0 - 1.0) * wibble

    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        total = corners + corners.roll(-1, 0)
        grid[half::step, half::step] = jitter(total + total.roll(-1, 1))
        centres = grid[half::step, half::step]
        corners = grid[0::step, 0::step]
        # points between two corners of a row: those corners and the centres above and below
        grid[0::step, half::step] = jitter(corners + corners.roll(-1, 1) + centres + centres.roll(1, 0))
        # points between two corners of a column: those corners and the centres left and right
        grid[half::step, 0::step] = jitter(corners + corners.roll(-1, 0) + centres + centres.roll(1, 1))
        step = half
        wibble /= decay
    grid = grid - grid.min()
    return grid / grid.max()


def _fog(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Fog: x + c0 * plasma fractal (own diamond-square, decay c1), then x * max / (max + c0) with
    max the image's maximum, clipped; (c0, c1) = [(1.5,2), (2,2), (2.5,1.7), (2.5,1.5), (3,1.4)]
    (MNIST-C). The fractal is 256 x 256 as published (the next power of two for larger images),
    its top-left H x W corner used, the same on every channel."""
    c0, c1 = _FOG[severity - 1]
    _, _, h, w = x.shape
    size = max(256, 1 << (max(h, w) - 1).bit_length())

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        layer = _plasma_fractal(size, c1, g)[:h, :w]
        top = img.max()
        return (img + c0 * layer) * top / (top + c0)

    return _per_image(x, gens, one)


def _spatter(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Spatter (mud), our own liquid layer after MNIST-C: a Gaussian layer N(loc, scale) per pixel,
    blurred by sigma_1 (scipy.ndimage.gaussian_filter), the mask (layer > threshold) blurred by
    sigma_2 and zeroed below 0.8, then x' = x (1 - m) + 63/255 m; (loc, scale, sigma_1, threshold,
    sigma_2) = [(.65,.3,4,.69,.6), (.65,.3,3,.68,.6), (.65,.3,2,.68,.5), (.65,.3,1,.65,1.5),
    (.67,.4,1,.65,1.5)]. One H x W layer per image, the same on every channel."""
    loc, scale, sigma_1, threshold, sigma_2 = _SPATTER[severity - 1]
    _, _, h, w = x.shape

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        liquid = (loc + scale * torch.randn((h, w), generator=g, dtype=_F64)).numpy()
        liquid = _gaussian_blur(liquid, sigma_1)
        mask = _gaussian_blur((liquid > threshold).astype(np.float64), sigma_2)
        mask[mask < 0.8] = 0.0
        m = torch.from_numpy(mask)
        return img * (1.0 - m) + _MUD * m

    return _per_image(x, gens, one)


# --- overlays and edges -------------------------------------------------------------------------


def _stripe(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Stripe: invert (1 - x) the leftmost and rightmost quarter of the columns, round(W / 4) each:
    columns 0-6 and 21-27 on 28 x 28 as MNIST-C. Our own (one line); no randomness, severity has no
    effect (MNIST-C has none)."""
    k = round(x.shape[-1] / 4)
    out = x.clone()
    out[..., :k] = 1.0 - x[..., :k]
    out[..., x.shape[-1] - k:] = 1.0 - x[..., x.shape[-1] - k:]
    return out


def _soft_line(h: int, w: int, c0: float, r0: float, c1: float, r1: float) -> torch.Tensor:
    """MNIST-C's line_from_points, our own vectorised version (skimage.draw.line_aa draws a thinner,
    dimmer 2-pixel line): the line through (c0, r0) and (c1, r1), each pixel valued
    1 + log(1 - d / 2.3) clipped to [0, 1], d its vertical distance to the line, only in columns
    floor(c0) to ceil(c1) - 1."""
    layer = torch.zeros(h, w, dtype=_F64)
    if c1 == c0:
        return layer
    cols = torch.arange(w, dtype=_F64)
    rows = torch.arange(h, dtype=_F64)
    centre = (r1 - r0) / (c1 - c0) * (cols - c0) + r0
    dist = (rows[:, None] - centre[None, :]).abs().clamp(max=2.3 - 1e-10)
    layer = (torch.log(1.0 - dist / 2.3) + 1.0).clamp(0.0, 1.0)
    layer[:, :max(0, math.floor(c0))] = 0.0
    layer[:, max(0, math.ceil(c1)):] = 0.0
    return layer


def _dotted_line(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Dotted line (MNIST-C): the soft line (`_soft_line`, own) from (column 0, row r0) to
    (column W-1, row r1), r0, r1 uniform in [0, H-2], with every other 2-column segment removed
    (columns 0-1, 4-5, ... blank), added to x and clipped. Severity has no effect (MNIST-C has none)."""
    _, _, h, w = x.shape
    dashes = ((torch.arange(w) // 2) % 2 == 1).to(_F64)

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        r0, r1 = torch.randint(0, h - 1, (2,), generator=g).tolist()
        return img + _soft_line(h, w, 0.0, float(r0), float(w - 1), float(r1)) * dashes

    return _per_image(x, gens, one)


def _zigzag_points(w: int, r0: int, r1: int) -> list[tuple[float, float]]:
    """MNIST-C's zigzag vertices (column, row): legs of length a = 2 and amplitude b = 2 along the
    line from (2, r0) to (W - 3, r1), plus its odd closing point, rotated onto that line."""
    a = b = 2.0
    c0, c1 = 2.0, float(w - 3)
    theta = math.atan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / math.cos(theta)
    pts = [(0.0, 0.0)] + [((2 * i + 1) * a, (-1.0) ** i * b) for i in range(int((d - a) // (2 * a)) + 1)]
    full = 2 * a * (d // (2 * a))
    if d != full:
        pts.append((d, pts[-1][1] / (2 * (d - full))))
    cos, sin = math.cos(theta), math.sin(theta)
    return [(c * cos - r * sin + c0, c * sin + r * cos + r0) for c, r in pts]


def _zigzag(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Zigzag (MNIST-C): soft line segments (`_soft_line`, own) through the zigzag vertices along a
    random line from column 2 to column W-3 (25 on 28 x 28), r0 uniform in [0, H-2] and
    r1 = r0 + uniform integer in [-5, 4], added to x and clipped. Severity has no effect."""
    _, _, h, w = x.shape

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        r0 = int(torch.randint(0, h - 1, (), generator=g))
        r1 = r0 + int(torch.randint(-5, 5, (), generator=g))
        pts = _zigzag_points(w, r0, r1)
        layer = torch.zeros(h, w, dtype=_F64)
        for (ca, ra), (cb, rb) in zip(pts[:-1], pts[1:], strict=True):
            layer = layer + _soft_line(h, w, ca, ra, cb, rb)
        return img + layer  # one clip at the end equals MNIST-C's clip after each segment

    return _per_image(x, gens, one)


def _canny_edges(x: torch.Tensor, severity: int, gens: Generators) -> torch.Tensor:
    """Canny edges: skimage.feature.canny(x) with its defaults (sigma 1, hysteresis thresholds
    0.1 / 0.2) as a binary {0, 1} image (MNIST-C); a colour image's edges are those of its luminance
    (skimage.color.rgb2gray), repeated on every channel. No randomness; severity has no effect."""
    from skimage.color import rgb2gray
    from skimage.feature import canny

    c = x.shape[1]

    def one(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        grey = img[0].numpy() if c == 1 else rgb2gray(img.permute(1, 2, 0).numpy())
        edges = torch.from_numpy(canny(grey).astype(np.float64))
        return edges.expand(c, -1, -1)

    return _per_image(x, gens, one)


# --- the registry -------------------------------------------------------------------------------

_NO_SEVERITY = " MNIST-C gives it no severity: 1-5 accepted, no effect."

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in [
    Corruption("shot_noise", "Poisson(c x) / c, c = [60, 25, 12, 5, 3]", 5,
               "torch.poisson", _shot_noise),
    Corruption("impulse_noise", "salt and pepper, amount [.03, .06, .09, .17, .27] of the pixels", 4,
               "own torch draws with skimage.util.random_noise's s&p semantics", _impulse_noise),
    Corruption("glass_blur", "blur (grey: vertical only, as MNIST-C's code did), local pixel swaps, "
               "blur: (sigma, delta, n) = [(0.7,1,2), (0.9,2,1), (1,2,3), (1.1,3,2), (1.5,4,2)]", 1,
               "scipy.ndimage.gaussian_filter + own pixel swaps", _glass_blur),
    Corruption("motion_blur", "ImageMagick motion blur (radius, sigma) = [(10,3), (15,5), (15,8), "
               "(15,12), (20,15)], angle U(-45, 45) degrees", 1,
               "own: ImageMagick motion-blur taps on torch.nn.functional.pad(replicate)", _motion_blur),
    Corruption("shear", "shear +-[0.2, 0.4, 0.6, 0.8, 1.0] (random sign), centre fixed", 2,
               "kornia.geometry.transform.warp_affine", _shear),
    Corruption("scale", "zoom out by [0.9, 0.8, 0.7, 0.6, 0.5], centre fixed", 3,
               "kornia.geometry.transform.warp_affine", _scale),
    Corruption("rotate", "rotate +-[0.2, 0.4, 0.6, 0.8, 1.0] rad (random sign), centre fixed", 2,
               "kornia.geometry.transform.warp_affine", _rotate),
    Corruption("brightness", "HSV value + [.1, .2, .3, .4, .5]", 5,
               "kornia.color.rgb_to_hsv / hsv_to_rgb", _brightness),
    Corruption("translate", "shift by [1, 2, 3, 4, 5] px on each axis, random signs", 3,
               "kornia.geometry.transform.warp_affine", _translate),
    Corruption("stripe", "invert the left and right quarter of the columns (0-6 and 21-27 on 28 x 28)."
               + _NO_SEVERITY, 1, "own: column inversion", _stripe),
    Corruption("fog", "x + c0 plasma (decay c1), rescaled: (c0, c1) = [(1.5,2), (2,2), (2.5,1.7), "
               "(2.5,1.5), (3,1.4)]", 5, "own: diamond-square plasma", _fog),
    Corruption("spatter", "blurred, thresholded Gaussian liquid layer as mud (63/255)", 4,
               "scipy.ndimage.gaussian_filter + own liquid layer", _spatter),
    Corruption("dotted_line", "a random soft line from the left to the right edge, every other 2-column "
               "segment removed." + _NO_SEVERITY, 1, "own: MNIST-C soft line", _dotted_line),
    Corruption("zigzag", "a zigzag of 2-pixel legs along a random line from column 2 to W-3."
               + _NO_SEVERITY, 1, "own: MNIST-C soft line segments", _zigzag),
    Corruption("canny_edges", "binary Canny edge map (of the luminance for colour images)."
               + _NO_SEVERITY, 1, "skimage.feature.canny", _canny_edges),
]}


# --- the public entry points --------------------------------------------------------------------


def _spec(name: str) -> Corruption:
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}") from None


def check_shape(name: str, shape: Sequence[int]) -> str | None:
    """None if corruption `name` can corrupt a batch of this shape [B, C, H, W], else why not
    (callers can refuse before any work starts). Unknown names raise ValueError."""
    spec = _spec(name)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        return f"{name}: needs a batch [B, C, H, W], got shape {shape}"
    _, c, h, w = shape
    if spec.grey_28_only and (c, h, w) != (1, 28, 28):
        return f"{name}: defined only for 28x28 grey images [B, 1, 28, 28], got {shape}"
    if c not in (1, 3):
        return f"{name}: needs 1 (grey) or 3 (RGB) channels, got shape {shape}"
    if h < MIN_SIDE or w < MIN_SIDE:
        return f"{name}: needs H, W >= {MIN_SIDE}, got shape {shape}"
    return None


def corrupt(name: str, x: torch.Tensor, severity: int, gens: list[torch.Generator]) -> torch.Tensor:
    """Corruption `name` at `severity` (an int 1-5) on x [B, C, H, W] in [0, 1], one generator per
    image; returns x's shape, dtype and device, values in [0, 1]."""
    spec = _spec(name)
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"{name}: severity must be an int in 1..5, got {severity!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name}: needs a floating-point tensor, got {type(x).__name__}"
                         + (f" of {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    problem = check_shape(name, x.shape)
    if problem is not None:
        raise ValueError(problem)
    if len(gens) != len(x):
        raise ValueError(f"{len(x)} images but {len(gens)} generators: one generator per image")
    if len(x) == 0:
        return x.clone()
    work = x.detach().to(device="cpu", dtype=_F64)
    out = spec.fn(work, int(severity), list(gens))
    return out.clamp(0.0, 1.0).to(device=x.device, dtype=x.dtype)
