"""The plugin API: register a backbone, a dataset source or an embedding space, from cbir's own code or yours.

A plugin is a module or a ``.py`` file named in the config's ``plugins`` list; it imports what it
needs from here and registers its entries when imported (docs, "Plugin API")::

    from cbir.extend import Backbone, register_backbone

    register_backbone(Backbone(name="my_cnn", build=..., trunk=..., ...))

Everything a plugin needs is named here, so the package's internals can move without breaking
plugins. Importing this module does not load torch.
"""

from __future__ import annotations

from cbir.data.manifest import DatasetError, Manifest, image_record, image_records, make_manifest
from cbir.data.sources import SOURCES, get_source, register_source
from cbir.data.sources.source import FETCH_KEYS, Source, data_dir
from cbir.extraction.registry import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    efficientnet_lite_backbone,
    get_backbone,
    register_backbone,
    torchvision_backbone,
)
from cbir.fitting.spaces import SPACES, SpaceSpec, Step, register_space

__all__ = [
    "BACKBONES",
    "FETCH_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCES",
    "SPACES",
    "Backbone",
    "DatasetError",
    "Manifest",
    "Source",
    "SpaceSpec",
    "Step",
    "data_dir",
    "efficientnet_lite_backbone",
    "get_backbone",
    "get_source",
    "image_record",
    "image_records",
    "make_manifest",
    "register_backbone",
    "register_source",
    "register_space",
    "torchvision_backbone",
]
