"""unetcu: the U-Net (Ronneberger et al., 2015) on hand-written CUDA kernels, with a CPU emulator.

The .cu files in kernels/ ship inside the package as unetcu.kernels, so an installed unetcu finds
them without the source tree.
"""
from setuptools import setup

setup(
    name="unetcu",
    version="0.2.0",
    description="U-Net on hand-written CUDA kernels (CuPy), with a CPU emulator that runs the same kernels",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["unetcu", "unetcu.engines", "unetcu.engines.emu", "unetcu.ops", "unetcu.kernels"],
    package_dir={"unetcu.kernels": "kernels"},
    package_data={"unetcu.kernels": ["*.cu", "*.cuh", "README.md", "examples/*.cu", "emu/*.h", "emu/README.md", "emu/include/*", "emu/include/cooperative_groups/*"]},
    include_package_data=True,
    install_requires=[
        # numba-cuda 0.30 fails on numpy 2.5 (np.row_stack was removed); numba 0.68 supports < 2.5
        "numpy>=1.24,<2.5",
        "scipy>=1.10",
        "numba>=0.60",
        "pillow>=9",
        "tifffile>=2022.5",
        "matplotlib>=3.5",
        "scikit-image>=0.20",  # the watershed of `predict --instances watershed`
        "threadpoolctl>=3",  # names the BLAS (and its threads) the numpy engine's convolutions run on
    ],
    extras_require={
        # CuPy + an NVRTC of the toolkit generation the driver runs (a newer NVRTC's cubins may not load)
        "cuda13": ["cupy-cuda13x>=14", "nvidia-cuda-nvrtc==13.0.*", "numba-cuda>=0.30"],
        "cuda12": ["cupy-cuda12x>=13", "nvidia-cuda-nvrtc-cu12", "numba-cuda>=0.30"],
        "test": ["pytest>=7"],
        # block-wise prediction of images larger than memory (unetcu.large); zarr 3 needs Python >= 3.11
        "large": ["dask[array]>=2024.8", "distributed>=2024.8", "zarr>=3.0,<4", "tifffile>=2025.5"],
        # train --distributed under mpirun: mpi4py needs an MPI library (e.g. Debian's openmpi-bin libopenmpi-dev)
        "distributed": ["mpi4py>=3.1"],
        # unetcu export / import: ONNX and bioimage.io model packages. bioimageio.core 0.11 pins bioimageio.spec
        # 0.5.12, whose package writer fails under pydantic 2.12+ (a serializer signature changed)
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "bioimageio.core>=0.9", "pydantic<2.12"],
    },
    entry_points={"console_scripts": ["unetcu=unetcu.cli:main"]},
)
