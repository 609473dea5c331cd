"""PIX2PIX, CYCLEGAN and PIX2PIXHD: adversarial image translation on the engine's multi-network hook.

All train several networks with their own Adam (lr 2e-4, beta1 0.5, as the papers) through
`configure_optimizers` / `training_step` (see gpjobs.training.multi_network). Generators work in the
"unit" space: 0..1 scaled band values mapped to -1..1 (tanh outputs). The validation loss is the
reconstruction L1 on 0..1 values (paired target for Pix2Pix, cycle reconstruction for CycleGAN), which
early stopping and best-epoch selection watch; the adversarial losses are recorded per epoch as
`train_*` history entries. FID is not reported: it needs Inception-v3 ImageNet weights, which this
offline server cannot download and the task's weights directory does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpjobs.training.models.gan_nets import (
    GanLoss,
    ImagePool,
    LocalEnhancer,
    MultiscaleDiscriminator,
    PatchDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    init_gan_weights,
    patch_layers,
    unet_depth,
)
from gpjobs.training.models.image_quality import QualityMeter
from gpjobs.training.models.translation import FeatureLoss, TranslationFamily, vgg_feature_loss

ADAM_BETAS = (0.5, 0.999)
CYCLE_LAMBDA = 10.0  # CycleGAN lambda_A = lambda_B (models.md §1A)
IDENTITY_LAMBDA = 0.5  # x CYCLE_LAMBDA


class _Unit(nn.Module):
    """Normalised model input -> unit space (-1..1 over the export's band range), as buffers so the
    traced TorchScript module takes the same normalised chips as every other package."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x * self.std + self.mean) * 2 - 1).clamp(-1, 1)


class Pix2PixNet(nn.Module):
    def __init__(self, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised chip -> translated chip in unit space."""
        return self.generator(x)


class CycleGANNet(nn.Module):
    def __init__(self, g_ab: nn.Module, g_ba: nn.Module, d_a: nn.Module, d_b: nn.Module, unit: _Unit) -> None:
        super().__init__()
        self.g_ab, self.g_ba, self.d_a, self.d_b = g_ab, g_ba, d_a, d_b
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised chip of domain A -> domain B, unit space."""
        return self.g_ab(self.unit(x))


class _GanFamily(TranslationFamily):
    default_learning_rate = 2e-4
    cycle_momentum = False  # Adam beta1 stays 0.5

    def _unit(self) -> _Unit:
        return _Unit(self.scale.mean, self.scale.std)

    def unit(self, normalised: torch.Tensor) -> torch.Tensor:
        return (self.scale.to01(normalised) * 2 - 1).clamp(-1, 1)

    @staticmethod
    def to01(unit: torch.Tensor) -> torch.Tensor:
        return (unit.float() + 1) / 2

    def output01(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return self.to01(model(images))

    def model_parameters(self) -> dict[str, Any]:
        return {"backend": "pytorch", "n_gen_filters": self.ngf, "n_dscr_filters": self.ndf}

    @property
    def ngf(self) -> int:
        return int(self.args.get("n_gen_filters") or 64)

    @property
    def ndf(self) -> int:
        return int(self.args.get("n_dscr_filters") or 64)

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields["SupportsVariableTileSize"] = self.supports_variable_tile_size
        return fields


class Pix2PixFamily(_GanFamily):
    """pix2pix (Isola et al.): U-Net generator + conditional PatchGAN, G loss = GAN + lambda_l1 * L1."""

    emd_model_type = "Pix2Pix"
    emd_model_configuration = "_pix2pix"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.lambda_l1 = float(self.args.get("lambda_l1") or 100.0)
        self.gan_loss = GanLoss(lsgan=False)  # pix2pix uses the original (BCE) GAN objective
        self.perceptual = None
        if self.args.get("perceptual_loss"):
            self.perceptual = vgg_feature_loss(self.weights, self.say, "Pix2Pix perceptual_loss")
            if self.perceptual is None:
                self.say(
                    "warning",
                    "perceptual_loss=true needs VGG16_BN ImageNet weights (vgg16_bn-6c64b313.pth) "
                    "in the weights directory; training without the perceptual term",
                )

    def build(self) -> nn.Module:
        size = self.info.chip_size
        generator = UnetGenerator(self.in_channels, self.in_channels, unet_depth(size), self.ngf, "batch")
        discriminator = PatchDiscriminator(self.in_channels * 2, self.ndf, patch_layers(size), "batch")
        init_gan_weights(generator)
        init_gan_weights(discriminator)
        return Pix2PixNet(generator, discriminator)

    def configure_optimizers(self, model: nn.Module, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": torch.optim.Adam(model.generator.parameters(), lr=lr, betas=ADAM_BETAS),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=ADAM_BETAS),
        }

    def _generator_loss(
        self, model: nn.Module, cond: torch.Tensor, fake: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        adversarial = self.gan_loss(model.discriminator(torch.cat([cond, fake], 1)), True)
        l1 = (fake.float() - target).abs().mean()
        loss = adversarial + self.lambda_l1 * l1
        parts = {"g_gan": adversarial, "l1": l1}
        if self.perceptual is not None:
            if next(self.perceptual.parameters()).device != fake.device:
                self.perceptual.to(fake.device)
            term = self.perceptual.per_sample(
                self.scale.from01(self.to01(fake)), self.scale.from01(self.to01(target))
            ).mean()
            loss = loss + term
            parts["perceptual"] = term
        return loss, parts

    def _batch(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        source, target = batch
        source = source.to(device, non_blocking=True)
        return source, self.unit(source), self.unit(target.to(device, non_blocking=True))

    def training_step(
        self, model: nn.Module, batch: Any, device: torch.device, optimizers: dict, scaler: Any
    ) -> dict[str, torch.Tensor]:
        source, cond, target = self._batch(batch, device)
        fake = model.generator(source)
        # discriminator: real pairs -> 1, generated pairs -> 0 (generator detached)
        opt_d = optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        d_loss = 0.5 * (
            self.gan_loss(model.discriminator(torch.cat([cond, fake.detach()], 1)), False)
            + self.gan_loss(model.discriminator(torch.cat([cond, target], 1)), True)
        )
        scaler.scale(d_loss).backward()
        scaler.step(opt_d)
        # generator: fool the updated discriminator and stay close to the target
        opt_g = optimizers["generator"]
        opt_g.zero_grad(set_to_none=True)
        g_loss, parts = self._generator_loss(model, cond, fake, target)
        scaler.scale(g_loss).backward()
        scaler.step(opt_g)
        return {"loss": g_loss.detach(), "d": d_loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """The generator objective alone (the engine uses training_step; kept for single-loss callers)."""
        source, cond, target = self._batch(batch, device)
        return self._generator_loss(model, cond, model.generator(source), target)[0]

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        meter = QualityMeter()
        total, count = torch.zeros((), device=device), 0
        for batch in loader:
            source, _, target = self._batch(batch, device)
            fake01, target01 = self.to01(model.generator(source)), self.to01(target)
            total += (fake01 - target01).abs().flatten(1).mean(1).sum()
            meter.update("", fake01, target01)
            meter.add_count(source.shape[0])
            count += source.shape[0]
        return float(total) / max(count, 1), meter.result()

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "perceptual_loss": bool(self.args.get("perceptual_loss")),
            "lambda_l1": self.lambda_l1,
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {**super().emd_fields(metrics), **self.metric_strings(metrics, ("PSNR", "SSIM"))}

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        source, target = batch
        model.eval()
        with torch.no_grad():
            fake01 = self.to01(model.generator(source))
        self.show_pairs(
            [("input", self.scale.to01(source)), ("target (images2)", self.scale.to01(target)), ("prediction", fake01)],
            path,
        )


class CycleGANFamily(_GanFamily):
    """CycleGAN (Zhu et al.): two ResNet generators, two PatchGANs, LSGAN, cycle 10, identity 0.5 x 10."""

    emd_model_type = "CycleGAN"
    emd_model_configuration = "_cyclegan"
    supports_variable_tile_size = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gan_loss = GanLoss(lsgan=bool(self.args.get("lsgan", True)))
        self.pools = (ImagePool(50), ImagePool(50))

    def build(self) -> nn.Module:
        c, blocks, size = self.in_channels, int(self.args.get("gen_blocks") or 9), self.info.chip_size
        nets = [
            ResnetGenerator(c, c, blocks, self.ngf),
            ResnetGenerator(c, c, blocks, self.ngf),
            PatchDiscriminator(c, self.ndf, patch_layers(size), "instance"),
            PatchDiscriminator(c, self.ndf, patch_layers(size), "instance"),
        ]
        for net in nets:
            init_gan_weights(net)
        return CycleGANNet(*nets, self._unit())

    def configure_optimizers(self, model: nn.Module, lr: float) -> dict[str, torch.optim.Optimizer]:
        generators = list(model.g_ab.parameters()) + list(model.g_ba.parameters())
        discriminators = list(model.d_a.parameters()) + list(model.d_b.parameters())
        return {
            "generators": torch.optim.Adam(generators, lr=lr, betas=ADAM_BETAS),
            "discriminators": torch.optim.Adam(discriminators, lr=lr, betas=ADAM_BETAS),
        }

    def _units(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = batch
        return self.unit(a.to(device, non_blocking=True)), self.unit(b.to(device, non_blocking=True))

    def _generator_losses(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor):
        fake_b, fake_a = model.g_ab(a), model.g_ba(b)
        cycle = (model.g_ba(fake_b) - a).abs().mean() + (model.g_ab(fake_a) - b).abs().mean()
        identity = (model.g_ab(b) - b).abs().mean() + (model.g_ba(a) - a).abs().mean()
        adversarial = self.gan_loss(model.d_b(fake_b), True) + self.gan_loss(model.d_a(fake_a), True)
        loss = adversarial + CYCLE_LAMBDA * cycle + CYCLE_LAMBDA * IDENTITY_LAMBDA * identity
        return loss, fake_a, fake_b, {"g_gan": adversarial, "cycle": cycle, "identity": identity}

    def training_step(
        self, model: nn.Module, batch: Any, device: torch.device, optimizers: dict, scaler: Any
    ) -> dict[str, torch.Tensor]:
        a, b = self._units(batch, device)
        # generators first (the discriminators are only read), then the discriminators on pooled fakes
        opt_g = optimizers["generators"]
        opt_g.zero_grad(set_to_none=True)
        g_loss, fake_a, fake_b, parts = self._generator_losses(model, a, b)
        scaler.scale(g_loss).backward()
        scaler.step(opt_g)
        opt_d = optimizers["discriminators"]
        opt_d.zero_grad(set_to_none=True)
        pooled_a, pooled_b = self.pools[0].query(fake_a), self.pools[1].query(fake_b)
        d_a = 0.5 * (self.gan_loss(model.d_a(a), True) + self.gan_loss(model.d_a(pooled_a), False))
        d_b = 0.5 * (self.gan_loss(model.d_b(b), True) + self.gan_loss(model.d_b(pooled_b), False))
        scaler.scale(d_a + d_b).backward()
        scaler.step(opt_d)
        return {
            "loss": g_loss.detach(),
            "d_a": d_a.detach(),
            "d_b": d_b.detach(),
            **{k: v.detach() for k, v in parts.items()},
        }

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """The generators' objective alone (the engine uses training_step; kept for single-loss callers)."""
        a, b = self._units(batch, device)
        return self._generator_losses(model, a, b)[0]

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        meter = QualityMeter()
        total, count = torch.zeros((), device=device), 0
        for batch in loader:
            a, b = self._units(batch, device)
            rec_a, rec_b = model.g_ba(model.g_ab(a)), model.g_ab(model.g_ba(b))
            a01, b01, rec_a01, rec_b01 = self.to01(a), self.to01(b), self.to01(rec_a), self.to01(rec_b)
            total += ((rec_a01 - a01).abs().flatten(1).mean(1) + (rec_b01 - b01).abs().flatten(1).mean(1)).sum()
            meter.update("_cycle_A", rec_a01, a01)
            meter.update("_cycle_B", rec_b01, b01)
            meter.add_count(a.shape[0])
            count += a.shape[0]
        return float(total) / max(count, 1), meter.result()

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "gen_blocks": int(self.args.get("gen_blocks") or 9),
            "lsgan": bool(self.args.get("lsgan", True)),
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            **super().emd_fields(metrics),
            "n_channel_rev": self.in_channels,
            **self.metric_strings(metrics, ("PSNR_cycle_A", "SSIM_cycle_A", "PSNR_cycle_B", "SSIM_cycle_B")),
        }

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        a, b = batch
        model.eval()
        with torch.no_grad():
            ua, ub = self.unit(a), self.unit(b)
            fake_b = model.g_ab(ua)
            fake_a = model.g_ba(ub)
        self.show_pairs(
            [("A", self.to01(ua)), ("A -> B", self.to01(fake_b)), ("B", self.to01(ub)), ("B -> A", self.to01(fake_a))],
            path,
        )


def vgg19_loss(weights, say) -> FeatureLoss | None:
    """pix2pixHD's VGGLoss (VGG19 relu1_1..relu5_1, weights 1/32..1) when vgg19-dcbb9e9d.pth is present."""
    path = weights.find_file("VGG19") if weights.skip_reason is None else None
    if path is None:
        return None
    try:
        import torchvision

        vgg = torchvision.models.vgg19(weights=None)
        vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        say("warning", f"Pix2PixHD vgg_loss: {path.name} could not be used ({exc})")
        return None
    cuts = (0, 2, 7, 12, 21, 30)
    layers = nn.ModuleList(vgg.features[a:b] for a, b in zip(cuts, cuts[1:]))
    say("info", f"Pix2PixHD vgg_loss: VGG19 features ({path.name})")
    return FeatureLoss(layers, (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), gram=False, rgb_only=True, pixel=False)


class Pix2PixHDFamily(Pix2PixFamily):
    """pix2pixHD (Wang et al.): global generator (+ one local enhancer), two-scale PatchGANs, LSGAN,
    discriminator feature matching (lambda_feat), VGG19 perceptual loss, optional L1."""

    emd_model_type = "Pix2PixHD"
    emd_model_configuration = "_pix2pix_hd"
    SCALES = 2  # discriminators (pix2pixHD num_D)

    def __init__(self, *a: Any, **kw: Any) -> None:
        _GanFamily.__init__(self, *a, **kw)
        args = self.args
        self.lambda_l1 = float(args.get("lambda_l1") or 100.0) if args.get("l1_loss") else 0.0
        self.lambda_feat = float(args.get("lambda_feat") if args.get("lambda_feat") is not None else 10.0)
        self.gan_loss = GanLoss(lsgan=bool(args.get("lsgan", True)))
        self.perceptual = None
        if args.get("vgg_loss", True):
            self.perceptual = vgg19_loss(self.weights, self.say)
            if self.perceptual is None:
                self.say(
                    "warning",
                    "vgg_loss=true needs VGG19 ImageNet weights (vgg19-dcbb9e9d.pth) in the weights "
                    "directory; training without the VGG term",
                )
        self.local = str(args.get("gen_network") or "local") == "local" and int(args.get("n_local_enhancers", 1)) > 0
        if self.local and int(args.get("n_local_enhancers", 1)) > 1:
            self.say("warning", "n_local_enhancers > 1 is not implemented; using one local enhancer")

    def _global_downsamplings(self) -> int:
        wanted = int(self.args.get("n_downsample_global") or 4)
        size = min(self.info.chip_size) // (2 if self.local else 1)
        most = max(1, size.bit_length() - 1 - 2)  # keep the global bottleneck at >= 4 px
        if wanted > most:
            self.say(
                "info",
                f"n_downsample_global {wanted} is too deep for {min(self.info.chip_size)} px chips; using {most}",
            )
        return min(wanted, most)

    def build(self) -> nn.Module:
        c, norm = self.in_channels, str(self.args.get("norm") or "instance")
        down, blocks = self._global_downsamplings(), int(self.args.get("n_blocks_global") or 9)
        if self.local:
            local_blocks = int(self.args.get("n_blocks_local") or 3)
            generator: nn.Module = LocalEnhancer(c, c, self.ngf, down, blocks, local_blocks, norm)
        else:
            generator = ResnetGenerator(c, c, blocks, self.ngf, norm, down)
        discriminator = MultiscaleDiscriminator(
            c * 2, self.info.chip_size, self.ndf, int(self.args.get("n_layers_dscr") or 3), self.SCALES, norm
        )
        init_gan_weights(generator)
        init_gan_weights(discriminator)
        return Pix2PixNet(generator, discriminator)

    def _generator_loss(
        self, model: nn.Module, cond: torch.Tensor, fake: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fake_out = model.discriminator(torch.cat([cond, fake], 1))
        with torch.no_grad():
            real_out = model.discriminator(torch.cat([cond, target], 1))
        adversarial = sum(self.gan_loss(scale[-1], True) for scale in fake_out)
        matching = fake.new_zeros(())
        for fake_feats, real_feats in zip(fake_out, real_out):
            weight = self.lambda_feat / len(fake_out) / max(1, len(fake_feats) - 1)  # D_weights * feat_weights
            for f, r in zip(fake_feats[:-1], real_feats[:-1]):
                matching = matching + weight * (f.float() - r.float()).abs().mean()
        loss = adversarial + matching
        parts = {"g_gan": adversarial, "feat": matching}
        if self.perceptual is not None:
            if next(self.perceptual.parameters()).device != fake.device:
                self.perceptual.to(fake.device)
            vgg = (
                self.lambda_feat
                * self.perceptual.per_sample(
                    self.scale.from01(self.to01(fake)), self.scale.from01(self.to01(target))
                ).mean()
            )
            loss, parts["vgg"] = loss + vgg, vgg
        if self.lambda_l1:
            l1 = (fake.float() - target).abs().mean()
            loss, parts["l1"] = loss + self.lambda_l1 * l1, l1
        return loss, parts

    def training_step(
        self, model: nn.Module, batch: Any, device: torch.device, optimizers: dict, scaler: Any
    ) -> dict[str, torch.Tensor]:
        source, cond, target = self._batch(batch, device)
        fake = model.generator(source)
        opt_g = optimizers["generator"]
        opt_g.zero_grad(set_to_none=True)
        g_loss, parts = self._generator_loss(model, cond, fake, target)
        scaler.scale(g_loss).backward()
        scaler.step(opt_g)
        opt_d = optimizers["discriminator"]
        opt_d.zero_grad(set_to_none=True)
        fake_out = model.discriminator(torch.cat([cond, fake.detach()], 1))
        real_out = model.discriminator(torch.cat([cond, target], 1))
        d_loss = 0.5 * sum(self.gan_loss(f[-1], False) + self.gan_loss(r[-1], True) for f, r in zip(fake_out, real_out))
        scaler.scale(d_loss).backward()
        scaler.step(opt_d)
        return {"loss": g_loss.detach(), "d": d_loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def model_parameters(self) -> dict[str, Any]:
        keys = (
            "gen_network",
            "n_downsample_global",
            "n_blocks_global",
            "n_local_enhancers",
            "n_blocks_local",
            "norm",
            "lsgan",
            "n_layers_dscr",
            "lambda_feat",
            "lambda_l1",
            "vgg_loss",
            "l1_loss",
        )
        return {**_GanFamily.model_parameters(self), **{k: self.args.get(k) for k in keys}}


FAMILIES: dict[str, type] = {"PIX2PIX": Pix2PixFamily, "CYCLEGAN": CycleGANFamily, "PIX2PIXHD": Pix2PixHDFamily}
