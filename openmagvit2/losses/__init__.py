"""Losses of the tokenizer recipe: PatchGAN discriminator, GAN losses, LeCam, LPIPS, and `TokenizerLoss`."""
from openmagvit2.losses.adversarial import (adaptive_generator_weight, adopt_weight, hinge_d_loss,
                                            non_saturating_g_loss)
from openmagvit2.losses.config import LossConfig
from openmagvit2.losses.discriminator import (NLayerDiscriminator, build_discriminator, init_discriminator_weights,
                                              released_discriminator_state)
from openmagvit2.losses.discriminator3d import NLayerDiscriminator3D
from openmagvit2.losses.lecam import LeCamEMA
from openmagvit2.losses.perceptual import build_perceptual_loss, freeze
from openmagvit2.losses.tokenizer_loss import TokenizerLoss

__all__ = [
    "LeCamEMA", "LossConfig", "NLayerDiscriminator", "NLayerDiscriminator3D", "TokenizerLoss",
    "adaptive_generator_weight", "adopt_weight",
    "build_discriminator", "build_perceptual_loss", "freeze", "hinge_d_loss", "init_discriminator_weights",
    "non_saturating_g_loss", "released_discriminator_state",
]
