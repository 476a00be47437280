"""The config files under configs/ and their one argument parser.

Every launchable config loads with no argument, with ``runlocal`` and with
each option it accepts or documents; names a registered method, trainer,
stages and evaluators; builds its model. ``configs/args.py`` rejects what a
config does not accept, naming the token and the file. The PASCAL-VOC
co-segmentation protocols select the classes and images they promise, and no
config carries a path of a particular machine.
"""

import ast
import importlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import args
from configs import cosegnet_pascal_voc_coseg
from configs import cyclesegnet_pascal_voc_coseg
from configs import dcc_pascal_voc_coseg
from configs import pascal_voc_coseg
from coseg_jax import backbones
from coseg_jax import models
from coseg_jax.backbones import efficientnet_lite
from coseg_jax.runtime import evaluators
from coseg_jax.runtime import stages
from coseg_jax.runtime import state as state_lib
from coseg_jax.runtime import trainers
from coseg_jax.runtime.evaluators import common
from data_pipelines import pascal_voc_coseg as pascal_data
from data_pipelines import pipeline

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
# Shared code, not launchable configs.
NOT_LAUNCHABLE = ("__init__", "args", "base", "macosnet_base",
                  "pascal_voc_coseg")
LAUNCHABLE = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.py")
                          if p.stem not in NOT_LAUNCHABLE))
# A value for every ``key=value`` argument any config accepts.
KEY_EXAMPLES = {"class": "Cat"}
PASCAL_CONFIGS = (cyclesegnet_pascal_voc_coseg, dcc_pascal_voc_coseg,
                  cosegnet_pascal_voc_coseg)


def _module(name):
  return importlib.import_module(f"configs.{name}")


def _accepted(name, monkeypatch):
  """(groups, flags, keys) the config passes to ``args.parse`` (its own
  call, the first: a config built on another parses that one's too)."""
  seen = {}
  parse = args.parse

  def spy(arg, **kwargs):
    if not seen:
      seen.update(kwargs)
    return parse(arg, **kwargs)

  with monkeypatch.context() as m:
    m.setattr(args, "parse", spy)
    _module(name).get_config(None)
  assert seen["config"] == name  # the file names itself in its errors
  return (dict(seen.get("groups") or {}), tuple(seen.get("flags") or ()),
          tuple(seen.get("keys") or ()))


def _documented(name):
  """The arguments of ``configs/<name>.py:ARG`` in any config's docstrings."""
  out = set()
  for path in sorted(CONFIG_DIR.glob("*.py")):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    for arg in re.findall(rf"configs/{name}\.py:([\w,=]+)", doc):
      out.add(arg)
  return out


def _variants(name, monkeypatch):
  """No argument, runlocal, every accepted option and documented argument."""
  groups, flags, keys = _accepted(name, monkeypatch)
  assert "runlocal" in flags, f"{name} has no runlocal variant"
  tokens = [o for options in groups.values() for o in options]
  tokens += [f for f in flags if f != "runlocal"]
  for key in keys:
    assert key in KEY_EXAMPLES, f"add an example value for {key}= of {name}"
    tokens.append(f"{key}={KEY_EXAMPLES[key]}")
  out = {None, "runlocal"}
  out |= set(tokens) | {f"{t},runlocal" for t in tokens}
  out |= _documented(name)
  return sorted(out, key=str)


def test_the_launchable_configs_are_found():
  assert {"baselines_synthetic", "coattention_pascal_voc_coseg",
          "cosegnet_pascal_voc_coseg", "cosegnet_voc2012",
          "cyclesegnet_pascal_voc_coseg", "cyclesegnet_voc2012",
          "dcc_pascal_voc_coseg", "dcc_voc2012", "demo", "macosnet_internet",
          "macosnet_pf_pascal", "macosnet_tss"} == set(LAUNCHABLE)


@pytest.mark.parametrize("name", LAUNCHABLE)
def test_every_variant_loads_and_names_registered_parts(name, monkeypatch):
  variants = _variants(name, monkeypatch)
  assert len(variants) >= 2
  for arg in variants:
    c = _module(name).get_config(arg)
    where = f"configs/{name}.py:{arg}"
    spec = models.get_method(c.method)
    assert c.trainer in trainers.available_trainers(), where
    trainers.get_trainer(c.trainer)
    names = stages.stage_names(c)
    assert names[-1] == stages.MAIN, where
    assert set(names[:-1]) <= set(stages.available_stages()), where
    configured = evaluators.configured(c)
    assert configured, where
    assert set(configured) <= set(evaluators.available_evaluators()), where
    common.eval_data_config(c)  # eval.data names only data fields
    if arg is not None and "runlocal" in arg.split(","):
      spec.build_model(c.model)


