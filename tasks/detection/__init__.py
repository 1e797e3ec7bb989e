"""Object detection: YOLOv2-style models on the shared quantized backbones (``yolo.py``), the
YOLOv2 loss (``loss.py``), the Lightning task module with decoding, NMS and mAP (``module.py``),
the shapes / VOC / COCO data (``data.py``) and k-means anchors (``anchors.py``)."""
