"""Fast attacks that are never weaker: per-image early stopping, eps-sweep pruning, the k-winners
layer checked against its definition, and the first conv's fast input gradient."""

import dataclasses

import pytest
import torch
import torchattacks

from robustbench_sparse.data.datasets import dataset_info
from robustbench_sparse.evaluation.cells import Cell
from robustbench_sparse.evaluation.kinds import resolve
from robustbench_sparse.evaluation.suites import parse_suite
from robustbench_sparse.execution.cache import ArtifactStore
from robustbench_sparse.execution.executor import perturbed_set
from robustbench_sparse.perturb import attacks
from robustbench_sparse.perturb.attacks import BudgetViolation, craft, crafting, loop
from robustbench_sparse.results import harness
from robustbench_sparse.results.store import ResultStore
from robustbench_sparse.runtime import UserError, eval_mode
from robustbench_sparse.zoo.checkpoints import load_checkpoint
from robustbench_sparse.zoo.sparse import KWinners, KWinners2d
from robustbench_sparse.zoo.spec import load_zoo, select_models

CPU = torch.device("cpu")
INFO = dataset_info("mnist5k")
ZOO = ["dense", "dropout", "batchnorm", "kwinner-boost", "kwinner"]
ITERATIVE = {
    "ifgsm": {"steps": 10, "alpha": "auto"},
    "mifgsm": {"steps": 10, "alpha": "auto", "decay": 1.0},
    "pgd": {"steps": 20, "alpha": 0.01, "random_start": True},
}


def _model(paths, name):
    spec = select_models(load_zoo(paths.zoo_spec), "mnist5k", [name])[0]
    return load_checkpoint(paths, spec, INFO, 0)[0].eval()


def _fooled(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) != y


def _library(model, kind, params, x, y, seed):
    """torchattacks itself, seeded as the harness seeds it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return attacks.attack_of(kind).build("torchattacks", model, params, seed)(x, y)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("kind", list(ITERATIVE))
def test_early_stopping_is_the_library_trajectory_cut_short(trained_home, mnist5k, name, kind):
    """Per image: every image torchattacks fools is fooled with early stopping too, and an image
    early stopping never fooled ends exactly where torchattacks leaves it (same start, same
    steps, bit for bit). So accuracy is never above the library's, at every eps."""
    model = _model(trained_home, name)
    x, y = mnist5k.test_x[:60], mnist5k.test_y[:60]
    for eps in (0.05, 0.15, 0.3):
        params = {**ITERATIVE[kind], "eps": eps}
        fast = craft(model, kind, {**params, "early_stop": True}, x, y, seed=11)
        plain = _library(model, kind, params, x, y, seed=11)
        assert (fast - x).abs().max() <= eps + 1e-6 and fast.min() >= 0 and fast.max() <= 1
        fast_fooled, plain_fooled = _fooled(model, fast, y), _fooled(model, plain, y)
        assert not (plain_fooled & ~fast_fooled).any(), (name, kind, eps)
        untouched = ~fast_fooled
        assert torch.equal(fast[untouched], plain[untouched]), (name, kind, eps)
        excess = (fast_fooled.float().mean() - plain_fooled.float().mean()) * -100
        assert excess <= 0.5


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("kind", list(ITERATIVE))
def test_without_early_stopping_our_loop_is_the_library_bit_for_bit(trained_home, mnist5k, name, kind):
    """early_stop = false runs our loop for every image and every step (images of all batches
    pooled, chunks on several threads): every image ends exactly where torchattacks leaves it."""
    model = _model(trained_home, name)
    x, y = mnist5k.test_x[:50], mnist5k.test_y[:50]
    for eps in (0.1, 0.3):
        params = {**ITERATIVE[kind], "eps": eps}
        ours = attacks.craft_batches(model, kind, {**params, "early_stop": False}, x, y, [7, 8], list(range(50)), 25)
        library = torch.cat([_library(model, kind, params, x[f : f + 25], y[f : f + 25], seed) for f, seed in
                             ((0, 7), (25, 8))])
        assert torch.equal(ours, library), (name, kind, eps)
    if kind == "pgd":  # restarts: each image keeps its first fooling run, as the library path does
        params = {**ITERATIVE[kind], "eps": 0.1, "restarts": 3}
        ours = craft(model, kind, {**params, "early_stop": False}, x, y, seed=9)
        library = crafting.restarted(model, attacks.attack_of(kind), params, x, y, 9, "torchattacks",
                                     torch.arange(len(x)))
        assert torch.equal(ours, library)


