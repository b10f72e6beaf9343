"""unetcu: the U-Net (Ronneberger et al., 2015) on hand-written CUDA kernels, with a CPU emulator
that runs the same kernels. See README.md."""
__version__ = "0.1.0"  # before the imports: model.py records it in every checkpoint

from .model import UNet, output_size, valid_input_size
__all__ = ["UNet", "output_size", "valid_input_size"]
