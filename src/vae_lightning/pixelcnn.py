"""A gated PixelCNN (van den Oord et al. 2016, "Conditional image generation with PixelCNN
decoders", Sec. 2.1-2.2) over maps of discrete codes, and the VQ-VAE's prior fitted after
training with it (van den Oord et al. 2017, Sec. 3.2): ``vae-sample sampler=pixelcnn``.

p(k) = prod_i p(k_i | k_<i) over the positions of an h x w map in raster order, each factor a
softmax over the K codes. Causality comes from two stacks, without masked kernels' blind spot:
the vertical stack's (k//2 + 1) x k convolutions see the rows above and the current row, and
reach the horizontal stack only shifted down one row (rows above only); the horizontal stack's
1 x (k//2 + 1) convolutions see the current row up to the current position, the first layer's
shifted right one column so that position i never sees k_i (the "mask A" layer, which also has
no residual connection). Each layer's output is the gate tanh(a) * sigmoid(b).

``PixelCNNSampler`` fits it to the code maps of the training images: the posterior locations
z_q it is given are read as maps of codebook vectors (``posteriors.vq``'s channel-major layout,
``shape`` = [h, w]), the distinct vectors found are the codebook (codes no image uses get no
probability), and the fit is by maximum likelihood with Adam. It logs the mean negative
log-likelihood of the training code maps in nats per map and bits per position: in the
VQ-VAE's bound, log p(x) >= E_q[log p(x|z_q)] - KL(q || p) = recon + log p(k(x)) (q one-hot), it
replaces the uniform prior's P log K.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vae_lightning.args import NonNegativeInt, PositiveFloat, PositiveInt, checked, fail
from vae_lightning.console import command, override
from vae_lightning.parts import Bound, Parts
from vae_lightning.samplers import Sampler, _check_tensors, fit_by_likelihood

log = logging.getLogger(__name__)
CODES_CHUNK = 1024  # points whose code maps are found at once (PixelCNNSampler.codes)


def _down(x: Tensor, rows: int = 1) -> Tensor:
    """x shifted down ``rows`` rows (zeros enter at the top)."""
    return F.pad(x, (0, 0, rows, 0))[..., :x.shape[-2], :]


def _right(x: Tensor, cols: int = 1) -> Tensor:
    """x shifted right ``cols`` columns (zeros enter at the left)."""
    return F.pad(x, (cols, 0))[..., :x.shape[-1]]


class GatedLayer(nn.Module):
    """One layer of both stacks at ``channels`` with ``kernel`` k (odd); ``first``: the mask-A
    layer (the current position excluded, no residual)."""

    def __init__(self, channels: int, kernel: int, first: bool) -> None:
        super().__init__()
        self.first, half = first, kernel // 2
        # Vertical: rows r - k//2 .. r, columns c - k//2 .. c + k//2 (cropped below).
        self.vertical = nn.Conv2d(channels, 2 * channels, (half + 1, kernel),
                                  padding=(half, half))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        # Horizontal: columns c - k//2 .. c of row r (cropped below).
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, half + 1), padding=(0, half))
        self.out = nn.Conv2d(channels, channels, 1)

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        rows, cols = v.shape[-2:]
        v_pre = self.vertical(v)[..., :rows, :]  # output row r from input rows <= r
        h_in = _right(h) if self.first else h
        h_pre = self.horizontal(h_in)[..., :cols]  # output column c from input columns <= c
        h_pre = h_pre + self.vertical_to_horizontal(_down(v_pre))  # rows < r only
        h_out = self.out(self.gate(h_pre))
        return self.gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNN(nn.Module):
    """Logits [B, K, h, w] of p(k_i | k_<i) from one-hot code maps [B, K, h, w]: a 1 x 1
    embedding to ``channels``, ``layers`` gated layers of kernel ``kernel``, and a ReLU / 1 x 1
    convolution head to the K logits."""

    def __init__(self, codes: int, channels: int = 64, layers: int = 8, kernel: int = 3) -> None:
        super().__init__()
        self.codes = codes
        self.embed = nn.Conv2d(codes, channels, 1)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel, i == 0) for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, codes, 1))

    def forward(self, one_hot: Tensor) -> Tensor:
        v = h = self.embed(one_hot)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p(k) of code maps [B, h, w], summed over positions: [B]."""
        logits = self(F.one_hot(codes, self.codes).permute(0, 3, 1, 2).float())
        return -F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, shape: Sequence[int]) -> Tensor:
        """n code maps [n, h, w] drawn position by position in raster order."""
        rows, cols = shape
        device = self.embed.weight.device
        codes = torch.zeros(n, rows, cols, dtype=torch.long, device=device)
        for r in range(rows):
            for c in range(cols):
                logits = self(F.one_hot(codes, self.codes).permute(0, 3, 1, 2).float())
                codes[:, r, c] = torch.distributions.Categorical(
                    logits=logits[:, :, r, c]).sample()
        return codes


