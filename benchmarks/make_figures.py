"""Figures for the README: a synthetic image with its classes and the paper's weight map.
python -m benchmarks.make_figures  ->  benchmarks/figures/weightmap.png"""
from pathlib import Path


from unetcu.data import classes_from_instances, synthetic_cells
from unetcu.weightmap import weight_map


def main():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img, inst = synthetic_cells((256, 256), seed=4)
    w = weight_map(inst, w0=10, sigma=5)
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.2))
    ax[0].imshow(img, cmap="gray"), ax[0].set_title("synthetic touching cells")
    ax[1].imshow(classes_from_instances(inst), cmap="gray"), ax[1].set_title("classes (separation borders = background)")
    im = ax[2].imshow(w, cmap="jet"), ax[2].set_title("weight map w(x), w0 = 10, sigma = 5")
    fig.colorbar(im[0] if isinstance(im, tuple) else im, ax=ax[2], fraction=0.046)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    out = Path(__file__).resolve().parent / "figures" / "weightmap.png"
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
