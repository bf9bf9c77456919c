"""M3D components: the shared library behind the M3D MONAI bundles.

Layering (nothing imports a layer above it): ``data`` and ``models`` side by side, ``metrics`` on its own,
``engines`` wiring the three, ``cli`` on top.
"""

__version__ = "0.1.0"
