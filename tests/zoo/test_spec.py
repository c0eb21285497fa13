import pytest
import torch

from robustbench_sparse.data.datasets import DATASETS
from robustbench_sparse.runtime import REPO_ROOT, UserError
from robustbench_sparse.zoo.build import build_model
from robustbench_sparse.zoo.sparse import KWinners, KWinners2d, SparseWeights
from robustbench_sparse.zoo.spec import load_zoo, parse_zoo, select_models

ZOO = load_zoo(REPO_ROOT / "models" / "zoo.toml")


def test_the_shipped_zoo_declares_the_five_regularisers_for_mnist():
    names = [s.name for s in select_models(ZOO, "mnist5k")]
    assert set(names) == {"dense", "dropout", "batchnorm", "kwinner", "kwinner-boost"}
    assert {s.name for s in select_models(ZOO, "cifar10")} == {
        "vgg-dense", "vgg-dropout", "vgg-batchnorm", "vgg-kwinner", "vgg-kwinner-boost"
    }


def test_sparse_cnn2_has_the_papers_k_values():
    model = build_model(ZOO["kwinner-boost"]["mnist"], DATASETS["mnist"])
    kw2d = [m for m in model.modules() if isinstance(m, KWinners2d)]
    kw1d = [m for m in model.modules() if isinstance(m, KWinners)]
    assert [(m.n, m.k) for m in kw2d] == [(4608, 400), (1024, 300)]
    assert [(m.n, m.k, m.k_inference) for m in kw1d] == [(700, 100, 150)]
    assert float(kw1d[0].boost_strength) == 1.5
    sparse = next(m for m in model.modules() if isinstance(m, SparseWeights))
    assert sparse.mask.sum(1).unique().tolist() == [round(0.3 * 1024)]


def test_kwinner_differs_from_kwinner_boost_only_in_boosting():
    a, b = ZOO["kwinner"]["mnist"], ZOO["kwinner-boost"]["mnist"]
    diff = {k for k in a.__dataclass_fields__ if getattr(a, k) != getattr(b, k)}
    assert diff == {"name", "description", "boost_strength", "boost_strength_factor"}


@pytest.mark.parametrize("dataset", ["mnist5k", "cifar10"])
def test_every_model_maps_pixels_to_logits(dataset):
    info = DATASETS[dataset]
    for spec in select_models(ZOO, dataset):
        model = build_model(spec, info).eval()
        out = model(torch.rand(2, *info.shape))
        assert out.shape == (2, info.num_classes), spec.name


def test_dataset_subtable_overrides_the_recipe_and_is_inherited():
    assert ZOO["dense"]["mnist5k"].epochs != ZOO["dense"]["mnist"].epochs
    assert ZOO["dropout"]["mnist5k"].epochs == ZOO["dense"]["mnist5k"].epochs
    assert ZOO["kwinner"]["mnist5k"].lr == ZOO["kwinner-boost"]["mnist5k"].lr


def test_a_user_variant_needs_only_the_spec_file():
    zoo = parse_zoo('[models.base]\n[models.wide]\nbase = "base"\nhidden = 2000\nhidden_percent_on = 0.05\n')
    spec = zoo["wide"]["mnist5k"]
    assert spec.hidden == 2000 and spec.sparse_activations
    assert spec.config_hash("mnist5k") != zoo["base"]["mnist5k"].config_hash("mnist5k")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models.a]\nhiden = 3\n", "unknown or misplaced keys ['hiden']"),
        ("[models.a]\ndropout = 1.5\n", "dropout must be in [0, 1)"),
        ("[models.a]\nbase = 'zzz'\n", "base 'zzz' is not a model"),
        ("[models.a]\nbase = 'b'\n[models.b]\nbase = 'a'\n", "inheritance cycle"),
        ("[models.a.mnist7]\nepochs = 3\n", "'mnist7' is not a dataset"),
        ("[models.a]\nfamily = 'resnet'\n", "valid: cnn, vgg"),
        ("[models.a]\nfirst_epoch_batch_size = 2000\n", "smaller than duty_cycle_period"),
    ],
)
def test_bad_spec_files_are_refused_with_a_clear_message(text, message):
    with pytest.raises(UserError, match=None) as err:
        parse_zoo(text)
    assert message in str(err.value)


def test_unknown_model_names_list_the_valid_ones():
    with pytest.raises(UserError) as err:
        select_models(ZOO, "mnist5k", ["dense", "sparse-magic"])
    assert "sparse-magic" in str(err.value)
    assert "valid: dense, dropout, batchnorm, kwinner-boost, kwinner" in str(err.value)
