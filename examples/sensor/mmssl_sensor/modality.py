"""A 3-axis motion sensor (an accelerometer, as ImageBind's IMU) as an mmssl modality:
its options (config.py) and three parts, each in a module of its own (encoder.py,
processor.py, renderer.py), named together here.

Raw item: a float array [time, channels] (a window of a recording, a ``.npy`` file, or
a ``.csv`` file with one column per channel). Sample: a dict with ``signal``
[channels, length], cropped or zero-padded to ``length`` samples, and ``valid`` [length]
(False on padding). Encoder: the window cut into patches of ``patch`` samples over all
channels, a linear patch embedding, a timm transformer, and the mean over the patches
that hold data; it hides patches under a ``patch_mask`` (masked or forecast modeling).

The embedded world: four motions along or about one of three axes (12 classes), gentle
or strong, played in one to four bursts (the world's count, shared with the image
dots, the audio notes and the graph triangles).
"""

from __future__ import annotations

from mmssl_sensor.config import SensorConfig
from mmssl_sensor.encoder import SensorEncoder
from mmssl_sensor.processor import SensorProcessor
from mmssl_sensor.renderer import SENSOR_SPACE, SensorRenderer, render_motion
from modalities.base import Modality


class SensorModality(Modality):
    """Motion sensor windows: ``SensorEncoder``, ``SensorProcessor``, ``SensorRenderer``."""

    Config = SensorConfig
    Encoder = SensorEncoder
    Processor = SensorProcessor
    Renderer = SensorRenderer


__all__ = ["SENSOR_SPACE", "SensorConfig", "SensorEncoder", "SensorModality", "SensorProcessor", "SensorRenderer",
           "render_motion"]
