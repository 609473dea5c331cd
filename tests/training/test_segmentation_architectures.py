"""DEEPLAB / PSPNET on dilated backbones (output stride 16, keep_dilation 8) and fastai's DynamicUnet decoder."""

from __future__ import annotations

import pytest
import torch

from gpjobs.training.models.decoders import DynamicUnetDecoder
from tests.training.test_pretrained import make_family

torch.set_num_threads(1)


def aspp_rates(head) -> list[int]:
    aspp = head[0]  # torchvision DeepLabHead: ASPP, conv, bn, relu, conv
    return [branch[0].dilation[0] for branch in list(aspp.convs)[1:-1]]


@pytest.mark.parametrize("keep, stride, rates", [(False, 16, [6, 12, 18]), (True, 8, [12, 24, 36])])
def test_deeplab_output_stride_and_aspp_rates(keep, stride, rates):
    messages: list = []
    family = make_family("DEEPLAB", "RESNET18", args={"keep_dilation": keep}, messages=messages)
    model = family.build()
    assert model.backbone.strides[-1] == stride and model.backbone.strides[-2] == min(stride, 16)
    assert aspp_rates(model.head) == rates
    params = family.model_parameters()
    assert params["output_stride"] == stride and params["atrous_rates"] == rates
    assert any(f"RESNET18 dilated to output stride {stride}" in text for _, text in messages)
    logits, aux = model.train().forward_train(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("keep, stride", [(False, 16), (True, 8)])
def test_pspnet_keep_dilation(keep, stride):
    family = make_family("PSPNET", "RESNET18", args={"keep_dilation": keep})
    model = family.build()
    assert model.backbone.strides[-1] == stride and family.model_parameters()["output_stride"] == stride
    assert model.eval()(torch.randn(1, 3, 40, 40)).shape == (1, 3, 40, 40)


@pytest.mark.slow  # seconds of optimisation
def test_fastai_dynamic_unet_decoder_learns_a_step():
    from gpjobs.training.backbones import build_backbone
    from gpjobs.training.models.decoders import SegmentationNet

    messages: list = []
    family = make_family("UNET", "RESNET18", messages=messages)
    assert not isinstance(family.build().head, DynamicUnetDecoder)  # UNET keeps our decoder (see segmentation.py)
    assert any("gpjobs' light U-Net decoder" in text for _, text in messages)
    torch.manual_seed(0)  # the same initial weights whichever tests ran before
    backbone = build_backbone("RESNET18", 3)
    model = SegmentationNet(backbone, DynamicUnetDecoder(backbone.out_channels, backbone.strides, 3, 3))
    assert [i for i, _ in model.head.fastai_layers()] == [1, 3, 4, 5, 6, 7, 8, 10, 11]
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(5):
        loss = family.training_loss(model.train(), (images, masks), torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.eval()(torch.randn(1, 3, 36, 36)).shape == (1, 3, 36, 36)  # any chip size


def test_dilated_unet_decoder_skips_only_resolution_changes():
    # PSPNET's arcgis.learn U-Net over an output-stride-8 encoder hooks the stride-2 and stride-4 maps only
    decoder = DynamicUnetDecoder([64, 64, 128, 256, 512], [2, 4, 8, 8, 8], 3, 3)
    assert decoder.skips == [0, 1] and len(decoder.blocks) == 2
    feats = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip([64, 64, 128, 256, 512], [2, 4, 8, 8, 8])]
    assert decoder(feats, image=torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_unet_decoder_is_slim_and_packages_keep_the_layout_they_were_trained_with():
    """New UNET packages record ModelParameters.decoder = "slim" (256 at the deepest skip, halving to 32 at
    stride 2); a package without the key was trained with the wide layout, and fine-tuning from it or rebuilding
    it builds that layout, so every tensor of its weights fits."""
    slim = make_family("UNET", "RESNET18")
    slim_model = slim.build()
    assert [b.convs[0][0].out_channels for b in slim_model.head.blocks] == [256, 128, 64, 32]
    assert slim.model_parameters()["decoder"] == "slim"

    old_emd = {"ModelParameters": {"backbone": "resnet18", "backend": "pytorch"}, "Gpjobs": {"task": "x"}}
    wide = make_family("UNET", "RESNET18")
    wide.fine_tune_from(old_emd)
    wide_model = wide.build()
    assert [b.convs[0][0].out_channels for b in wide_model.head.blocks] == [256, 128, 64, 64]
    assert wide.model_parameters()["decoder"] == "wide"
    rebuilt = make_family("UNET", "RESNET18")
    rebuilt.load_emd(old_emd)
    rebuilt.build().load_state_dict(wide_model.state_dict())  # strict: every tensor fits

    reloaded = make_family("UNET", "RESNET18")
    reloaded.load_emd({"ModelParameters": slim.model_parameters()})
    reloaded.build().load_state_dict(slim_model.state_dict())
