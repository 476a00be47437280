"""Convolutional LSTM (CycleSegNet eq. 1-6) and its application over steps.

CycleSegNet's Cycle Refinement Module keeps one ConvLSTM per branch (the
parameters are shared between branches) and updates the hidden state H and the
cell state C of each image for N steps. We implement the ConvLSTM of Shi et
al. (NeurIPS 2015) in the form CycleSegNet writes it, with ``*`` a 2-D
convolution and ``o`` the Hadamard product::

  i_t = sigmoid(W_xi * X_t + W_hi * H_{t-1} + b_i)               (1)
  f_t = sigmoid(W_xf * X_t + W_hf * H_{t-1} + b_f)               (2)
  o_t = sigmoid(W_xo * X_t + W_ho * H_{t-1} + b_o)               (3)
  G_t = tanh(W_xg * X_t + W_hg * H_{t-1} + b_g)                  (4)
  C_t = f_t o C_{t-1} + i_t o G_t                                (5)
  H_t = o_t o tanh(C_t)                                          (6)

Choices the paper leaves open, and what we do:

* Peepholes. Shi et al.'s original cell adds Hadamard terms ``W_ci o C_{t-1}``
  to (1), ``W_cf o C_{t-1}`` to (2) and ``W_co o C_t`` to (3). We could not
  read CycleSegNet's typeset eq. 1-6 from the sources reachable while writing
  this module, so we do not claim which form they use: the default is the
  peephole-free form above (the form of most ConvLSTM code), and
  ``peephole=True`` adds Shi's terms. Because feature maps change size across
  datasets, our peephole weights are per channel ([features], broadcast over
  space) rather than per pixel as in Shi et al.
* Convolutions. Two convolutions, one over X (with the biases b) and one over H
  (no bias, the bias is already in the input convolution), each producing the
  four gate pre-activations stacked on the channel axis in the order
  **i, f, o, g** (eq. 1, 2, 3, 4). This equals one convolution over
  concat[X, H]; we keep two so the hidden path never needs the input's width.
  SAME padding, stride 1.
* Kernel size: ``kernel_size`` (default 3; the paper does not state it).
* Forget bias: ``forget_bias`` is added to the forget pre-activation as a
  constant (default 0.0, i.e. exactly eq. 2; 1.0 is the common trick of
  Jozefowicz et al. to start training with little forgetting).
* Initial state: the caller provides it. CycleSegNet initialises both H_0 and
  C_0 with the encoder features of the image.
* Carry layout: ``carry = (c, h)``, the order of ``flax.linen.ConvLSTMCell``.
  Outputs are cast back to the carry dtype so that ``scan`` sees a fixed carry
  type under mixed precision.

``ConvLSTM`` scans the cell over a time axis of given inputs.
``FeedbackConvLSTM`` is the Cycle Refinement pattern: no external inputs; the
input at each step is computed from the current carry by another module (for
CycleSegNet, the Region Correspondence Module of the branches' cell states,
X_A = RCM(C_A, C_B) and X_B = RCM(C_B, C_A), eq. 7-8). Both use ``nn.scan`` with
the parameters broadcast, so the N steps share one set of weights.

Unrolling: ``unroll`` is passed to the scan. By default (None) every step is
unrolled into the compiled graph. N is small (7 in the paper), and on XLA's
CPU backend the gradient of a rolled scan was measured at ~30x the unrolled
one: 548 ms against 17 ms for 3 CycleSegNet steps on 8 pairs of 8x8x32
features (``benchmarks/cyclesegnet_steps.py`` times the scan). The forward
costs the same either way.
``unroll=1`` keeps one copy of the step in the graph (smaller programs and
faster compiles for long sequences).
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

Carry = Tuple[jnp.ndarray, jnp.ndarray]
GATE_ORDER = ("i", "f", "o", "g")


def _unroll(unroll: Optional[int], length: int) -> int:
  """The scan's ``unroll`` for ``length`` steps (None: all of them)."""
  if unroll is None:
    return max(int(length), 1)
  if int(unroll) < 1:
    raise ValueError(f"unroll must be None or >= 1, got {unroll}")
  return int(unroll)


class ConvLSTMCell(nn.Module):
  """One ConvLSTM step, eq. 1-6; usable as ``f(carry, x)`` inside a scan.

  Call: ``(c, h), h = cell((c, h), x)`` with c, h [..., H, W, features] and
  x [..., H, W, C_in] (any number of leading batch axes).

  Attributes:
    features: channels of the hidden and cell states.
    kernel_size: square kernel of both gate convolutions.
    peephole: add Shi et al.'s per-channel Hadamard peephole terms.
    forget_bias: constant added to the forget-gate pre-activation.
    dtype: computation dtype (parameters stay float32).
  """
  features: int
  kernel_size: int = 3
  peephole: bool = False
  forget_bias: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Carry, x: jnp.ndarray) -> Tuple[Carry, jnp.ndarray]:
    c, h = carry
    if c.shape[-1] != self.features or h.shape[-1] != self.features:
      raise ValueError(
          f"ConvLSTMCell(features={self.features}) got carry channels "
          f"c={c.shape[-1]}, h={h.shape[-1]}")
    k = (self.kernel_size, self.kernel_size)
    z = (nn.Conv(4 * self.features, k, padding="SAME", use_bias=True,
                 dtype=self.dtype, name="input_conv")(x) +
         nn.Conv(4 * self.features, k, padding="SAME", use_bias=False,
                 dtype=self.dtype, name="hidden_conv")(h))
    zi, zf, zo, zg = jnp.split(z, 4, axis=-1)
    c_prev = c.astype(z.dtype)
    if self.peephole:
      peep = lambda n: self.param(n, nn.initializers.zeros, (self.features,),
                                  jnp.float32).astype(z.dtype)
      zi = zi + peep("peephole_i") * c_prev
      zf = zf + peep("peephole_f") * c_prev
    i = nn.sigmoid(zi)
    f = nn.sigmoid(zf + self.forget_bias)
    g = jnp.tanh(zg)
    c_new = f * c_prev + i * g
    if self.peephole:
      # Shi et al.: the output gate peeks at the *new* cell state.
      zo = zo + peep("peephole_o") * c_new
    o = nn.sigmoid(zo)
    h_new = (o * jnp.tanh(c_new)).astype(h.dtype)
    c_new = c_new.astype(c.dtype)
    return (c_new, h_new), h_new


