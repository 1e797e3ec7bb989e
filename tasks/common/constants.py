"""Constants shared by the data modules of several tasks: normalisation statistics, class names.

Mean / std are per channel, of pixels scaled to [0, 1], as ``transforms.Normalize`` takes them.
"""

from __future__ import annotations

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "VOC_CLASSES",
    "IGNORE_INDEX",
]

# ImageNet's statistics: the usual normalisation of ImageNet, VOC and COCO images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Of the 60000 official training images at their native 28 x 28.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

#: The 20 PASCAL VOC object classes in the usual (alphabetical) order; segmentation puts
#: "background" in front of them.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: The label of pixels that no loss or metric counts (VOC's object borders, crowds, padding).
IGNORE_INDEX = 255