@pytest.mark.parametrize("name", LAUNCHABLE)
def test_runlocal_model_initialises(name):
  """The runlocal model traces through ``init`` at the config's input shape
  (shapes only: ``jax.eval_shape`` computes nothing)."""
  c = _module(name).get_config("runlocal")
  model = models.get_method(c.method).build_model(c.model)
  shape = state_lib.input_shape(c)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.PRNGKey(0),
                          "dropout": jax.random.PRNGKey(1)},
                         jnp.zeros(shape, jnp.float32), train=False))
  assert jax.tree.leaves(variables["params"])


@pytest.mark.parametrize("name", LAUNCHABLE)
def test_an_unknown_argument_names_itself_and_the_file(name):
  with pytest.raises(ValueError,
                     match=rf"configs/{name}\.py: unknown argument 'bogus'"):
    _module(name).get_config("runlocal,bogus")


@pytest.mark.parametrize("name", LAUNCHABLE)
def test_two_options_of_one_group_are_an_error(name, monkeypatch):
  groups, _, _ = _accepted(name, monkeypatch)
  for group, options in groups.items():
    a, b = options[:2]
    with pytest.raises(ValueError,
                       match=rf"configs/{name}\.py: '{b}' and '{a}' are both "
                       rf"{group} options"):
      _module(name).get_config(f"{a},{b}")


# ---------------------------------------------------------------------------
# configs/args.py.


def _parse(arg):
  return args.parse(arg, config="x", groups={"size": ("small", "large"),
                                             "kind": ("a", "b", "c")},
                    flags=("runlocal", "fast"), keys=("class", "n"))


def test_parse_defaults():
  for arg in (None, "", " , "):
    out = _parse(arg)
    assert out.size == "small" and out.kind == "a"
    assert out.runlocal is False and out.fast is False
    assert out["class"] is None and out.n is None


def test_parse_groups_flags_and_keys():
  out = _parse(" large ,runlocal,,class=Dining Table,c, n=3")
  assert out.size == "large" and out.kind == "c"
  assert out.runlocal is True and out.fast is False
  assert out["class"] == "Dining Table" and out.n == "3"
  assert args.parse("x", config="y", flags=("x",)).to_dict() == {"x": True}


@pytest.mark.parametrize("token", ["bogus", "class", "colour=red", "Large",
                                   "runlocal=1"])
def test_parse_unknown_token_names_it_the_file_and_what_is_accepted(token):
  with pytest.raises(ValueError) as err:
    _parse(f"runlocal,{token}")
  msg = str(err.value)
  assert msg.startswith(f"configs/x.py: unknown argument {token!r}"), msg
  for accepted in ("size (small|large)", "kind (a|b|c)", "runlocal", "fast",
                   "class=...", "n=..."):
    assert accepted in msg, msg
  with pytest.raises(ValueError, match=r"configs/y\.py: unknown argument "
                     r"'z'; accepted: none"):
    args.parse("z", config="y")


def test_parse_two_options_of_one_group():
  with pytest.raises(ValueError, match=r"configs/x\.py: 'large' and 'small' "
                     r"are both size options; give one"):
    _parse("small,large")
  with pytest.raises(ValueError, match="'c' and 'b' are both kind options"):
    _parse("b,runlocal,c")
  assert _parse("large,b").to_dict()["size"] == "large"  # different groups


# ---------------------------------------------------------------------------
# The PASCAL-VOC co-segmentation protocols.


def _selected_classes(data):
  keep = pipeline.class_selection(data, pascal_data.CLASSES)
  return tuple(np.asarray(pascal_data.CLASSES)[keep])


