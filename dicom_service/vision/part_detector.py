"""Stage 1 of seed 002: implant design-part detection with a ViT, an FPN and Mask R-CNN.

The pre-trained (MDE, MAE or random) :class:`~dicom_service.vision.vit.ViTEncoder`
gives one stride-16 feature map. As in ViTDet's simple feature pyramid, deconvolutions
and pooling turn it into stride 4, 8, 16 and 32 maps; torchvision's FPN and Mask R-CNN
heads (boxes, classes, masks of design parts) sit on top. Images are single-channel
radiographs of the encoder's fixed size (416×416 by default); larger images are tiled
or letterboxed by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from dicom_service.vision.vit import ViTEncoder

#: Stage-1 classes (index 0 is background, as torchvision expects).
PART_CLASSES: tuple[str, ...] = ("background", "coronal", "middle", "apical")


class SimpleFeaturePyramid(nn.Module):
    """ViT tokens → ``{"0": s4, "1": s8, "2": s16, "3": s32, "pool": s64}`` FPN maps.

    Parameters
    ----------
    encoder : ViTEncoder
        Patch size 16 (stride 16 tokens).
    out_channels : int
        Channels of every pyramid level.
    """

    def __init__(self, encoder: ViTEncoder, out_channels: int = 128) -> None:
        super().__init__()
        if encoder.config.patch != 16:
            raise ValueError("the simple feature pyramid expects patch 16")
        dim = encoder.config.dim
        self.encoder = encoder
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
        self.up8 = nn.ConvTranspose2d(dim, dim // 2, 2, 2)
        self.down32 = nn.MaxPool2d(2)
        self.fpn = FeaturePyramidNetwork([dim // 4, dim // 2, dim, dim], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, C, H, W)`` → ordered feature maps, finest first."""
        s16 = self.encoder.feature_map(images)
        levels = OrderedDict([("0", self.up4(s16)), ("1", self.up8(s16)), ("2", s16),
                              ("3", self.down32(s16))])
        return self.fpn(levels)


@dataclass(frozen=True)
class DetectorConfig:
    """Size of the detection neck and heads (stored in a bundle's ``config.json``).

    The defaults are a CPU-sized Mask R-CNN: FPN of 128 channels, a 256-wide box head,
    a two-layer 64-channel mask head and 128 sampled RoIs per image. torchvision's
    defaults (``representation=1024``, ``mask_layers=(256,) * 4``, ``box_batch=512``)
    are what seed 002's ViT-B detector would use on a GPU.
    """

    num_classes: int = len(PART_CLASSES)
    fpn_channels: int = 128
    representation: int = 256
    mask_layers: tuple[int, ...] = (64, 64)
    box_batch: int = 128
    rpn_batch: int = 128
    detections_per_image: int = 30


def build_part_detector(encoder: ViTEncoder, config: DetectorConfig | None = None) -> MaskRCNN:
    """Mask R-CNN for implant design parts on a ViT backbone.

    Parameters
    ----------
    encoder : ViTEncoder
        Initialised randomly, or with MDE/MAE pre-trained weights.
    config : DetectorConfig, optional
        Neck and head sizes; :class:`DetectorConfig` defaults when omitted.

    Returns
    -------
    MaskRCNN
        torchvision model: in training mode ``model(images, targets)`` returns losses;
        in eval mode ``model(images)`` returns per image ``boxes`` (x0, y0, x1, y1),
        ``labels``, ``scores`` and ``masks``. Images are ``(1, H, W)`` float in [0, 1].
        Its ``part_config`` attribute is the :class:`DetectorConfig` used.
    """
    cfg = config or DetectorConfig()
    size = encoder.config.img_size
    backbone = SimpleFeaturePyramid(encoder, cfg.fpn_channels)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    box_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    box_head = TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation)
    box_predictor = FastRCNNPredictor(cfg.representation, cfg.num_classes)
    mask_head = MaskRCNNHeads(cfg.fpn_channels, list(cfg.mask_layers), 1)
    mask_predictor = MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_layers[-1], cfg.num_classes)
    model = MaskRCNN(
        backbone, num_classes=None, min_size=size, max_size=size,
        image_mean=[0.5] * encoder.config.in_chans, image_std=[0.25] * encoder.config.in_chans,
        rpn_anchor_generator=anchors, box_roi_pool=box_pool, mask_roi_pool=mask_pool,
        box_head=box_head, box_predictor=box_predictor, mask_head=mask_head, mask_predictor=mask_predictor,
        rpn_batch_size_per_image=cfg.rpn_batch, box_batch_size_per_image=cfg.box_batch,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300,
        box_detections_per_img=cfg.detections_per_image,
    )
    model.part_config = cfg  # read back by the bundle writer
    return model
