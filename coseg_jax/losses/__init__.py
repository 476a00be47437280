"""Pure loss functions, grouped by topic, and the loss registry.

Importing this package registers every loss under its name, so
``get_loss(name)`` works for any name a config uses. See ``registry.py`` for
the semantics of :func:`compute_total_loss`.
"""

# The loss modules register their losses when imported.
from coseg_jax.losses import classification
from coseg_jax.losses import coattention
from coseg_jax.losses import contrastive
from coseg_jax.losses import lovasz
from coseg_jax.losses import matching
from coseg_jax.losses import metric_learning
# Re-exported functions (the MaCoSNet losses are used through the registry
# or their modules, losses.matching and losses.contrastive).
from coseg_jax.losses.classification import decision_bce
from coseg_jax.losses.classification import sigmoid_bce
from coseg_jax.losses.coattention import coattention_loss
from coseg_jax.losses.coattention import coattention_pair_losses
from coseg_jax.losses.coattention import mask_loss
from coseg_jax.losses.lovasz import lovasz_grad
from coseg_jax.losses.lovasz import lovasz_hinge
from coseg_jax.losses.lovasz import lovasz_softmax
from coseg_jax.losses.lovasz import lovasz_softmax_binary
from coseg_jax.losses.lovasz import lovasz_weights
from coseg_jax.losses.metric_learning import triplet_loss
from coseg_jax.losses.registry import available_losses
from coseg_jax.losses.registry import compute_total_loss
from coseg_jax.losses.registry import get_loss
from coseg_jax.losses.registry import register_loss
