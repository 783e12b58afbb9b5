"""``backend/nn/chroma.py`` of Forge Neo 2.26: ``IntegratedChromaTransformer2DModel`` (ComfyUI's ``Chroma`` port),
here ``tests/tiny_dits.TinyChroma``."""

from tiny_dits import TinyChroma as IntegratedChromaTransformer2DModel  # noqa: F401