@pytest.mark.parametrize("module", PASCAL_CONFIGS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("runlocal", [False, True])
def test_disjoint_trains_on_ten_classes_and_evaluates_the_other_ten(
    module, runlocal):
  c = module.get_config("disjoint,runlocal" if runlocal else "disjoint")
  assert c.data.name == "pascal_voc_coseg" and not c.data.manual_dir
  assert tuple(c.data.class_slice) == (0, 10)
  assert tuple(c.eval.data.class_slice) == (10, 20)
  assert c.data.holdout_part == "all" and not c.data.holdout_fraction
  assert not c.data.classes and not c.data.exclude_classes
  evaluated = common.eval_data_config(c)
  assert tuple(evaluated.class_slice) == (10, 20)
  seen, unseen = _selected_classes(c.data), _selected_classes(evaluated)
  assert seen == pascal_data.CLASSES[:10] and seen[0] == "Aero"
  assert unseen == pascal_data.CLASSES[10:] and unseen[-1] == "Train"
  assert not set(seen) & set(unseen)
  # disjoint is the default protocol.
  default = module.get_config("runlocal" if runlocal else None)
  assert default.to_json() == c.to_json()


@pytest.mark.parametrize("module", PASCAL_CONFIGS, ids=lambda m: m.__name__)
def test_split_holds_out_a_quarter_of_every_class(module):
  c = module.get_config("split")
  assert c.data.holdout_fraction == 0.25
  assert c.data.holdout_part == "train"
  assert dict(c.eval.data) == {"holdout_part": "test"}
  assert not c.data.class_slice
  evaluated = common.eval_data_config(c)
  assert evaluated.holdout_part == "test"
  assert evaluated.holdout_fraction == 0.25
  assert evaluated.holdout_seed == c.data.holdout_seed
  assert _selected_classes(c.data) == pascal_data.CLASSES
  # Applied to 20 classes of 40 images: train and test parts are disjoint,
  # cover every image, and test holds 10 of each class.
  membership = np.repeat(np.eye(20, dtype=bool), 40, axis=0)
  train = pipeline.holdout_selection(c.data, membership)
  test = pipeline.holdout_selection(evaluated, membership)
  assert not np.any(train & test) and np.all(train | test)
  np.testing.assert_array_equal(test.reshape(20, 40).sum(1), 10)


@pytest.mark.parametrize("module", PASCAL_CONFIGS, ids=lambda m: m.__name__)
def test_all_has_no_restriction(module):
  c = module.get_config("all")
  assert c.data.name == "pascal_voc_coseg"
  assert not c.data.class_slice and not c.data.classes
  assert c.data.holdout_part == "all" and not c.data.holdout_fraction
  assert not dict(c.eval.data)
  assert _selected_classes(common.eval_data_config(c)) == pascal_data.CLASSES


def test_pascal_protocols_are_the_three_documented():
  assert pascal_voc_coseg.PROTOCOLS == ("disjoint", "split", "all")
  assert pascal_voc_coseg.NUM_CLASSES == len(pascal_data.CLASSES) == 20
  with pytest.raises(ValueError, match="unknown protocol 'seen'"):
    pascal_voc_coseg.apply_protocol(cyclesegnet_pascal_voc_coseg.get_config(),
                                    "seen")


# ---------------------------------------------------------------------------
# No machine's paths.


def _docstring_nodes(tree):
  out = set()
  for node in [tree] + [n for n in ast.walk(tree) if isinstance(
      n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]:
    body = getattr(node, "body", [])
    if (body and isinstance(body[0], ast.Expr) and
        isinstance(body[0].value, ast.Constant) and
        isinstance(body[0].value.value, str)):
      out.add(id(body[0].value))
  return out


# A '/' that starts a path: not after a name, a placeholder (<workdir>/x,
# {dir}/x), a scheme or another '/'.
ABSOLUTE = re.compile(r"(?<![\w.:/>})\]])/[A-Za-z]\w*")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")),
                         ids=lambda p: p.name)
def test_no_config_holds_an_absolute_path(path):
  text = path.read_text()
  assert "/work/" not in text
  tree = ast.parse(text)
  docstrings = _docstring_nodes(tree)
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
      continue
    if id(node) in docstrings:
      # Only in launch examples (command lines), never a real location.
      for line in node.value.splitlines():
        if ABSOLUTE.search(line):
          assert "--" in line or re.search(r"/(tmp|path/to)/", line), (
              f"{path.name}: {line.strip()}")
    else:
      assert not ABSOLUTE.search(node.value), (
          f"{path.name}:{node.lineno}: {node.value!r}")


def test_the_absolute_path_check_sees_one():
  assert ABSOLUTE.search("/data/VOCdevkit") and ABSOLUTE.search("x /home/u")
  for ok in ("configs/x.py:runlocal", "photos/*.jpg", "a/b", "1/8",
             "http://host", "stride16", "<workdir>/masks/<class>/*.png",
             "{workdir}/x"):
    assert not ABSOLUTE.search(ok), ok


@pytest.mark.parametrize("name", sorted(pascal_voc_coseg.LITE_BLOCKS))
def test_the_recipes_lite_block_table_matches_the_backbones(name):
  ends, count = pascal_voc_coseg.LITE_BLOCKS[name]
  module = backbones.get_backbone(name)
  assert len(efficientnet_lite.lite_blocks(
      module.width_coefficient, module.depth_coefficient)) == count
  for level, end in ends.items():
    assert module.modules_through(level)[-1] == f"_blocks_{end}"


def test_the_finetune_flag_trains_the_encoder_top_from_the_cache():
  config = cyclesegnet_pascal_voc_coseg.get_config("disjoint,finetune")
  assert config.data.feature_cache.finetune_from == "stride16"
  multipliers = dict(config.optimizer.lr_multipliers)
  assert multipliers.pop("backbone") == 0.0
  assert sorted(multipliers) == sorted(
      [f"backbone/_blocks_{i}" for i in range(15, 21)] +
      ["backbone/_conv_head", "backbone/_bn1"])
  assert set(multipliers.values()) == {pascal_voc_coseg.FINETUNE_LR_FACTOR}
  with pytest.raises(ValueError, match="'finetune'.*'live'"):
    cyclesegnet_pascal_voc_coseg.get_config("disjoint,live,finetune")
