"""Reusable layers shared by the co-segmentation methods.

Modules: ``convlstm`` (CycleSegNet eq. 1-6, scanned), ``roi_pool`` (adaptive
avg/max pooling with torch bin edges), ``region_attention`` (the Region
Correspondence Module, pair and group form), ``fusion`` (channel-attention
fusion for multi-level decoding), ``geometry`` (affine/TPS grids, sampling),
``correlation`` (4-D and depth-wise correlation), ``resize`` (bilinear
resizing with a stencil path for integer upsampling) and ``decoders``.
"""

from coseg_jax.nn import convlstm
from coseg_jax.nn import correlation
from coseg_jax.nn import decoders
from coseg_jax.nn import depthwise
from coseg_jax.nn import fusion
from coseg_jax.nn import geometry
from coseg_jax.nn import region_attention
from coseg_jax.nn import resize
from coseg_jax.nn import roi_pool
from coseg_jax.nn.convlstm import ConvLSTM
from coseg_jax.nn.convlstm import ConvLSTMCell
from coseg_jax.nn.convlstm import FeedbackConvLSTM
from coseg_jax.nn.fusion import ChannelAttentionFusion
from coseg_jax.nn.region_attention import rcm_pair
from coseg_jax.nn.region_attention import RegionCorrespondence
from coseg_jax.nn.roi_pool import adaptive_avg_pool
from coseg_jax.nn.roi_pool import adaptive_max_pool
from coseg_jax.nn.roi_pool import roi_pool as roi_pool_fn
