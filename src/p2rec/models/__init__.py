"""Sequential backbones behind one interface (see :mod:`p2rec.models.base`)."""