@pytest.mark.parametrize("name", ZOO)
def test_an_images_logits_and_gradient_do_not_depend_on_the_thread_count(trained_home, mnist5k, name):
    """Our loop decides 'fooled' and steps on chunks of one torch thread each, the library and the
    scoring run on all of them: the logits and input gradients must be the same bit for bit."""
    from robustbench_sparse.runtime import torch_threads

    model = _model(trained_home, name)
    x, y = mnist5k.test_x[:40], mnist5k.test_y[:40]

    def step():
        c = x.clone().requires_grad_(True)
        logits = model(c)
        return logits.detach(), torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), c)[0]

    with torch_threads(1):
        one = step()
    with torch_threads(2):
        two = step()
        assert attacks.crafting_threads(CPU) == 2
        pooled = craft(model, "pgd", {**ITERATIVE["pgd"], "eps": 0.1}, x, y, seed=2)
    with torch_threads(1):
        assert attacks.crafting_threads(CPU) == 1
        alone = craft(model, "pgd", {**ITERATIVE["pgd"], "eps": 0.1}, x, y, seed=2)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert torch.equal(pooled, alone)
    assert loop._chunks(0, 4, 2) == [] and loop._chunks(9, 4, 1) == [slice(0, 4), slice(4, 8), slice(8, 9)]
    assert [s.stop - s.start for s in loop._chunks(9, 4, 2)] == [3, 3, 3]


def test_early_stopping_is_seeded_and_stops_only_fooled_images(trained_home, mnist5k):
    model = _model(trained_home, "kwinner-boost")
    x, y = mnist5k.test_x[:40], mnist5k.test_y[:40]
    params = {**ITERATIVE["pgd"], "eps": 0.2}
    one = craft(model, "pgd", params, x, y, seed=3)
    assert torch.equal(one, craft(model, "pgd", params, x, y, seed=3))
    assert not torch.equal(one, craft(model, "pgd", params, x, y, seed=4))
    # Every image stopped early is misclassified at the example it keeps.
    rows = torch.arange(len(x))
    pgd = attacks.attack_of("pgd")
    start, scale = loop._starts(pgd, params, x, [3], list(range(len(x))), len(x))
    found, stopped = loop._iterate(model, pgd, params, x, y, start, scale, rows, len(x))
    assert torch.equal(found, one)
    assert _fooled(model, found[stopped], y[stopped]).all()


@pytest.mark.parametrize("kind", list(ITERATIVE))
def test_batches_stepped_together_give_each_batch_its_own_result(trained_home, mnist5k, kind):
    """craft_batches steps the images still attacked in all batches together, in chunks: each
    image gets bit for bit what `craft` on its own batch gives it (also with pruning)."""
    model = _model(trained_home, "kwinner-boost")
    x, y = mnist5k.test_x[:70], mnist5k.test_y[:70]
    params = {**ITERATIVE[kind], "eps": 0.15, "restarts": 2} if kind == "pgd" else {**ITERATIVE[kind], "eps": 0.15}
    seeds, per_image = [4, 5, 6], list(range(100, 170))
    todo = torch.arange(len(x)) % 4 != 1
    pooled = attacks.craft_batches(model, kind, params, x, y, seeds, per_image, 25, todo=todo)
    alone = torch.cat([craft(model, kind, params, x[f : f + 25], y[f : f + 25], seeds[i], per_image[f : f + 25],
                             todo=todo[f : f + 25]) for i, f in enumerate(range(0, 70, 25))])
    assert torch.equal(pooled, alone)


