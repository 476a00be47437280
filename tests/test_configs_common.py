"""configs/common.py: the shared class split and the Lite0 weights lookup."""

from configs import common
from configs import cosegnet_pascal_disjoint
from configs import cyclesegnet_pascal_disjoint
from data_pipelines import pascal_voc_coseg


def test_pascal_coseg_split_matches_the_builder_classes():
  # The configs name classes; the builder reads folders: they must agree.
  assert common.PASCAL_COSEG_CLASSES == pascal_voc_coseg.CLASSES
  assert len(common.PASCAL_COSEG_SEEN) == len(common.PASCAL_COSEG_UNSEEN) == 10
  assert not set(common.PASCAL_COSEG_SEEN) & set(common.PASCAL_COSEG_UNSEEN)


def test_disjoint_configs_use_the_shared_split():
  for module, arg in ((cyclesegnet_pascal_disjoint, "unseen,runlocal"),
                      (cosegnet_pascal_disjoint, "dcc,unseen,runlocal")):
    seen = module.get_config(arg.replace("unseen", "train"))
    unseen = module.get_config(arg)
    assert tuple(seen.data.classes) == common.PASCAL_COSEG_SEEN
    assert tuple(unseen.data.classes) == common.PASCAL_COSEG_UNSEEN


def test_lite0_weights_path_is_none_or_an_existing_file(monkeypatch):
  import os  # pylint: disable=g-import-not-at-top
  from coseg_jax.backbones import weights  # pylint: disable=g-import-not-at-top
  path = common.lite0_weights_path()
  assert path is None or os.path.isfile(path)

  def missing(name):
    raise weights.WeightsError(f"no package for {name}")

  monkeypatch.setattr(weights, "find_lite_weights", missing)
  assert common.lite0_weights_path() is None
