"""FSRCNN (Dong, Loy, Tang, ECCV 2016) in the layout of the common PyTorch port
(yjn870/FSRCNN-pytorch): first_part (conv5 + PReLU), mid_part (shrink conv1, m x conv3,
expand conv1, each + PReLU), last_part ConvTranspose2d(9, stride s, padding 4,
output_padding s - 1)."""
from torch import nn


class FSRCNN(nn.Module):
    def __init__(self, scale, num_channels=1, d=56, s=12, m=4):
        super().__init__()
        self.first_part = nn.Sequential(nn.Conv2d(num_channels, d, 5, padding=2), nn.PReLU(d))
        mid = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        mid += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, num_channels, 9, stride=scale, padding=4,
                                            output_padding=scale - 1)

    def forward(self, x):
        return self.last_part(self.mid_part(self.first_part(x)))
