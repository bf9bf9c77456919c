"""Make again the demo models shipped with the package: ``m3d_components/resources/demo_llm`` and ``demo_segmenter``.

``ensure_demo_llm`` / ``ensure_demo_segmenter`` copy those folders instead of pre-training when their records match
the current recipes and the default corpus (``tests/engines/test_demo_assets.py`` checks that they do); run this after
changing a recipe. About 15 minutes on two CPU cores (LLM ~10, segmenter ~5)::

    python tools/make_demo_models.py [--data-dir demo] [--only llm|segmenter]
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from m3d_components.engines.demo import (
    SHIPPED_DEMO_LLM,
    SHIPPED_DEMO_SEGMENTER,
    demo_segmenter_config,
    ensure_demo_data,
    ensure_demo_llm,
    ensure_demo_segmenter,
)


def _replace(made: Path, shipped: Path) -> None:
    shutil.rmtree(shipped, ignore_errors=True)
    shutil.copytree(made, shipped)
    print(f"wrote {shipped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="demo", help="the default demo corpus (made there when missing)")
    parser.add_argument("--only", choices=("llm", "segmenter"), help="make only this one")
    args = parser.parse_args()
    data_dir = ensure_demo_data(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "llm"):
            _replace(Path(ensure_demo_llm(data_dir, Path(tmp) / "llm", use_shipped=False)), SHIPPED_DEMO_LLM)
        if args.only in (None, "segmenter"):
            made = ensure_demo_segmenter(data_dir, Path(tmp) / "segmenter", demo_segmenter_config(), use_shipped=False)
            _replace(Path(made).parent, SHIPPED_DEMO_SEGMENTER)


if __name__ == "__main__":
    main()
