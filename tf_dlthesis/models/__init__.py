"""Models that return logits, with a pluggable normalization layer (`norm=`)."""

from tf_dlthesis.models._build import MODEL_NAMES as MODEL_NAMES
from tf_dlthesis.models._build import RESNET_BLOCKS as RESNET_BLOCKS
from tf_dlthesis.models._build import build as build
from tf_dlthesis.models._norm import norm_factory as norm_factory
from tf_dlthesis.models._norm import register_norm as register_norm
