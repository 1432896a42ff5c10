"""Losses, one module per loss family; missing landmarks are masked out of every one."""

from .cell_loss import CellLoss
from .cephmarknet_loss import CEPHMarkLoss
from .rle import DCeLRLoss, RealNVP, RLELoss
from .heatmap_focal import SoftCEFocalLoss, log1m_softmax
from .tuple_target import TupleTargetLoss

__all__ = ["CEPHMarkLoss", "CellLoss", "SoftCEFocalLoss", "TupleTargetLoss", "log1m_softmax"]
__all__ += ["DCeLRLoss", "RealNVP", "RLELoss"]
