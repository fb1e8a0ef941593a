"""testbed.experiment: TOML -> validated, frozen experiment (defaults, variants, --set, validation)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from testbed.errors import BadInput
from testbed.experiment import MAX_NAME, SCHEMA, build_experiment, load_experiment, parse_set


def load(tmp_path, registry, text: str, overrides: dict | None = None, name: str = "exp.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_experiment(path, registry, overrides)


def refuse(tmp_path, registry, text: str, *needles: str, overrides: dict | None = None) -> str:
    """Loading must raise BadInput with one line naming the file and every needle."""
    with pytest.raises(BadInput) as info:
        load(tmp_path, registry, text, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "exp.toml") in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------ defaults


def test_empty_file_is_the_papers_alexnet(tmp_path, registry):
    exp = load(tmp_path, registry, "")
    assert exp.name == "exp"  # the file's stem
    assert [v.name for v in exp.variants] == ["baseline"]
    assert exp.baseline.changes == {}
    cfg = exp.baseline.config
    model = cfg["model"]
    assert model["activation"] == {"name": "relu"}  # section 3.1
    assert model["normalization"] == {  # section 3.3: k=2, n=5, alpha=1e-4, beta=0.75
        "name": "lrn",
        "size": 5,
        "alpha": 1e-4,
        "beta": 0.75,
        "k": 2.0,
        "alpha_convention": "divided-by-n",
    }
    assert model["pooling"] == {"name": "overlapping"}  # section 3.4: z=3, s=2
    assert model["dropout"] == 0.5  # section 4.2
    assert model["init"]["name"] == "paper" and model["init"]["std"] == 0.01  # section 5
    assert model["placement"] == {"name": "grouped"}  # the two-tower connectivity
    assert model["width"] == 1.0 and model["skip"] == []
    train = cfg["train"]
    assert train["epochs"] == 90 and train["batch_size"] == 128  # section 5
    assert train["optimizer"]["lr"] == 0.01 and train["optimizer"]["momentum"] == 0.9
    assert train["optimizer"]["weight_decay"] == 5e-4
    assert train["schedule"]["name"] == "plateau" and train["schedule"]["factor"] == 0.1  # divide by 10 on plateau
    assert train["target_train_error"] == 0.25  # Figure 1's measure
    assert train["seeds"] == [0]
    assert cfg["data"]["dataset"] == {"name": "synthetic", "train_images": 2000, "test_images": 500}  # offline default


def test_every_schema_key_is_resolved(tmp_path, registry):
    cfg = load(tmp_path, registry, "").baseline.config
    assert set(cfg) == set(SCHEMA)
    for section, keys in SCHEMA.items():
        assert set(cfg[section]) == set(keys)


def test_component_given_as_table_fills_defaults(tmp_path, registry):
    exp = load(
        tmp_path,
        registry,
        """
        [model]
        normalization = { name = "lrn", k = 1 }
        activation = { name = "leaky-relu" }
    """,
    )
    norm = exp.baseline.config["model"]["normalization"]
    assert norm == {"name": "lrn", "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "alpha_convention": "divided-by-n"}
    assert isinstance(norm["k"], float)  # int widened to float
    assert exp.baseline.config["model"]["activation"] == {"name": "leaky-relu", "negative_slope": 0.01}


# ------------------------------------------------------------------------------ variants

VARIANTS = """
    name = "ablation"
    [model]
    width = 0.25
    normalization = { name = "lrn", size = 3 }

    [[variant]]
    name = "tanh"
    model.activation = "tanh"
    paper = { claim = "6x slower", factor = 6 }

    [[variant]]
    name = "lrn-k1"
    [variant.model.normalization]
    k = 1

    [[variant]]
    name = "batchnorm"
    description = "the modern comparison"
    model.normalization.name = "batchnorm"

    [[variant]]
    name = "bn-table"
    model.normalization = { name = "batchnorm", momentum = 0.2 }

    [[variant]]
    name = "two.changes_v-2"
    model.dropout = 0.0
    train.epochs = 3