def test_todo_attacks_only_the_marked_images_from_the_full_batch_start(trained_home, mnist5k):
    """A pruned sweep attacks a subset of a batch: those images start where they would in the
    whole batch (the batch-wide random start is drawn for the whole batch), the rest stay x."""
    model = _model(trained_home, "dense")
    x, y = mnist5k.test_x[:50], mnist5k.test_y[:50]
    params = {**ITERATIVE["pgd"], "eps": 0.1}
    todo = torch.arange(len(x)) % 3 == 0
    whole = craft(model, "pgd", params, x, y, seed=5)
    part = craft(model, "pgd", params, x, y, seed=5, todo=todo)
    assert torch.equal(part[~todo], x[~todo])
    assert torch.equal(part[todo], whole[todo])


def test_mifgsm_on_zero_gradients_matches_the_library():
    """Where the input gradient is exactly zero, MI-FGSM's normalisation is 0 / 0: the library and
    our loop both leave such an image where it is (torch's sign(NaN) is 0), with no NaN pixels."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    x, y = torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    params = {"eps": 0.1, "steps": 3, "alpha": "auto", "decay": 1.0}
    fast = craft(model, "mifgsm", {**params, "early_stop": True}, x, y, seed=0)
    assert torch.equal(fast, x) and torch.equal(fast, craft(model, "mifgsm", {**params, "early_stop": False}, x, y, seed=0))
    assert torch.equal(fast, _library(model, "mifgsm", params, x, y, seed=0))
    with pytest.raises(BudgetViolation, match="NaN"):
        attacks.check_budget(x, torch.full_like(x, float("nan")), 0.1)


def test_early_stop_parameter_and_backends():
    assert resolve("pgd", {"eps": 0.1}, INFO)["early_stop"] is True
    assert resolve("pgd", {"eps": 0.1, "backend": "foolbox"}, INFO)["early_stop"] is False
    with pytest.raises(UserError, match="early_stop=true runs our loop"):
        resolve("pgd", {"eps": 0.1, "backend": "foolbox", "early_stop": True}, INFO)
    assert "early_stop" not in resolve("fgsm", {"eps": 0.1}, INFO)
    assert resolve("square", {"eps": 0.1}, INFO)["prune"] is True
    suite = parse_suite('[[evaluations]]\nkind = "pgd"\neps = [0.1]\n', "s", INFO)
    switched = harness.with_backend(suite, "foolbox").evaluation("pgd").params
    assert dict(switched)["early_stop"] is False and dict(switched)["backend"] == "foolbox"


SWEEP = """
test_size = 120
batch_size = 50
{prune}
[[evaluations]]
kind = "pgd"
eps = [0.3, 0.0, 0.1, 0.2]
steps = 10
alpha = 0.03
[[evaluations]]
kind = "fgsm"
eps = [0.0, 0.1, 0.2, 0.3]
"""


def _sweep_plan(paths, tmp_path, prune: str, models=("dense", "kwinner-boost")):
    suite_file = tmp_path / f"sweep{len(prune)}.toml"
    suite_file.write_text(SWEEP.format(prune=prune))
    return harness.plan("mnist5k", str(suite_file), list(models), device="cpu", home=paths.home)


def _run(plan, tmp_path, tag):
    return harness.run(plan, ResultStore(tmp_path / f"{tag}.sqlite"), ArtifactStore(tmp_path / f"cache-{tag}"))


def test_pruned_sweeps_are_monotone_and_never_above_unpruned(trained_home, tmp_path):
    """Pruned: accuracy never rises with eps, and per image, whatever the unpruned attack fools
    at eps, the pruned sweep has fooled at some eps' <= eps (same seeds, same starts)."""
    pruned = _run(_sweep_plan(trained_home, tmp_path, ""), tmp_path, "pruned")
    plain = _run(_sweep_plan(trained_home, tmp_path, "prune = false"), tmp_path, "plain")
    assert pruned["spec"].str.contains("prune=true").all() == (pruned["kind"] != "clean").all()
    assert plain[plain["kind"] != "clean"]["spec"].str.contains("prune=false").all()
    from robustbench_sparse.evaluation.cells import decode_flags

    for (model, evaluation), sweep in pruned.groupby(["model", "evaluation"]):
        if evaluation == "clean":
            continue
        sweep = sweep.sort_values("strength")
        assert sweep["accuracy"].is_monotonic_decreasing, (model, evaluation)
        other = plain[(plain["model"] == model) & (plain["evaluation"] == evaluation)].set_index("strength")
        for _, row in sweep.iterrows():
            mine = decode_flags(row["flags"], row["n"])
            theirs = decode_flags(other.loc[row["strength"], "flags"], row["n"])
            assert not (mine & ~theirs).any(), (model, evaluation, row["strength"])
    # eps = 0 is clean accuracy in both modes
    zero = pruned[pruned["strength"] == 0].set_index(["model", "evaluation"])["accuracy"]
    assert (zero == plain[plain["strength"] == 0].set_index(["model", "evaluation"])["accuracy"]).all()


