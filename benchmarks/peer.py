"""The quality benchmark's peer: a PyTorch U-Net of unetcu's exact architecture (torch_unet.TorchUNet),
trained by a stated recipe and evaluated by unetcu's own overlap-tile code and metrics.
Benchmark-only; PyTorch is not part of unetcu.

Two samplers:
- sampler="own" (Recipe.plain(), the quality benchmark's peer): the plain recipe a PyTorch user
  writes first, independent of unetcu's tile pipeline: a random window of the reflect-padded
  image (every output pixel equally likely), one of the 8 rotations/flips, cross-entropy with
  class weights from the training set's class frequencies (N / (K n_c), no weight map), Adam 1e-3,
  He initialisation (kaiming_normal_, fan_in, bias 0). OwnSampler below is all of it.
- sampler="unetcu": tiles, weight maps and augmentation from unetcu's own pipeline
  (unetcu.train.draw_batch). Because unetcu's gradients equal this net's (tests/test_reference.py),
  Recipe.unetcu() here trains what `unetcu train` trains, step for step, at PyTorch's CPU speed
  (tests/test_benchmarks.py checks the losses): the ablation (benchmarks/ablation.py) measures many
  recipes x seeds this way.

    predictor, losses = train_peer(samples, Recipe.plain(), steps=1500, depth=4, base=16, tile=188, seed=0)
    probs = predict_probs(predictor, sample.image, tile=188)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.torch_unet import TorchUNet, weighted_xent
from unetcu import UNet, output_size
from unetcu.optim import lr_at
from unetcu.run import TrainConfig, prepare
from unetcu.train import draw_batch


@dataclass
class Recipe:
    """How a net is trained. The defaults are the plain recipe most PyTorch users pick."""
    optimizer: str = "adam"      # adam | adamw | sgd (Caffe's momentum rule, as unetcu's sgd.cu)
    lr: float = 1e-3
    momentum: float = 0.99       # sgd only
    weight_decay: float = 0.0
    clip: float = 0.0            # > 0: global L2 norm clipping
    schedule: str = "constant"   # constant | cosine | poly (power 0.9), after the warm-up
    warmup: int = 0              # steps of linear warm-up from 0
    augment: str = "flips"       # flips (random window, 8 rotations/flips) | elastic (unetcu's warp) | none
    elastic_sigma: float = 10.0
    w0: float = 0.0              # the weight map's border term; 0: class balancing only
    dropout: float = 0.5
    init: str = "torch"          # torch (PyTorch's default) | he (unetcu's: N(0, sqrt(2/fan_in)), bias 0)
    sampler: str = "unetcu"      # unetcu (draw_batch: unetcu's tiles and weight maps) | own (OwnSampler)

    @staticmethod
    def plain(**kw) -> "Recipe":
        """The strongest plain recipe a PyTorch user writes: own crops with flips, class-balanced CE,
        Adam 1e-3 at a constant rate, He init, no weight map."""
        return Recipe(**{**dict(optimizer="adam", lr=1e-3, augment="flips", init="he", sampler="own"), **kw})

    @staticmethod
    def unetcu(**kw) -> "Recipe":
        """unetcu's defaults of before this benchmark: SGD 0.99, lr 1e-3, clip 1, elastic warp, He init."""
        return Recipe(**{**dict(optimizer="sgd", lr=1e-3, momentum=0.99, clip=1.0, augment="elastic", init="he"), **kw})


def _pairs(unet: UNet, net: TorchUNet):
    """(unetcu parameter name, torch parameter) for every parameter of the two nets."""
    d = unet.config["depth"]
    out = []
    for l in range(d):
        for j in (0, 1):
            out.append((f"down{l}.conv{j + 1}", net.down[l][j]))
    for i, l in enumerate(range(d - 2, -1, -1)):
        out.append((f"up{l}.upconv", net.upconvs[i]))
        for j in (0, 1):
            out.append((f"up{l}.conv{j + 1}", net.ups[i][j]))
    out.append(("head", net.head))
    return out


def to_torch(unet: UNet, net: TorchUNet):
    with torch.no_grad():
        for name, m in _pairs(unet, net):
            m.weight.copy_(torch.from_numpy(np.asarray(unet.params[f"{name}.weight"])))
            m.bias.copy_(torch.from_numpy(np.asarray(unet.params[f"{name}.bias"])))


def to_unet(net: TorchUNet, unet: UNet):
    for name, m in _pairs(unet, net):
        unet.params[f"{name}.weight"][...] = m.weight.detach().numpy()
        unet.params[f"{name}.bias"][...] = m.bias.detach().numpy()


class TorchPredictor:
    """What unetcu.tiling.predict_probs needs of a model, computed by the torch net."""

    def __init__(self, net: TorchUNet, config: dict):
        self.net, self.config, self.xp = net.eval(), config, np

    def predict_proba(self, x):
        with torch.no_grad():
            return torch.softmax(self.net(torch.from_numpy(np.ascontiguousarray(x))), 1).numpy()


