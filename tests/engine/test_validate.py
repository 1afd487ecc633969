"""Every setting the start-up check validates speaks in one format: ``<key as typed>=<value>: expected ...``.

The test walks every key of ``RULES`` and ``OPTIONAL_RULES`` and every setting of every option of the groups
the check builds (clusterer, memory, temp, optim), gives each a value of the wrong kind and, where one exists,
a value out of range, and reads the check's lines. Nothing is trained; configs are composed once per option.
"""

from __future__ import annotations

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

from mqreid.engine.validate import OPTIONAL_RULES, RULES, batch_layout_problems, config_problems
from mqreid.utils.errors import SettingError, setting_problem, typed

from conftest import CONF, compose_config

# Candidates for a bad value; the first that a rule refuses is used for that rule.
CANDIDATES = ("abc", -1, 0, 2, 1.5, None)

# Out-of-range values of component settings (by setting name); every other setting gets a value of the
# wrong kind only.
OUT_OF_RANGE = {
    "eps": -1, "min_samples": 0, "k1": 0, "k2": 0, "k": 0, "min_sim": 2, "min_cluster_size": 0, "seed": -1,
    "queue_size": 0, "momentum": -1, "value": 0, "init": 0, "tlr": -1, "weight_decay": -1, "floor": 0,
    "lr": -1, "step_size": 0, "gamma": 0,
}
# Settings whose values are names: a name that does not exist.
NAMES = {"knn", "init", "proxy"}

COMPONENT_GROUPS = ("clusterer", "memory", "temp", "optim")


def _with(cfg: DictConfig, key: str, value) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _lines_for(cfg: DictConfig, key: str, value) -> list[str]:
    return [p for p in config_problems(_with(cfg, key, value)) if p.startswith(f"{key}=")]


@pytest.fixture(scope="module")
def default_cfg():
    return compose_config([])


def test_setting_error_reads_like_the_check():
    err = SettingError("eps", -1, "a float in (0, 1)")
    assert str(err) == "eps=-1: expected a float in (0, 1)" and isinstance(err, ValueError)
    assert [typed(v) for v in (True, None, "", 0.5, "abc")] == ["true", "null", "''", "0.5", "abc"]
    assert setting_problem("train.batch_size", 0, "an integer >= 1") == "train.batch_size=0: expected an integer >= 1"


def test_every_rule_names_its_key_and_value(default_cfg):
    walked = 0
    for key, ok, expected in [*RULES, *OPTIONAL_RULES]:
        if OmegaConf.select(default_cfg, key, default="<missing>") == "<missing>":
            continue  # an optional rule for a setting the default options do not have
        value = next(v for v in CANDIDATES if not ok(v))
        lines = _lines_for(default_cfg, key, value)
        assert setting_problem(key, value, expected) in lines, (key, value, lines)
        walked += 1
    assert walked >= len(RULES)


def _component_options():
    for group in COMPONENT_GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield group, path.stem


def _settings(node: DictConfig, prefix: str):
    for key in node:
        if str(key).startswith("_"):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _settings(child, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", node[key]


@pytest.mark.parametrize("group,option", list(_component_options()), ids=[f"{g}={o}" for g, o in _component_options()])
def test_every_component_setting_names_its_key_and_value(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert config_problems(cfg) == [], "the option's own values are valid"
    walked = 0
    for key, default in _settings(cfg[group], group):
        name = key.rsplit(".", 1)[1]
        bad = []
        if isinstance(default, bool):
            bad.append("maybe")
        elif isinstance(default, (int, float)) or default is None:
            bad.append("abc")
        elif name in NAMES:
            bad.append("bogus")
        if name in OUT_OF_RANGE and not isinstance(default, (bool, str)):
            bad.append(OUT_OF_RANGE[name])
        assert bad, f"{key}: no bad value known for this setting; add one to OUT_OF_RANGE or NAMES"
        for value in bad:
            lines = _lines_for(cfg, key, value)
            assert lines, f"{key}={typed(value)} is not reported as '{key}=...: expected ...'"
            assert all(line.startswith(f"{key}={typed(value)}: expected ") for line in lines), lines
            walked += 1
    assert walked >= 1


def test_no_component_message_falls_back_to_the_group_alone(default_cfg):
    """The second format ('clusterer: eps: expected ...') is gone for the clusterers' settings."""
    for option, key, value in [("dbscan", "eps", -1), ("dbscan", "k1", 0), ("dbscan", "knn", "bogus"),
                               ("infomap", "min_sim", 2), ("infomap", "k", 0), ("infomap", "seed", -1)]:
        problems = config_problems(_with(compose_config([f"clusterer={option}"]), f"clusterer.{key}", value))
        assert not any(p.startswith("clusterer: ") for p in problems), problems
        assert any(p.startswith(f"clusterer.{key}={typed(value)}: expected ") for p in problems), problems


@pytest.mark.parametrize("world", [3, 5, 6, 7])
def test_preset_batch_is_refused_at_gpu_counts_that_do_not_divide_it(world):
    """Batch 256 = 16 x 16 starts at 1, 2, 4, 8 and 16 processes only (the accepted counts are tested in
    test_faults.py): 3, 5, 6 and 7 do not split it into whole identity blocks per process."""
    train = compose_config(["experiment=market1501_dbscan"]).train
    problems = batch_layout_problems(train, world)
    assert problems[0] == (f"train.batch_size=256: expected a multiple of train.num_instances=16 x {world} "
                           "processes (batches hold whole identity blocks)")
    assert all(p.startswith(("train.batch_size=256: expected", "train.bn_group=64: expected")) for p in problems)