def test_harness_pruned_sweep_is_the_direct_one(trained_home, tmp_path):
    """The harness attacks at eps the images its own scoring found correct at the sweep's previous
    eps (no second forward pass); `correct_flags` recomputes them: the flags are the same."""
    from robustbench_sparse.evaluation.cells import decode_flags
    from robustbench_sparse.execution.executor import correct_flags

    plan = _sweep_plan(trained_home, tmp_path, "")
    frame = _run(plan, tmp_path, "pruned")
    ws = harness.workspace(plan, ArtifactStore(tmp_path / "unused"))
    x, y = plan.test_set()
    for _, row in frame[frame["kind"] != "clean"].iterrows():
        model = ws.model(row["model"], 0)
        with eval_mode(model):
            direct = correct_flags(model, plan.suite.evaluation(row["evaluation"]), row["strength"], x, y,
                                   plan.info, CPU, 0, 50)
        assert (decode_flags(row["flags"], row["n"]) == direct.numpy()).all(), (row["model"], row["evaluation"])


def test_pruned_sets_stay_in_their_ball_and_keep_earlier_examples(trained_home, tmp_path):
    plan = _sweep_plan(trained_home, tmp_path, "", models=("dense",))
    ws = harness.workspace(plan, ArtifactStore(tmp_path / "cache"))
    model = ws.model("dense", 0).eval()
    pgd = plan.suite.evaluation("pgd")
    x, y = plan.test_set()
    previous = None
    for eps in (0.1, 0.2, 0.3):
        adv = perturbed_set(model, pgd, eps, x, y, plan.info, CPU, 0, 50, previous=previous)
        assert (adv - x).abs().max() <= eps + 1e-6
        if previous is not None:
            kept = _fooled(model, previous, y)
            assert torch.equal(adv[kept], previous[kept])  # fooled before: the earlier example stays
        previous = adv
    # The harness builds the same chain through its cache.
    cell = plan.cell("dense", 0, pgd, 0.3)
    with eval_mode(model):
        from robustbench_sparse.execution.executor import crafted_set

        assert torch.equal(crafted_set(cell, model, ws), previous)


def test_pruned_keys_name_the_chain(trained_home, tmp_path):
    plan = _sweep_plan(trained_home, tmp_path, "", models=("dense",))
    pgd = plan.suite.evaluation("pgd")
    assert pgd.chain(0.2) == (0.1, 0.2) and pgd.chain(0.0) == ()
    cell = plan.cell("dense", 0, pgd, 0.2)
    assert "|chain=0.1,0.2|" in cell.key and cell.previous.strength == 0.1
    assert plan.cell("dense", 0, pgd, 0.1).previous is None
    # a larger eps added to the sweep leaves the smaller cells' keys alone; a smaller one changes them
    larger = dataclasses.replace(pgd, strengths=(*pgd.strengths, 0.4))
    smaller = dataclasses.replace(pgd, strengths=(*pgd.strengths, 0.05))
    assert dataclasses.replace(cell, evaluation=larger).key == cell.key
    assert dataclasses.replace(cell, evaluation=smaller).key != cell.key
    # early stopping and pruning change the work, not the draws: the seeds come from one spec
    plain = dataclasses.replace(pgd, params=tuple((k, False if k in ("early_stop", "prune") else v)
                                                  for k, v in pgd.params))
    assert plain.draw_spec(0.2) == pgd.draw_spec(0.2) and plain.spec(0.2) != pgd.spec(0.2)
    assert isinstance(cell, Cell)


