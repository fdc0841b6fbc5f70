"""The one registry of backbones: name -> class (each class carries its ``defaults``).

Adding a backbone = one module with a :class:`~p2rec.models.base.SequentialBackbone` subclass, plus one
line here; its name then works in ``config.yaml`` under ``backbones``.
"""
from __future__ import annotations

import inspect

from p2rec.models.base import SequentialBackbone
from p2rec.models.caser import Caser
from p2rec.models.fmlp import FMLPRec
from p2rec.models.gru4rec import GRU4Rec
from p2rec.models.sasrec import SASRec

BACKBONES: dict[str, type[SequentialBackbone]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "caser": Caser,
    "fmlprec": FMLPRec,
}


def backbone_parameters(name: str) -> list[str]:
    """The parameters a config may set for one backbone: its ``defaults`` plus any optional constructor
    argument left out of them (an ablation knob whose default must not enter every run's settings)."""
    cls = BACKBONES[name]
    fixed = {"self", "num_items", "hidden", "max_len"}
    optional = [p for p in inspect.signature(cls.__init__).parameters if p not in fixed]
    return sorted(set(cls.defaults) | set(optional))


def build_backbone(name: str, num_items: int, hidden: int, max_len: int, **params) -> SequentialBackbone:
    cls = BACKBONES[name]
    kwargs = dict(cls.defaults)
    kwargs.update(params)
    return cls(num_items=num_items, hidden=hidden, max_len=max_len, **kwargs)