class ConvLSTM(nn.Module):
  """Runs a ConvLSTMCell over a time axis with ``nn.scan`` (shared weights).

  Call: ``carry, hs = ConvLSTM(...)(carry, xs)`` with xs
  [B, T, H, W, C_in] (time on ``time_axis``), carry (c, h) each
  [B, H, W, features]; hs [B, T, H, W, features] (all hidden states).
  The parameters live under ``'cell'`` with exactly ConvLSTMCell's tree, so
  ``ConvLSTMCell(...).apply({'params': params['cell']}, carry, x)`` runs one
  step with them.

  Attributes:
    features: channels of the hidden and cell states.
    kernel_size: gate convolution kernel.
    peephole: Shi et al.'s peephole terms (see the module docstring).
    forget_bias: constant added to the forget-gate pre-activation.
    time_axis: axis of ``xs`` (and of the returned ``hs``) holding time.
    dtype: computation dtype.
    unroll: scan steps unrolled per loop iteration (None: all; see the
      module docstring).
  """
  features: int
  kernel_size: int = 3
  peephole: bool = False
  forget_bias: float = 0.0
  time_axis: int = 1
  dtype: Any = jnp.float32
  unroll: Optional[int] = None

  @nn.compact
  def __call__(self, carry: Carry, xs: jnp.ndarray):
    xs = jnp.moveaxis(xs, self.time_axis, 0)
    scan = nn.scan(ConvLSTMCell, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=0, out_axes=0,
                   unroll=_unroll(self.unroll, xs.shape[0]))
    carry, hs = scan(self.features, self.kernel_size, self.peephole,
                     self.forget_bias, self.dtype, name="cell")(carry, xs)
    return carry, jnp.moveaxis(hs, 0, self.time_axis)


class _FeedbackStep(nn.Module):
  """One step: x = input_module(state of the carry); carry = cell(carry, x)."""
  cell: nn.Module
  input_module: nn.Module
  feed: str = "cell"

  @nn.compact
  def __call__(self, carry: Carry, _):
    c, h = carry
    x = self.input_module(c if self.feed == "cell" else h)
    return self.cell(carry, x)


class FeedbackConvLSTM(nn.Module):
  """A ConvLSTM whose step input is computed from its own carry (CRM pattern).

  At each of ``num_steps`` steps: ``x_t = input_module(C_{t-1})`` (or of
  H_{t-1} with ``feed='hidden'``), then one ConvLSTMCell update. For
  CycleSegNet the carry holds all K branches stacked, c, h [B, K, H, W, F],
  and ``input_module`` is the group-form Region Correspondence Module mapping
  [B, K, H, W, F] -> [B, K, H, W, F]; the cell's convolutions treat B and K as
  batch axes, so every branch uses the same weights, as the paper's
  parameter-shared ConvLSTMs do.

  Call: ``carry, hs = FeedbackConvLSTM(...)(carry)``; hs stacks every step's
  hidden state, time first: [num_steps, *h.shape].

  Attributes:
    features: channels of the states.
    input_module: a Linen module, state -> step input (its parameters are
      shared over steps too).
    num_steps: N (CycleSegNet: 7).
    kernel_size: gate convolution kernel.
    peephole: Shi et al.'s peephole terms.
    forget_bias: constant added to the forget-gate pre-activation.
    feed: 'cell' (the paper: RCM of the cell states) or 'hidden'.
    dtype: computation dtype.
    unroll: scan steps unrolled per loop iteration (None: all; see the
      module docstring).
  """
  features: int
  input_module: nn.Module
  num_steps: int = 7
  kernel_size: int = 3
  peephole: bool = False
  forget_bias: float = 0.0
  feed: str = "cell"
  dtype: Any = jnp.float32
  unroll: Optional[int] = None

  @nn.compact
  def __call__(self, carry: Carry):
    if self.feed not in ("cell", "hidden"):
      raise ValueError(f"feed must be 'cell' or 'hidden', got {self.feed!r}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    cell = ConvLSTMCell(self.features, self.kernel_size, self.peephole,
                        self.forget_bias, self.dtype, name="cell")
    scan = nn.scan(_FeedbackStep, variable_broadcast="params",
                   split_rngs={"params": False}, length=self.num_steps,
                   unroll=_unroll(self.unroll, self.num_steps))
    return scan(cell, self.input_module, self.feed, name="steps")(carry, None)