def test_suite_prune_flag(trained_home):
    base = '[[evaluations]]\nkind = "pgd"\neps = [0.1, 0.2]\n[[evaluations]]\nkind = "gaussian"\nsigma = [0.1]\n'
    assert parse_suite(base, "s", INFO).evaluation("pgd").pruned
    off = parse_suite("prune = false\n" + base, "s", INFO)
    assert not off.evaluation("pgd").pruned and not off.evaluation("gaussian").pruned
    on_one = parse_suite("prune = false\n" + base.replace('eps = [0.1, 0.2]', 'eps = [0.1, 0.2]\nprune = true'),
                         "s", INFO)
    assert on_one.evaluation("pgd").pruned
    with pytest.raises(UserError, match="prune must be true or false"):
        parse_suite('prune = "yes"\n' + base, "s", INFO)
    from robustbench_sparse.evaluation.suites import load_suite
    from robustbench_sparse.runtime import Paths

    shipped = Paths.default()
    # masking: unpruned sweeps for check 1, except AutoAttack and FD-PGD (not read by check 1, and slow)
    assert [e.name for e in load_suite(shipped, "masking", INFO).evaluations if e.pruned] == [
        "autoattack", "autoattack-bpda-relu", "autoattack-bpda-identity", "fd-pgd"]
    assert all(e.pruned for e in load_suite(shipped, "standard", INFO).evaluations if "prune" in dict(e.params))


# --- the k-winners layer ----------------------------------------------------------------------


def _reference(x, ranking, k, dim):
    """The k-winners definition: a 0/1 mask of the top k of the boosted ranking, multiplied in."""
    winners = ranking.topk(k, dim=dim, sorted=False).indices
    return x * torch.zeros_like(x).scatter_(dim, winners, 1.0)


@pytest.mark.parametrize("boost", [0.0, 1.5])
@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kwinners2d_gives_its_definitions_values_and_gradients(boost, local, channels_last):
    torch.manual_seed(0)
    layer = KWinners2d(8, 6, 6, k=3 if local else 40, local=local, boost_strength=boost)
    layer.duty_cycle.uniform_(0, 0.2)
    for training in (False, True):
        layer.train(training)
        x = torch.randn(5, 8, 6, 6)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        factors = layer.boost_factors().view(1, -1, 1, 1)
        ranking = x.detach() * factors
        k = layer.current_k()
        if local:
            expected = _reference(x, ranking, k, 1)
        else:
            expected = _reference(x.reshape(5, -1), ranking.reshape(5, -1), k, 1).view_as(x)
        out = layer(x)
        assert torch.equal(out, expected)
        grad = torch.randn_like(out)
        (mine,) = torch.autograd.grad(out, x, grad)
        (theirs,) = torch.autograd.grad(expected, x, grad)
        assert torch.equal(mine, theirs)
        nonzero = (out.reshape(5, -1) != 0).sum(1) if not local else (out != 0).sum(1)
        assert (nonzero <= k).all()