class OwnSampler:
    """The plain PyTorch user's tiles, written without unetcu's pipeline: each step one image at
    random, a random (tile x tile) window of the image reflect-padded by the halo (tile - out) / 2,
    so that the (out x out) label window lies anywhere in the image, then one of the 8
    rotations/flips. Images are the loader's (data.Sample.image: standardised per image, as
    predict_probs takes them); labels its class map (data.Sample.classes()). class_weights: the
    training set's N / (K n_c), what a user passes to cross_entropy(weight=...)."""

    def __init__(self, samples, tile: int, out: int, n_classes: int = 2):
        self.tile, self.out, self.halo = tile, out, (tile - out) // 2
        self.images = [np.pad(s.image, self.halo, mode="reflect") for s in samples]
        self.labels = [s.classes() for s in samples]
        small = [s.name for s in samples if min(s.image.shape) < out]
        if small:
            raise ValueError(f"peer: images smaller than the {out}-pixel output window: {', '.join(small)}")
        counts = np.bincount(np.concatenate([l.ravel() for l in self.labels]), minlength=n_classes)[:n_classes]
        self.class_weights = counts.sum() / (n_classes * np.maximum(counts, 1))

    def __call__(self, rng: np.random.Generator):
        """(x (1, 1, tile, tile) float32, labels (1, out, out) int64)."""
        i = int(rng.integers(len(self.images)))
        lab = self.labels[i]
        y0, x0 = (int(rng.integers(n - self.out + 1)) for n in lab.shape)
        img = self.images[i][y0:y0 + self.tile, x0:x0 + self.tile]   # padded coordinates: y0 - halo + halo
        lab = lab[y0:y0 + self.out, x0:x0 + self.out]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
        if flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return (np.ascontiguousarray(img, np.float32)[None, None], np.ascontiguousarray(lab, np.int64)[None])


def he_init(net: TorchUNet):
    """He initialisation as PyTorch users write it: kaiming_normal_ (fan_in, ReLU gain), zero bias."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)


def train_peer(samples, recipe: Recipe, steps: int, depth: int, base: int, tile: int, seed: int = 0,
               sigma: float = 5.0, log=None):
    """Train a TorchUNet on samples (unetcu.data.Sample) for steps of one tile; returns
    (TorchPredictor, the per-step losses). Tiles, weight maps and the dropout rate follow the recipe;
    tile positions and augmentation come from default_rng(seed), the initial weights from seed."""
    torch.manual_seed(seed)
    unet = UNet(depth=depth, base_channels=base, dropout=recipe.dropout, engine="numpy", seed=seed)
    net = TorchUNet(depth=depth, base=base, dropout=recipe.dropout)
    if recipe.sampler not in ("unetcu", "own"):
        raise ValueError(f"sampler must be unetcu or own, got {recipe.sampler!r}")
    own = recipe.sampler == "own"
    if own and (recipe.augment != "flips" or recipe.w0):
        raise ValueError("sampler own: flips and class balancing only (augment='flips', w0=0)")
    if recipe.init == "he":
        he_init(net) if own else to_torch(unet, net)  # own: PyTorch's He; unetcu: unetcu's very weights
    elif recipe.init != "torch":
        raise ValueError(f"init must be torch or he, got {recipe.init!r}")
    if recipe.optimizer == "sgd":  # Caffe: v <- m v - lr g; p <- p + v. torch's SGD equals it at a fixed lr only:
        # under a schedule it scales the whole velocity by today's lr (v <- m v + g; p <- p - lr v)
        opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    elif recipe.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
        opt = cls(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        raise ValueError(f"optimizer must be sgd, adam or adamw, got {recipe.optimizer!r}")
    cfg = TrainConfig(steps=steps, tile=tile, augment=recipe.augment, elastic_sigma=recipe.elastic_sigma,
                      w0=recipe.w0, sigma=sigma, seed=seed)
    if own:
        sampler = OwnSampler(samples, tile, output_size(tile, depth))
        class_w = torch.from_numpy(sampler.class_weights.astype(np.float32))
    else:
        data = prepare(samples, cfg, unet)
    rng = np.random.default_rng(seed)
    losses = []
    net.train()
    for step in range(1, steps + 1):
        if own:
            x, lab = sampler(rng)
        else:
            x, lab, wt = draw_batch(data, cfg, unet, rng)
            rng.integers(2**63)  # unetcu's trainer draws the dropout seed here: the same tiles for the same seed
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, recipe.lr, recipe.warmup, recipe.schedule)
        opt.zero_grad()
        if own:
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(lab), weight=class_w)
        else:
            loss = weighted_xent(net(torch.from_numpy(x)), torch.from_numpy(lab).long(), torch.from_numpy(wt))
        loss.backward()
        if recipe.clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip)
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        if log and (step % max(steps // 5, 1) == 0):
            log(f"  step {step}/{steps}: loss {np.mean(losses[-50:]):.4f}")
    return TorchPredictor(net, unet.config), losses
