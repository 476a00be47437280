"""Pure loss functions, grouped by topic, and the loss registry.

Importing this package registers every loss under its name, so
``get_loss(name)`` works for any name a config uses. See ``registry.py`` for
the semantics of :func:`compute_total_loss`.
"""

from coseg_jax.losses.registry import available_losses
from coseg_jax.losses.registry import compute_total_loss
from coseg_jax.losses.registry import get_loss
from coseg_jax.losses.registry import register_loss

# Loss modules: imported for their registrations (explicit list, no try/except).
from coseg_jax.losses import lovasz
# --- MaCoSNet losses (matching, contrastive): their author adds the import here.
from coseg_jax.losses import matching, contrastive
