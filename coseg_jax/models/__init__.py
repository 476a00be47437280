"""The five methods (and the Table 1 baselines) behind one registry.

Importing this package registers every method (``registry.register_method``
at the bottom of each method module); the runtime looks them up with
:func:`get_method`. Methods import only the core (``coseg_jax.nn``,
``backbones``, ``losses``, ``metrics``), this registry and ``common``
(the input, option and loss-term checks and the group encoder they share).
"""

# pylint: disable=g-bad-import-order
from coseg_jax.models import baselines
from coseg_jax.models import coattention
from coseg_jax.models import cosegnet
from coseg_jax.models import cyclesegnet
from coseg_jax.models import dcc
from coseg_jax.models import dense_category
from coseg_jax.models import macosnet
from coseg_jax.models.registry import available_methods
from coseg_jax.models.registry import COMPUTE_DTYPES
from coseg_jax.models.registry import config_dtype
from coseg_jax.models.registry import get_method
from coseg_jax.models.registry import LossFn
from coseg_jax.models.registry import MethodSpec
from coseg_jax.models.registry import register_method
