"""KENet (Cao et al., ICASSP; no public code), NCHW, written from the paper's section 2.2
(/work/shared/papers/kenet-icassp.txt), not from jaxsr:

    f0  = RB(ReLU(Conv(I_LR)))                          (eq. 4)
    f_i = RB(ReLU(Conv(MP(f_{i-1})))), i = 1..3         (eq. 5)
    k   = SM(FC(ReLU(FC(ReLU(FC(AP(f_3)))))))           (eq. 6)

"All convolutional layers ... 3x3 with 64s output channels, where s represents the s-th
Conv" (the four plain convs: 64, 128, 192, 256); "each residual block includes two 3x3
convolutional layers with 64s output channels and a ReLU in between" (+ identity);
FC widths 1024, 1024, l*l. Readings where the paper is silent: padding 1 with bias
(PyTorch's Conv2d defaults), MaxPool2d(2) (floor on odd sizes), the softmax over all l*l
logits, the kernel read row-major.
"""
import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class KENet(nn.Module):
    def __init__(self, kernel_size=21, width=64, n_pools=3, fc_width=1024):
        super().__init__()
        self.kernel_size = kernel_size
        chans = [width * (s + 1) for s in range(n_pools + 1)]          # 64s, s = 1..4
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1)
                                   for cin, cout in zip([3] + chans[:-1], chans))
        self.blocks = nn.ModuleList(ResidualBlock(c) for c in chans)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.ModuleList([nn.Linear(chans[-1], fc_width), nn.Linear(fc_width, fc_width),
                                 nn.Linear(fc_width, kernel_size * kernel_size)])

    def forward(self, lr):
        f = lr
        for i, (conv, block) in enumerate(zip(self.convs, self.blocks)):
            if i > 0:
                f = self.pool(f)
            f = block(torch.relu(conv(f)))
        x = f.mean(dim=(2, 3))                                         # AP
        x = torch.relu(self.fc[0](x))
        x = torch.relu(self.fc[1](x))
        k = torch.softmax(self.fc[2](x), dim=-1)
        return k.view(-1, self.kernel_size, self.kernel_size)