"""


def test_variant_overrides_change_exactly_their_keys(tmp_path, registry):
    exp = load(tmp_path, registry, VARIANTS)
    assert exp.name == "ablation"
    assert [v.name for v in exp.variants] == ["baseline", "tanh", "lrn-k1", "batchnorm", "bn-table", "two.changes_v-2"]
    base = exp.baseline.config
    for v in exp.variants[1:]:
        for section in SCHEMA:
            for key in SCHEMA[section]:
                dotted = f"{section}.{key}"
                touched = any(c == dotted or c.startswith(dotted + ".") for c in v.changes)
                if not touched:
                    assert v.config[section][key] == base[section][key], (v.name, dotted)
    tanh = exp.variant("tanh")
    assert tanh.changes == {"model.activation": "tanh"}
    assert tanh.config["model"]["activation"] == {"name": "tanh"}
    assert tanh.paper == {"claim": "6x slower", "factor": 6}
    two = exp.variant("two.changes_v-2")
    assert two.changes == {"model.dropout": 0.0, "train.epochs": 3}
    assert two.config["model"]["dropout"] == 0.0 and two.config["train"]["epochs"] == 3
    assert exp.variant("batchnorm").description == "the modern comparison"


def test_component_table_override_merges_params(tmp_path, registry):
    exp = load(tmp_path, registry, VARIANTS)
    v = exp.variant("lrn-k1")
    assert v.changes == {"model.normalization.k": 1}
    # k changed; size=3 from the baseline and every other LRN default kept
    assert v.config["model"]["normalization"] == {
        "name": "lrn",
        "size": 3,
        "alpha": 1e-4,
        "beta": 0.75,
        "k": 1.0,
        "alpha_convention": "divided-by-n",
    }


def test_new_component_name_replaces_params(tmp_path, registry):
    exp = load(tmp_path, registry, VARIANTS)
    # the baseline's lrn size=3 does not leak into batchnorm
    assert exp.variant("batchnorm").config["model"]["normalization"] == {"name": "batchnorm", "momentum": 0.1, "eps": 1e-5}
    assert exp.variant("bn-table").config["model"]["normalization"] == {"name": "batchnorm", "momentum": 0.2, "eps": 1e-5}


def test_variant_param_unknown_to_the_baseline_component_is_refused(tmp_path, registry):
    refuse(
        tmp_path,
        registry,
        """
        [model]
        normalization = "batchnorm"
        [[variant]]
        name = "v"
        model.normalization.k = 1
    """,
        "variant 'v'",
        "model.normalization.k",
        "unknown parameter",
        "batchnorm",
    )


def test_experiment_round_trips_through_json(tmp_path, registry):
    from testbed.experiment import Experiment

    exp = load(tmp_path, registry, VARIANTS)
    again = Experiment.from_json(exp.to_json())
    assert again == exp


def test_unknown_only_variant_suggests(tmp_path, registry):
    exp = load(tmp_path, registry, VARIANTS)
    with pytest.raises(BadInput, match=r"--only tahn: no such variant \(did you mean 'tanh'\?\)"):
        exp.variant("tahn")


# ------------------------------------------------------------------------------ --set


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("train.epochs=2", "train.epochs", 2),
        ("model.width=0.5", "model.width", 0.5),
        ("model.width=1e-1", "model.width", 0.1),
        ("train.compile=true", "train.compile", True),
        ("train.compile=false", "train.compile", False),
        ("model.skip=['conv4']", "model.skip", ["conv4"]),
        ('model.skip=["conv3", "conv5"]', "model.skip", ["conv3", "conv5"]),
        ("train.seeds=[0, 2]", "train.seeds", [0, 2]),
        ("model.activation=tanh", "model.activation", "tanh"),  # bare string
        ('model.activation="tanh"', "model.activation", "tanh"),  # quoted string
        ("data.root=/data/imagenet", "data.root", "/data/imagenet"),
        ("model.placement.name=two-device", "model.placement.name", "two-device"),
        (" train.epochs = 7 ", "train.epochs", 7),  # whitespace around key and value
        ("model.placement={ name = 'single' }", "model.placement", {"name": "single"}),
        ("data.root=a=b", "data.root", "a=b"),  # only the first '=' splits
        ("x=" + "[" * 5000, "x", "[" * 5000),  # too deep for TOML: a string, no RecursionError
        ("train.epochs=1" + "0" * 5000, "train.epochs", "1" + "0" * 5000),  # too long for int(): a string
    ],
)
def test_parse_set(item, key, value):
    assert parse_set([item]) == {key: value}


def test_parse_set_many_and_last_wins():
    assert parse_set(["train.epochs=2", "model.width=0.5", "train.epochs=3"]) == {"train.epochs": 3, "model.width": 0.5}


@pytest.mark.parametrize("item", ["train.epochs", "", "model.activation"])
def test_parse_set_needs_equals(item):
    with pytest.raises(BadInput, match=r"^--set .*expected dotted\.key=value"):
        parse_set([item])


def test_set_overrides_the_baseline_and_variants_keep_their_own(tmp_path, registry):
    exp = load(
        tmp_path,
        registry,
        VARIANTS,
        parse_set(
            [
                "model.activation=gelu",
                "train.epochs=2",
                "model.normalization.k=3",
                "model.dropout=0.25",
            ]
        ),
    )
    base = exp.baseline.config
    assert base["model"]["activation"] == {"name": "gelu"}
    assert base["train"]["epochs"] == 2
    assert base["model"]["normalization"]["k"] == 3.0 and base["model"]["normalization"]["size"] == 3
    assert exp.overrides == {"model.activation": "gelu", "train.epochs": 2, "model.normalization.k": 3, "model.dropout": 0.25}
    assert exp.baseline.changes == {}
    tanh = exp.variant("tanh")
    assert tanh.config["model"]["activation"] == {"name": "tanh"}  # its own override wins
    assert tanh.config["train"]["epochs"] == 2  # the --set reaches every variant
    two = exp.variant("two.changes_v-2")
    assert two.config["train"]["epochs"] == 3 and two.config["model"]["dropout"] == 0.0
    assert exp.variant("lrn-k1").config["model"]["normalization"]["k"] == 1.0


def test_set_component_name_drops_old_params(tmp_path, registry):
    exp = load(
        tmp_path, registry, "[model]\nnormalization = { name = 'lrn', size = 3 }\n", parse_set(["model.normalization.name=batchnorm"])
    )
    assert exp.baseline.config["model"]["normalization"] == {"name": "batchnorm", "momentum": 0.1, "eps": 1e-5}
    # a variant that tunes an LRN parameter no longer fits the new baseline component, and says so
    refuse(
        tmp_path,
        registry,
        VARIANTS,
        "variant 'lrn-k1'",
        "model.normalization.k",
        "'batchnorm'",
        "eps, momentum",
        overrides=parse_set(["model.normalization.name=batchnorm"]),
    )


@pytest.mark.parametrize(
    "item, needles",
    [
        ("train.epoch=2", ["--set train.epoch", "unknown key", "did you mean 'epochs'"]),
        ("modle.width=1", ["--set modle.width", "unknown section", "did you mean 'model'"]),
        ("model=1", ["--set model", "name a key inside [model]"]),
        ("model.width.x=1", ["--set model.width.x", "has no sub-keys"]),
        ("model.normalization.k.x=1", ["--set model.normalization.k.x", "has no sub-keys"]),
        ("model.activation=rleu", ["model.activation = 'rleu'", "did you mean 'relu'", "tanh"]),
        ("train.epochs=0", ["train.epochs = 0", "out of range"]),
        ("model.width=wide", ["model.width = 'wide'", "expected a number"]),
    ],
)
def test_bad_set_is_refused(tmp_path, registry, item, needles):
    refuse(tmp_path, registry, "", *needles, overrides=parse_set([item]))


# ------------------------------------------------------------------------------ seeds


@pytest.mark.parametrize("given, seeds", [(1, [0]), (3, [0, 1, 2]), ([5], [5]), ([7, 1, 3], [7, 1, 3]), (1000, list(range(1000)))])
def test_seeds_count_or_list(tmp_path, registry, given, seeds):
    exp = load(tmp_path, registry, f"[train]\nseeds = {given}\n")
    assert exp.baseline.config["train"]["seeds"] == seeds


def test_variant_may_change_seeds(tmp_path, registry):
    exp = load(tmp_path, registry, '[train]\nseeds = 2\n[[variant]]\nname = "more"\ntrain.seeds = [10, 11, 12]\n')
    assert exp.baseline.config["train"]["seeds"] == [0, 1]
    assert exp.variant("more").config["train"]["seeds"] == [10, 11, 12]


# ------------------------------------------------------------------------------ validation
# One case per rule: (TOML text, what the one-line message must name).

F = "exp.toml"
BAD = {
    # unknown keys, with suggestions and the valid choices
    "top-level key": ('nmae = "x"', ["nmae", "unknown top-level key", "did you mean 'name'", "variant"]),
    "section key": ("[model]\nactivaton = 'relu'", ["model.activaton", "unknown key", "did you mean 'activation'", "normalization"]),
    "section not a table": ("model = 3", ["model = 3", "expected a table [model]"]),
    "variant key": ("[[variant]]\nname = 'v'\nmodle.width = 1", ["variant 'v'", "modle", "did you mean 'model'"]),
    "variant section key": (
        "[[variant]]\nname = 'v'\nmodel.activaton = 'tanh'",
        ["variant 'v'", "model.activaton", "did you mean 'activation'"],
    ),
    "variant section not a table": ("[[variant]]\nname = 'v'\nmodel = 3", ["variant 'v'", "model = 3", "table of overrides"]),
    "variant non-component sub-key": ("[[variant]]\nname = 'v'\nmodel.width.x = 1", ["variant 'v'", "model.width", "expected a number"]),
    "paper key": ("[[variant]]\nname = 'v'\npaper = { top2 = 1 }", ["paper.top2", "did you mean 'top5'", "top1, top5, claim"]),
    "paper type": ("[[variant]]\nname = 'v'\npaper = { top1 = 'big' }", ["paper.top1 = 'big'", "expected a number"]),
    "paper claim type": ("[[variant]]\nname = 'v'\npaper = { claim = 3 }", ["paper.claim = 3", "expected text"]),
    "paper not a table": ("[[variant]]\nname = 'v'\npaper = 3", ["paper = 3", "expected a table"]),
    "description type": ("description = 3", ["description = 3", "expected a string"]),
    "variant description type": ("[[variant]]\nname = 'v'\ndescription = [1]", ["variant 'v'", "description = [1]", "expected a string"]),
    # unknown component names
    "component": (
        "[model]\nactivation = 'rleu'",
        ["model.activation = 'rleu'", "unknown activation", "did you mean 'relu'", "gelu, leaky-relu, relu, sigmoid, tanh"],
    ),
    "component in table": ("[model]\nactivation = { name = 'rleu' }", ["model.activation", "'rleu'", "did you mean 'relu'"]),
    "dataset": ("[data]\ndataset = 'cifar100'", ["data.dataset = 'cifar100'", "unknown dataset", "did you mean 'cifar10'", "synthetic"]),
    "component in list": (
        "[augment]\ntrain = ['hflip', 'random-crap']",
        ["augment.train[1] = 'random-crap'", "did you mean 'random-crop'"],
    ),
    "variant component": (
        "[[variant]]\nname = 'v'\nmodel.pooling = 'overlaping'",
        ["variant 'v'", "model.pooling = 'overlaping'", "did you mean 'overlapping'"],
    ),
    "component table without name": (
        "[model]\nactivation = { negative_slope = 0.1 }",
        ["model.activation", "needs a 'name'", "negative_slope"],
    ),
    "component name type": ("[model]\nactivation = { name = 3 }", ["model.activation.name = 3", "a string"]),
    "component wrong type": ("[model]\nactivation = ['relu']", ["model.activation = ['relu']", "component name or a table"]),
    # component parameters
    "param unknown": (
        "[model]\nnormalization = { name = 'lrn', sise = 3 }",
        ["model.normalization.sise", "unknown parameter of normalization 'lrn'", "did you mean 'size'", "alpha_convention"],
    ),
    "param of parameterless": ("[model]\nactivation = { name = 'relu', slope = 1 }", ["model.activation.slope", "takes no parameters"]),
    "param type": ("[model]\nnormalization = { name = 'lrn', size = 'big' }", ["model.normalization.size = 'big'", "expected int"]),
    "param bool as int": ("[model]\nnormalization = { name = 'lrn', size = true }", ["model.normalization.size = True", "expected int"]),
    "param choice": (
        "[model]\nnormalization = { name = 'lrn', alpha_convention = 'per-trem' }",
        ["alpha_convention = 'per-trem'", "'divided-by-n', 'per-term'", "did you mean 'per-term'"],
    ),
    "param list item": (
        "[model]\ninit = { name = 'paper', bias_one = ['fc6', 7] }",
        ["model.init.bias_one[1] = 7", "expected str, got int"],
    ),
    "param huge int": (
        "[augment]\ntrain = [{ name = 'random-crop', padding = 100000000000000000000000 }]",
        ["augment.train[0].padding", "too large"],
    ),
    "param huge int to float": (
        "[model]\nnormalization = { name = 'lrn', alpha = 1" + "0" * 400 + " }",
        ["model.normalization.alpha", "too large"],
    ),
    "param inf": ("[model]\nnormalization = { name = 'lrn', k = inf }", ["model.normalization.k = inf", "finite"]),
    "param nan": ("[model]\nnormalization = { name = 'lrn', k = nan }", ["model.normalization.k = nan", "finite"]),
    "param long value": (
        "[model]\nnormalization = { name = 'lrn', size = '" + "x" * 1000 + "' }",
        ["model.normalization.size = 'xxxx", "..."],
    ),
    # types
    "int given a string": ("[train]\nepochs = 'ten'", ["train.epochs = 'ten'", "expected an integer"]),
    "int given a float": ("[train]\nepochs = 1.5", ["train.epochs = 1.5", "expected an integer"]),
    "int given a bool": ("[train]\nepochs = true", ["train.epochs = true", "expected an integer"]),
    "float given a string": ("[model]\nwidth = 'wide'", ["model.width = 'wide'", "expected a number"]),
    "float given a TOML date": ("[model]\nwidth = 1979-05-27", ['model.width = "1979-05-27"', "expected a number"]),
    "seeds given a TOML time": ("[train]\nseeds = [07:32:00]", ['train.seeds = ["07:32:00"]', "expected a seed count"]),
    "float nan": ("[model]\nwidth = nan", ["model.width = NaN", "nan"]),
    "bool given a string": ("[train]\ncompile = 'yes'", ["train.compile = 'yes'", "true or false"]),
    "str given an int": ("[data]\nroot = 3", ["data.root = 3", "expected a string"]),
    "choice": ("[model]\ngeometry = 'imagenett'", ["model.geometry = 'imagenett'", "auto, imagenet, cifar", "did you mean 'imagenet'"]),
    "choice precision": ("[train]\nprecision = 'fp8'", ["train.precision = 'fp8'", "fp32, bf16, fp16"]),
    "component list not a list": ("[augment]\ntrain = 'hflip'", ["augment.train = 'hflip'", "expected a list"]),
    "skip not a list": ("[model]\nskip = 'conv4'", ["model.skip = 'conv4'", "conv3, conv4, conv5"]),
    "skip nested": ("[model]\nskip = " + "[" * 300 + "]" * 300, ["model.skip = [[[", "...", "expected a list"]),
    # impossible values
    "epochs zero": ("[train]\nepochs = 0", ["train.epochs = 0", "out of range", "1 <= value <= 100000"]),
    "epochs huge": (
        "[train]\nepochs = 1000000000000000000000000000000",
        ["train.epochs = 1000000000000000000000000000000", "out of range"],
    ),
    "batch negative": ("[train]\nbatch_size = -1", ["train.batch_size = -1", "out of range"]),
    "image size negative": ("[data]\nimage_size = -32", ["data.image_size = -32", "8 <= value <= 4096"]),
    "train size zero": ("[data]\ntrain_size = 0", ["data.train_size = 0", "out of range"]),
    "classes one": ("[data]\nclasses = 1", ["data.classes = 1", "out of range"]),
    "width zero": ("[model]\nwidth = 0", ["model.width = 0", "out of range", "0.015625 <= value <= 16"]),
    "width inf": ("[model]\nwidth = inf", ["model.width = Infinity", "out of range"]),
    "dropout above one": ("[model]\ndropout = 1.5", ["model.dropout = 1.5", "0 <= value <= 0.99"]),
    "target error negative": ("[train]\ntarget_train_error = -0.1", ["train.target_train_error = -0.1", "out of range"]),
    "skip conv1": ("[model]\nskip = ['conv1']", ['model.skip = ["conv1"]', "'conv1' cannot be removed", "conv3, conv4, conv5"]),
    "skip twice": ("[model]\nskip = ['conv4', 'conv4']", ["model.skip", "twice"]),
    "train aug as test view": ("[augment]\ntest = 'hflip'", ["augment.test = 'hflip'", "train augmentation", "center, ten-crop"]),
    "test view as train aug": (
        "[augment]\ntrain = ['hflip', 'ten-crop']",
        ["augment.train[1] = 'ten-crop'", "test-time view", "hflip, pca-lighting, random-crop"],
    ),
    "seeds zero": ("[train]\nseeds = 0", ["train.seeds = 0", "between 1 and 1000"]),
    "seeds too many": ("[train]\nseeds = 1001", ["train.seeds = 1001", "between 1 and 1000"]),
    "seeds empty list": ("[train]\nseeds = []", ["train.seeds = []", "a list of seeds"]),
    "seeds repeated": ("[train]\nseeds = [1, 1]", ["train.seeds = [1, 1]", "distinct"]),
    "seeds negative": ("[train]\nseeds = [-1]", ["train.seeds = [-1]", "[0, 2^31)"]),
    "seeds wrong type": ("[train]\nseeds = 'three'", ["train.seeds = 'three'", "seed count"]),
    "seeds bool": ("[train]\nseeds = true", ["train.seeds = true", "seed count"]),
    # names
    "experiment name": ("name = '../x'", ["name = '../x'", "no leading dot"]),
    "experiment name too long": (f"name = '{'a' * (MAX_NAME + 1)}'", ["name = 'aaa", f"at most {MAX_NAME}"]),
    "variant not array": ("variant = 3", ["variant", "[[variant]] tables"]),
    "variant not table": ("variant = [1]", ["variant[0]", "expected a [[variant]] table"]),
    "variant without name": ("[[variant]]\nmodel.width = 0.5", ["variant[0].name: missing", "needs a name"]),
    "variant name escapes": ("[[variant]]\nname = '../x'", ["variant[0].name = '../x'", "no leading dot"]),
    "variant name hidden": ("[[variant]]\nname = '.hidden'", ["variant[0].name = '.hidden'", "no leading dot"]),
    "variant name dotdot": ("[[variant]]\nname = '..'", ["variant[0].name = '..'"]),
    "variant name slash": ("[[variant]]\nname = 'a/b'", ["variant[0].name = 'a/b'", "letters, digits"]),
    "variant name backslash": ("[[variant]]\nname = 'a\\\\b'", ["variant[0].name", "letters, digits"]),
    "variant name space": ("[[variant]]\nname = 'a b'", ["variant[0].name = 'a b'"]),
    "variant name newline": ('[[variant]]\nname = "a\\nb"', ["variant[0].name = 'a\\nb'"]),
    "variant name empty": ("[[variant]]\nname = ''", ["variant[0].name = ''"]),
    "variant name int": ("[[variant]]\nname = 3", ["variant[0].name = 3"]),
    "variant name too long": (f"[[variant]]\nname = '{'a' * (MAX_NAME + 1)}'", ["variant[0].name = 'aaa", "...", f"at most {MAX_NAME}"]),
    "variant name duplicate": ("[[variant]]\nname = 'a'\n[[variant]]\nname = 'a'", ["variant[1].name = 'a'", "duplicate variant name"]),
    "variant named baseline": ("[[variant]]\nname = 'baseline'", ["variant[0].name = 'baseline'", "duplicate", "'baseline' is taken"]),
}


@pytest.mark.parametrize("text, needles", list(BAD.values()), ids=list(BAD))
def test_validation_rule(tmp_path, registry, text, needles):
    message = refuse(tmp_path, registry, text, *needles)
    assert len(message) < 600, message  # one readable line, whatever the value


def test_longest_valid_names_load(tmp_path, registry):
    name = "a" * MAX_NAME
    exp = load(tmp_path, registry, f"name = '{name}'\n[[variant]]\nname = '{name}'\n[[variant]]\nname = 'v.1_-'\n")
    assert exp.name == name and [v.name for v in exp.variants] == ["baseline", name, "v.1_-"]


def test_build_experiment_without_a_file(registry):
    exp = build_experiment({"model": {"activation": "tanh"}}, registry, "exp.toml")
    assert exp.baseline.config["model"]["activation"] == {"name": "tanh"}
    with pytest.raises(BadInput, match="did you mean 'activation'"):
        build_experiment({"model": {"activaton": "tanh"}}, registry, "exp.toml")


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda p: None, "no such experiment file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b'name = "\xff\xfe"\n'), "not UTF-8"),
        (lambda p: p.write_text("[model\n"), "malformed TOML"),
        (lambda p: p.write_text("x = " + "[" * 5000 + "]" * 5000), "nested too deeply"),
        (lambda p: p.write_text("x = " + "{a = " * 3000 + "1" + "}" * 3000), "nested too deeply"),
        (lambda p: p.write_text("[train]\nepochs = 1" + "0" * 5000), "too large to read"),
    ],
    ids=["missing", "folder", "non-utf8", "malformed", "deep-arrays", "deep-tables", "int-too-long"],
)
def test_unreadable_files(tmp_path, registry, setup, needle):
    path = tmp_path / "exp.toml"
    setup(path)
    with pytest.raises(BadInput) as info:
        load_experiment(path, registry)
    assert str(info.value).startswith(str(path) + ": ") and needle in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ the shipped files


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_experiment_file_loads(path, registry):
    """What the README tells users to run must at least validate, every variant included."""
    exp = load_experiment(path, registry)
    assert exp.variants and exp.baseline.name == "baseline"