def test_kwinners1d_gives_its_definitions_values_and_gradients():
    torch.manual_seed(1)
    layer = KWinners(30, k=5, boost_strength=1.0).eval()
    layer.duty_cycle.uniform_(0, 0.3)
    x = torch.randn(7, 30, requires_grad=True)
    expected = _reference(x, x.detach() * layer.boost_factors(), layer.current_k(), 1)
    out = layer(x)
    assert torch.equal(out, expected) and (out != 0).sum(1).max() <= layer.current_k()
    grad = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_torchattacks_is_the_cross_check_library():
    """The plain path is torchattacks itself (the cross-check of the fast path)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    attack = attacks.attack_of("pgd").build("torchattacks", model,
                                            {"eps": 0.1, "steps": 2, "alpha": 0.01, "random_start": True}, 0)
    assert isinstance(attack, torchattacks.PGD)


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_input_conv_is_conv2d_with_the_same_gradients_to_rounding(padding, channels_last):
    """The first conv's fast input gradient: forward, weight and bias gradients exactly torch's,
    the input gradient equal to float rounding; without an input gradient it is nn.Conv2d."""
    from robustbench_sparse.zoo.layers import InputConv2d

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(1, 6, 5, padding=padding)
    new = InputConv2d(1, 6, 5, padding=padding)
    new.load_state_dict(ref.state_dict())
    x = torch.randn(4, 1, 12, 12)
    if channels_last:
        x, ref, new = (t.to(memory_format=torch.channels_last) for t in (x, ref, new))
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out_new = ref(a), new(b)
    assert torch.equal(out_ref, out_new)
    grad = torch.randn_like(out_ref)
    mine = torch.autograd.grad(out_new, [b, new.weight, new.bias], grad)
    theirs = torch.autograd.grad(out_ref, [a, ref.weight, ref.bias], grad)
    torch.testing.assert_close(mine[0], theirs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(mine[1], theirs[1]) and torch.equal(mine[2], theirs[2])
    assert torch.equal(new(x), ref(x))  # no input gradient: torch's own forward
    with pytest.raises(ValueError, match="stride 1"):
        InputConv2d(1, 2, 3, stride=2)


@pytest.mark.parametrize(("channels", "kernel", "padding"), [(1, (5, 5), (0, 0)), (3, (3, 5), (1, 2)), (2, (5, 3), (2, 0))])
def test_col2im_is_torchs_fold_bit_for_bit(channels, kernel, padding):
    """The first conv's col2im (strided adds) gives F.fold's sums exactly, padding cropped."""
    from robustbench_sparse.zoo.layers import _col2im

    torch.manual_seed(1)
    size = (14, 11)
    out = (size[0] + 2 * padding[0] - kernel[0] + 1, size[1] + 2 * padding[1] - kernel[1] + 1)
    columns = torch.randn(5, channels * kernel[0] * kernel[1], out[0] * out[1])
    mine = _col2im(columns, channels, size, kernel, out, padding)
    assert torch.equal(mine, torch.nn.functional.fold(columns, size, kernel, padding=padding))


def test_restarts_with_early_stopping_are_the_plain_restarts_cut_short(trained_home, mnist5k):
    """Each restart's start is drawn for the whole batch in both modes: every image the plain
    restarts fool, the early-stopped restarts fool too."""
    model = _model(trained_home, "kwinner")
    x, y = mnist5k.test_x[:60], mnist5k.test_y[:60]
    params = {**ITERATIVE["pgd"], "eps": 0.1, "steps": 5, "restarts": 3}
    fast = craft(model, "pgd", {**params, "early_stop": True}, x, y, seed=9)
    plain = craft(model, "pgd", {**params, "early_stop": False}, x, y, seed=9)
    assert not (_fooled(model, plain, y) & ~_fooled(model, fast, y)).any()
    untouched = ~_fooled(model, fast, y)
    assert torch.equal(fast[untouched], plain[untouched])


def test_pruning_a_library_attack_keeps_each_images_draw(trained_home, mnist5k):
    """Without early stopping (every image for every step), an attack on part of a batch still
    gives each image the start a whole-batch call gives it."""
    model = _model(trained_home, "dense")
    x, y = mnist5k.test_x[:50], mnist5k.test_y[:50]
    params = {**ITERATIVE["pgd"], "eps": 0.1, "early_stop": False}
    todo = torch.arange(len(x)) % 2 == 0
    whole = craft(model, "pgd", params, x, y, seed=5)
    part = craft(model, "pgd", params, x, y, seed=5, todo=todo)
    assert torch.equal(part[todo], whole[todo]) and torch.equal(part[~todo], x[~todo])


def test_booleans_are_booleans():
    with pytest.raises(UserError, match="prune=1 is out of range"):
        resolve("pgd", {"eps": 0.1, "prune": 1}, INFO)
    with pytest.raises(UserError, match="early_stop=0 is out of range"):
        resolve("pgd", {"eps": 0.1, "early_stop": 0}, INFO)
