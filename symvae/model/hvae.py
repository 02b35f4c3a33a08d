"""The model interface every experiment answers, and the decoder p they all share.

p(z0) is uniform over nz0 bits (logits 0, no parameters), p(z1|z0) is a
SkipMLP, p(x|z1) a transposed-convolution decoder with a pixel model. An
encoder subclass adds q and answers `sample_q`, `nll_q` and `elbo_loss`.
Loss methods return (scalar loss averaged over the batch, {log name: value}).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from symvae.model.distributions import bernoulli_nll, sample_bernoulli
from symvae.model.nets import PIXELS, SkipMLP, pixel_decoder
from symvae.model.pixels import BernoulliPixels

Latents = tuple[Tensor, Tensor]  # (z0, z1)
Logs = dict[str, Tensor]


class HVAE(nn.Module):
    """Decoder p(z0) p(z1|z0) p(x|z1); subclasses add the encoder q."""

    experiment: ClassVar[str] = ""  # folder name, recorded in checkpoints
    dataset: ClassVar[object] = None  # the folder's symvae.data.datasets.Dataset
    sym_names: ClassVar[tuple[str, ...]] = ()  # log names of a symmetric iteration
    elbo_names: ClassVar[tuple[str, ...]] = ()  # log names of an ELBO iteration
    mi_names: ClassVar[tuple[str, ...]] = ()  # bit groups with MI statistics
    # What an experiment's hvae.py sets (SPEC §2): MLP widths, activations, pixel model.
    width: int = 600  # the encoder's networks
    p_width: int = 600  # the decoder's p(z1|z0) MLP (600 in every experiment of the paper)
    act: str = "tanh"
    decoder_act: str = "tanh"  # activation inside p(x|z1)
    pixel_model: ClassVar[type[nn.Module]] = BernoulliPixels
    # Where limiting chains start (names of symvae.model.sampling.CHAIN_STARTS), as in the authors'
    # scripts: `chain_start` for generate.py and the training grid's running chain,
    # `fid_chain_start` for generate_data.py and the FID command.
    chain_start: ClassVar[str] = "binary_noise"
    fid_chain_start: ClassVar[str] = "binary_noise"

    def __init__(self, nz0: int, nz1: int, *, width: int | None = None, act: str | None = None,
                 p_x: nn.Module | None = None, n_pixels: int = PIXELS):
        """`width` (both widths) and `act` override the class settings; `p_x` maps z1 to the
        pixel model's outputs (default: the image decoder of SPEC §2) for `n_pixels` pixels."""
        super().__init__()
        self.nz0, self.nz1, self.n_pixels = nz0, nz1, n_pixels
        self.width, self.act = width or self.width, act or self.act
        self.p_width = width or self.p_width
        self.p_z1 = SkipMLP(nz0, nz1, self.p_width, 2, self.act)
        self.p_x = pixel_decoder(nz1, self.decoder_act) if p_x is None else p_x
        self.pixels = self.pixel_model()

    # --- parameter groups -------------------------------------------------
    def p_parameters(self) -> list[nn.Parameter]:
        """Parameters of the decoder p (p(z1|z0), p(x|z1), the pixel model)."""
        return [*self.p_z1.parameters(), *self.p_x.parameters(), *self.pixels.parameters()]

    def q_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder q only (everything not in p)."""
        p_ids = {id(t) for t in self.p_parameters()}
        return [t for t in self.parameters() if id(t) not in p_ids]

    # --- decoder ------------------------------------------------------------
    def sample_z0(self, n: int) -> Tensor:
        """z0 ~ p(z0), uniform bits."""
        return torch.bernoulli(torch.full((n, self.nz0), 0.5, device=self._device()))

    def sample_z(self, n: int) -> tuple[Latents, Tensor]:
        """(z0, z1) ~ p(z0) p(z1|z0), with the logits of p(z1|z0)."""
        z0 = self.sample_z0(n)
        l1 = self.p_z1(z0)
        return (z0, sample_bernoulli(l1)), l1

    def sample_p(self, n: int) -> tuple[Latents, Tensor, Logs]:
        """Ancestral sample (z0, z1, x) ~ p, with the logits of p(z1|z0) for statistics."""
        z, l1 = self.sample_z(n)
        x = self.pixels.sample(self.p_x(z[1]))
        return z, x, {"p1": l1}

    def nll_p_terms(self, z: Latents, x: Tensor) -> tuple[Tensor, Tensor]:
        """(-log p(z1|z0), -log p(x|z1)) per sample; log p(z0) is constant."""
        z0, z1 = z
        return bernoulli_nll(self.p_z1(z0), z1), self.pixels.nll(self.p_x(z1), x)

    def single_shot(self, n: int) -> tuple[Latents, Tensor]:
        """z ~ p and its decoder outputs ("random code" images before the pixel map)."""
        z, _ = self.sample_z(n)
        return z, self.p_x(z[1])

    def limiting_out(self, x: Tensor) -> tuple[Latents, Tensor]:
        """Half a chain step: z ~ q(z|x) and the decoder outputs of p(x|z1); returns
        (z, outputs)."""
        z, _ = self.sample_q(x)
        return z, self.p_x(z[1])

    def limiting_step(self, x: Tensor) -> tuple[Latents, Tensor, Tensor]:
        """One chain step x -> z ~ q(z|x) -> x' ~ p(x|z1); returns (z, decoder outputs, x')."""
        z, out = self.limiting_out(x)
        return z, out, self.pixels.sample(out)

    # --- encoder (subclasses) -----------------------------------------------
    def sample_q(self, x: Tensor) -> tuple[Latents, Logs]:
        """z ~ q(z|x) without gradient, with the logits of each q factor for statistics."""
        raise NotImplementedError

    def nll_p(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        """p-step loss: mean over the batch of -log p(z1|z0) - log p(x|z1)."""
        raise NotImplementedError

    def nll_q_terms(self, z: Latents, x: Tensor) -> tuple[Tensor, ...]:
        """The factors' -log q per sample, summing to -log q(z0, z1|x); used by symvae.toy.exact."""
        raise NotImplementedError

    def nll_q(self, z: Latents, x: Tensor) -> tuple[Tensor, Logs]:
        """q-step loss: mean over the batch of -log q(z|x); touches q's parameters only."""
        raise NotImplementedError

    def elbo_loss(self, x: Tensor, latents: Latents | None = None) -> tuple[Tensor, Logs, Logs]:
        """Negative ELBO averaged over the batch, its log terms, and logits for statistics.

        `latents` = (z0, z1) fixes the ZGR samples instead of drawing them (for checks).
        """
        raise NotImplementedError

    def _device(self) -> torch.device:
        return next(self.p_x.parameters()).device

    def per_pixel(self, nll: Tensor) -> Tensor:
        """Batch mean of a pixel-model term, per pixel (the logs' normalisation)."""
        return nll.mean() / self.n_pixels