class PixelCNNSampler(Sampler):
    """A gated PixelCNN (``channels``, ``layers``, odd ``kernel``) over the ``shape`` = [h, w]
    code maps of a VQ-VAE's posterior locations, fitted by Adam (learning rate ``lr``) on
    minibatches of ``batch_size`` for ``epochs`` passes, initialised and shuffled from ``seed``.
    Its codes are the K vectors of the model's codebook (taken by ``check``), the ones no
    training image uses included, so that p(k) is a distribution over every code map the
    decoder can read; fitted without a model, the distinct vectors of the points fitted."""

    stays_in = frozenset({"codebook"})  # it draws code maps of the codebook: parts.CONFINED

    @checked
    def __init__(self, shape: Sequence[PositiveInt] | None = None, channels: PositiveInt = 64,
                 layers: PositiveInt = 8, kernel: PositiveInt = 3, epochs: PositiveInt = 10,
                 batch_size: PositiveInt = 128, lr: PositiveFloat = 1e-3,
                 seed: NonNegativeInt = 0) -> None:
        if shape is not None and len(shape) != 2:
            fail(self, "shape", list(shape), "the code map's [height, width], or null")
        if kernel % 2 == 0:
            fail(self, "kernel", kernel, "an odd size")
        # null: the model's map, set by ``check`` (the decoder's [h, w] where it reads one).
        self.shape = None if shape is None else list(shape)
        self.channels, self.layers = channels, layers
        self.kernel, self.epochs, self.batch_size = kernel, epochs, batch_size
        self.lr, self.seed = lr, seed
        self._net: GatedPixelCNN | None = None
        self._codebook = torch.zeros(0)
        self._model_codebook: Tensor | None = None  # the codebook of the model checked

    def describe(self) -> str:
        if self.shape is None:
            return f"a gated PixelCNN of {self.layers} layers over the model's code maps"
        rows, cols = self.shape
        return f"a gated PixelCNN of {self.layers} layers over {rows}x{cols} code maps"

    @property
    def positions(self) -> int:
        if self.shape is None:  # fitted without a model: nothing says its map
            fail(self, "shape", None, "the code map's [height, width] where no model gives it")
        return self.shape[0] * self.shape[1]

    def check(self, model: Any) -> str | None:
        if (why := not_code_maps(model)) is not None:
            return f"{why}: use sampler=gmm, flow or prior"
        codebook = model.encoder.posterior.codebook.detach().float().cpu()
        # The positions must be the model's: latent / its code_dim. Any divisor of the latent
        # size passed (7 x 8 for 49 positions of 16-d codes: 56 positions of 14 numbers), and
        # the fit failed in torch.cdist, a traceback ("X1 and X2 must have the same number of
        # columns").
        dim = codebook.shape[-1]
        # And where the decoder reads a map (ConvMapDecoder: its input [D, h, w]), they must be
        # its rows and columns: any h' x w' of as many positions passed (Frey Face's 7 x 5 map
        # as [5, 7], the shape this refusal advised, or [35, 1]), and the PixelCNN was fitted,
        # silently, to the codes laid out anew, each position's neighbours not the map's.
        layout = code_map(model)
        positions = model.latent // dim
        rows = max(r for r in range(1, math.isqrt(positions) + 1) if positions % r == 0)
        rows, cols = layout or (rows, positions // rows)
        if self.shape is None:  # the decoder's map; for a flat latent, its squarest layout
            self.shape = [rows, cols]
        if self.positions * dim != model.latent or layout not in (None, tuple(self.shape)):
            fail(self, "shape", self.shape, f"the model's code map: {positions} positions "
                 f"(model.latent {model.latent} / model.encoder.posterior.code_dim {dim}), "
                 + (f"[{rows}, {cols}], the decoder's map" if layout else
                    f"e.g. [{rows}, {cols}]"))
        self._model_codebook = codebook
        return None

    def _code_dim(self, latent: int) -> int:
        if latent % self.positions:
            fail(self, "shape", self.shape, f"a code map whose {self.positions} positions "
                 f"divide the model's latent size {latent}")
        return latent // self.positions

    def _build(self, codes: int) -> GatedPixelCNN:
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return GatedPixelCNN(codes, self.channels, self.layers, self.kernel)

    def _vectors(self, z: Tensor) -> Tensor:
        """The code vectors [N, h * w, D] of points z [N, latent] (channel-major)."""
        return z.float().unflatten(-1, (self._code_dim(z.shape[1]), -1)).transpose(-1, -2)

    def codes(self, z: Tensor) -> Tensor:
        """The code maps [N, h, w] of points z [N, latent]: each vector's nearest codebook
        vector (exactly equal for the quantizer's own z_q). The distances are taken
        ``CODES_CHUNK`` points at a time: all of MNIST's 50,000 training maps of 49 vectors from
        512 codes at once were a [50000, 49, 512] matrix and cdist's copies of it, 21 GB, and
        the fit was killed for memory."""
        vectors = self._vectors(z)
        return torch.cat([torch.cdist(chunk, self._codebook).argmin(-1)
                          for chunk in vectors.split(CODES_CHUNK)]
                         or [vectors.new_zeros((0, self.positions), dtype=torch.long)]
                         ).reshape(-1, *self.shape)

    def fit(self, z: Tensor) -> None:
        vectors = self._vectors(z)
        self._codebook = (self._model_codebook if self._model_codebook is not None
                          else torch.unique(vectors.flatten(0, 1), dim=0))
        codes = self.codes(z)
        net = self._build(len(self._codebook))
        def report(epoch: int, nll: float) -> None:
            log.info("PixelCNN prior, epoch %d: -log p(k) = %.3f nats per training code map, "
                     "%.4f bits per position (uniform over the %d codes: %.4f); the bound "
                     "is -log p(x) <= -recon + -log p(k), recon the run's train/recon.",
                     epoch + 1, nll, nll / (self.positions * math.log(2)), len(self._codebook),
                     math.log2(len(self._codebook)))

        fit_by_likelihood(self, net, codes, report)
        self._net = net.eval()

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(k(z)) of points z [N, latent], in nats (the bound's -KL(q || p)); -inf for a
        point with a vector that is none of the codes: p gives its code map no probability."""
        with torch.no_grad():
            codes = self.codes(z)
            on = torch.isclose(self._codebook[codes].flatten(1, 2), self._vectors(z),
                               rtol=1e-5, atol=1e-6).all(-1).all(-1)
            return self._net.log_prob(codes).masked_fill(~on, -math.inf)

    def state(self) -> dict[str, Tensor]:
        return {"codebook": self._codebook,
                **{f"net.{k}": v for k, v in self._net.state_dict().items()}}

    def load(self, state: Mapping[str, Any], latent: int) -> None:
        """The fitted state, its shapes checked against a network built on PyTorch's meta
        device first (nothing allocated): the options of a file eval.fitted_prior reads (its
        channels, layers) are the file's, and must not size what is allocated."""
        codebook = state.get("codebook")
        if not isinstance(codebook, Tensor) or codebook.dim() != 2 or not len(codebook):
            raise ValueError("it holds no codebook [codes, code_dim]")
        embed = state.get("net.embed.weight")
        layers = {key.split(".")[2] for key in state
                  if isinstance(key, str) and key.startswith("net.layers.")}
        if not isinstance(embed, Tensor) or embed.dim() != 4 or len(embed) != self.channels \
                or len(layers) != self.layers:  # before even a meta network of their size
            raise ValueError(f"its network is not one of {self.layers} layers of "
                             f"{self.channels} channels, as its options say")
        with torch.device("meta"):
            sized = GatedPixelCNN(len(codebook), self.channels, self.layers, self.kernel)
        shapes = {"codebook": (len(codebook), self._code_dim(latent)),
                  **{f"net.{k}": tuple(v.shape) for k, v in sized.state_dict().items()}}
        _check_tensors(state, shapes)
        net = self._build(len(codebook))
        if self._model_codebook is not None and not torch.equal(codebook.float(),
                                                                self._model_codebook):
            raise ValueError(f"it is a prior over {len(codebook)} codes that are not the "
                             f"model's codebook of {len(self._model_codebook)} (an earlier "
                             "version kept only the codes its training images used)")
        net.load_state_dict({k[4:]: state[k] for k in shapes if k.startswith("net.")})
        self._net, self._codebook = net.eval(), codebook.float()

    def sample(self, n: int) -> Tensor:
        codes = self._net.sample(n, self.shape).cpu()
        return self._codebook[codes].flatten(1, 2).transpose(1, 2).flatten(1)


def code_map(model: Any) -> tuple[int, int] | None:
    """The [h, w] of the map of code vectors the model's decoder reads (``ConvMapDecoder``'s
    input, [D, h, w]: h = H / 2^depth, w = W / 2^depth), or None for a network that reads the
    latent as a flat vector, whose positions have no rows and columns."""
    from vae_lightning.conv_maps import ConvMapDecoder

    net = getattr(model.decoder, "net", None)
    return tuple(net.layer_input[1:]) if isinstance(net, ConvMapDecoder) else None


@torch.no_grad()
def not_code_maps(model: Any) -> str | None:
    """Why ``model`` has no code maps for a PixelCNN to model (it is no VQ-VAE), or None."""
    from vae_lightning.posteriors.vq import VectorQuantizer

    if isinstance(model.encoder.posterior, VectorQuantizer):
        return None
    return ("the PixelCNN is a prior over a VQ-VAE's code maps (model=vq_vae), and this "
            f"model's posterior is {type(model.encoder.posterior).__name__}, not a codebook")


def fitted_prior(ckpt_path: str, model: Any) -> PixelCNNSampler:
    """The PixelCNN prior that ``vae-sample sampler=pixelcnn`` fitted for the checkpoint
    ``ckpt_path`` and saved beside it, with the options it was fitted with (checked as a
    sampler's options are; the file names no code). Refused (``ConfigError``) when there is none
    or it was fitted for another checkpoint."""
    from vae_lightning.errors import ConfigError
    from vae_lightning.samplers import digest, fitted_path, load, read

    if (why := not_code_maps(model)) is not None:  # "fit it first" would be refused
        raise ConfigError(f"eval.fitted_prior=pixelcnn: {why}; leave eval.fitted_prior out "
                          "(null).")
    path = fitted_path(ckpt_path, "pixelcnn")
    fit = ("fit it first: "
           + command("vae-sample", override("ckpt_path", ckpt_path), "sampler=pixelcnn"))
    if not path.is_file():
        raise ConfigError(f"eval.fitted_prior=pixelcnn: no PixelCNN prior is saved for "
                          f"{ckpt_path} ({path}); {fit}.")
    options = read(path).get("options")
    try:  # the file's options, untrusted: any a PixelCNNSampler refuses is the file's fault
        sampler = PixelCNNSampler(**options) if isinstance(options, dict) else None
        why = "it holds no options" if sampler is None else None
    except (TypeError, ValueError) as err:  # an unknown option, or one out of range
        sampler, why = None, f"its options are not a PixelCNN's: {str(err).rstrip('.')}"
    if sampler is not None:
        try:  # a map not the model's (a file fitted as [5, 7] before check required [7, 5])
            why = sampler.check(model)
        except ValueError as err:
            why = f"its options are not the model's: {str(err).rstrip('.')}"
        why = why or load(sampler, "pixelcnn", path, digest(ckpt_path), model.latent)
    if why is not None:
        raise ConfigError(f"eval.fitted_prior=pixelcnn: the PixelCNN prior {path} cannot be "
                          f"used ({why}); {fit} refit=true.")
    return sampler


def prior_bound(model: Parts, prior: PixelCNNSampler, x: Tensor) -> Bound:
    """The VQ-VAE's bound on log p(x) per image of ``x`` with the fitted ``prior`` over code maps
    in place of the uniform one: E_q[log p(x|z_q)] and KL(q || p) = -log p(k(x)) (q one-hot)."""
    z = model.encoder.location(model.encoder(x))
    return Bound(model.decoder(z).log_prob(x), -prior.log_prob(z.cpu()).to(z.device))
