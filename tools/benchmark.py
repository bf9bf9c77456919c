"""Speed benchmark of the M3D training and inference steps; the same as ``m3d bench-speed``.

The benchmark lives in :mod:`m3d_components.engines.speed`; see its docstring and ``docs/performance.md``::

    python tools/benchmark.py --stages clip lamed seg generate --scale tiny --steps 10 --warmup 2 [--json out.json]
"""

from m3d_components.engines.speed import main

if __name__ == "__main__":
    main()
