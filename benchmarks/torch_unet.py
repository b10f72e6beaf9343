"""The same U-Net in PyTorch, for the step benchmark's baseline only (valid convs, centre crop,
skip first in the concatenation, dropout at the end of the contracting path, weighted
cross-entropy per pixel, SGD with momentum). Not part of the product."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TorchUNet(nn.Module):
    def __init__(self, in_channels=1, n_classes=2, depth=5, base=64, dropout=0.5):
        super().__init__()
        self.depth, self.p = depth, dropout
        ch = [base * 2 ** l for l in range(depth)]
        self.down = nn.ModuleList()
        prev = in_channels
        for c in ch:
            self.down.append(nn.ModuleList([nn.Conv2d(prev, c, 3), nn.Conv2d(c, c, 3)]))
            prev = c
        self.ups = nn.ModuleList()
        self.upconvs = nn.ModuleList()
        for l in range(depth - 2, -1, -1):
            self.upconvs.append(nn.ConvTranspose2d(ch[l + 1], ch[l], 2, stride=2))
            self.ups.append(nn.ModuleList([nn.Conv2d(2 * ch[l], ch[l], 3), nn.Conv2d(ch[l], ch[l], 3)]))
        self.head = nn.Conv2d(ch[0], n_classes, 1)

    def forward(self, x):
        skips = []
        for l, (c1, c2) in enumerate(self.down):
            x = F.relu(c2(F.relu(c1(x))))
            if l < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        x = F.dropout(x, self.p, self.training)
        for up, (c1, c2), skip in zip(self.upconvs, self.ups, reversed(skips)):
            x = up(x)
            oy, ox = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
            x = torch.cat([skip[:, :, oy:oy + x.shape[2], ox:ox + x.shape[3]], x], 1)
            x = F.relu(c2(F.relu(c1(x))))
        return self.head(x)


def weighted_xent(logits, labels, weights):
    return (F.cross_entropy(logits, labels, reduction="none") * weights).mean()
