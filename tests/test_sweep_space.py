"""Search spaces: Hydra's override grammar -> Optuna distributions, and bad entries rejected by name."""

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from codec.sweep.space import SearchSpaceError, arm_label, parse_space


def test_grammar_maps_to_optuna_distributions():
    space = parse_space({
        "model.quantizer.normalization": "choice(none, zscore, l2, rms_scale)",
        "optimizer.init_args.lr": "tag(log, interval(1e-4, 1e-2))",
        "model.quantizer.decay": "interval(0.9, 0.999)",
        "model.quantizer.codebook_size": "tag(int, log, interval(16, 1024))",
        "model.quantizer.num_quantizers": "range(2, 9, 2)",
        "model.quantizer.codebook_dim": "choice('null', 8)",
        "model.structure.strides": "choice([2,4],[2,4,5])",
    })
    d = {k: p.distribution for k, p in space.items()}
    assert d["model.quantizer.normalization"] == CategoricalDistribution(["none", "zscore", "l2", "rms_scale"])
    assert d["optimizer.init_args.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.quantizer.decay"] == FloatDistribution(0.9, 0.999)
    assert d["model.quantizer.codebook_size"] == IntDistribution(16, 1024, log=True)
    assert d["model.quantizer.num_quantizers"] == IntDistribution(2, 8, step=2)
    assert space["model.quantizer.num_quantizers"].grid == [2, 4, 6, 8]  # range() excludes its stop
    assert d["model.quantizer.codebook_dim"].choices == ("null", 8)      # the CLI reads 'null' as None
    assert d["model.structure.strides"].choices == ("[2,4]", "[2,4,5]")  # lists travel as YAML text
    assert space["optimizer.init_args.lr"].grid is None


@pytest.mark.parametrize("entry, expected", [
    ({"model.quantizer.normalization": "choice(none, zscore"}, "model.quantizer.normalization"),
    ({"model.quantizer.decay": "interval(0.99, 0.9)"}, "low < high"),
    ({"optimizer.init_args.lr": "tag(log, interval(0, 1))"}, "positive lower bound"),
    ({"model.quantizer.decay": "tag(lgo, interval(0.9, 0.99))"}, "lgo"),
    ({"model.quantizer.decay": "0.9"}, "not a sweep"),
    ({"normalization": "choice(none, l2)"}, "dotted config key"),
    ({"model.quantizer.init": "choice(kmeans, kmeans)"}, "twice"),
])
def test_malformed_entries_are_rejected_naming_the_entry(entry, expected):
    with pytest.raises(SearchSpaceError) as error:
        parse_space(entry)
    key = next(iter(entry))
    assert key in str(error.value) and expected in str(error.value)


def test_arm_labels_are_short_and_filesystem_safe():
    space = parse_space({"model.quantizer.normalization": "choice(none, l2)",
                         "model.structure.strides": "choice([2,4],[2,4,5])",
                         "model.quantizer.decay": "interval(0.9, 0.999)"})
    label = arm_label({"model.quantizer.normalization": "l2", "model.structure.strides": "[2,4]",
                       "model.quantizer.decay": 0.95123456}, space)
    assert label == "normalization=l2,strides=_2_4_,decay=0.9512"
