"""A PyTorch generator in the main job: the PyTorch DCGAN tutorial's generator.

    python -m experiments.analyze --generator docs/examples/torch_dcgan.py:make_generator \\
        --generator_args '{"ngf": 16}' --out out/torch_dcgan

With trained weights (a state dict saved with ``torch.save(netG.state_dict(), path)``;
read with ``torch.load(weights_only=True)``, so the file cannot run code):

    python -m experiments.analyze \\
        --generator docs/examples/torch_dcgan.py:make_generator@netG.pt --out out/netG

The factory returns the ``nn.Module``; the command puts it in eval mode and imports it
with `cfmod_jax.torch_bridge.from_torch`: its sites are the outputs of its four ReLU
modules (``main.2``, ``main.5``, ``main.8``, ``main.11``, one per block), its latent
shape ``(nz, 1, 1)`` is read from the first layer, and the untrained baseline is the
same module re-initialised by PyTorch (``reset_parameters``, fixed seed).
"""

from torch import nn


class Generator(nn.Module):
  """The tutorial's 64×64 generator: z ``[N, nz, 1, 1]`` → images ``[N, 3, 64, 64]``."""

  def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
    super().__init__()
    layers = []
    widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
      stride, pad = (1, 0) if i == 0 else (2, 1)
      layers += [
        nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(True),
      ]
    layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    self.main = nn.Sequential(*layers)

  def forward(self, z):
    return self.main(z)


def make_generator(nz: int = 100, ngf: int = 64, seed: int = 0) -> nn.Module:
  """The generator with PyTorch's default initialisation under ``torch.manual_seed(seed)``."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  return Generator(nz, ngf)
