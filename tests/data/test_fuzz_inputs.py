"""Generated input (hypothesis) for what reads untrusted bytes: uploads, manifests, configs.

- the upload decoding of `cbir serve` (``decode_image``, through ``cbir.data.images.load_rgb_image``):
  random bytes and damaged JPEG/PNG/GIF/BMP/WebP/TIFF/PPM files either decode to an RGB image
  within the pixel limit or raise an ``UploadError`` with a 4xx, never anything else; as files,
  ``load_rgb_image`` decodes exactly those that the manifest's check (``unreadable_reason``) accepts;
- ``cbir.data.manifest.read_manifest``: a damaged manifest is read or refused with a ``DatasetError``;
- ``cbir.pipeline.config.validate_config``: a config with any key changed, removed or added is validated
  or refused with a ``ConfigError``.

Each property runs a bounded number of examples (CBIR_FUZZ_INPUT_EXAMPLES, default 150); with
CBIR_FUZZ_SECONDS it repeats with fresh random seeds until that many seconds have passed
(`benchmarks/fuzz.py`). The inputs that crashed before are regression tests below.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import REPO, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged files, as it should
EXAMPLES = int(os.environ.get("CBIR_FUZZ_INPUT_EXAMPLES", "150"))
SECONDS = float(os.environ.get("CBIR_FUZZ_SECONDS", "0"))
MAX_PIXELS = 1_000_000
SCHEMA = REPO / "config" / "schema.yaml"


def fuzz(name: str, strategy: st.SearchStrategy, check: Callable[[Any], None], examples: int = EXAMPLES) -> int:
    """Run ``check`` on generated examples: ``examples`` of them, repeated until CBIR_FUZZ_SECONDS have passed."""
    count = 0

    @given(strategy)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(value: Any) -> None:
        nonlocal count
        count += 1
        check(value)

    started = time.monotonic()
    run()
    while time.monotonic() - started < SECONDS:
        run()  # a new random seed each time
    path = os.environ.get("CBIR_FUZZ_REPORT")
    if path:
        with Path(path).open("a") as f:
            f.write(json.dumps({"test": name, "examples": count, "seconds": time.monotonic() - started}) + "\n")
    return count


# --- image bytes ------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def seed_images() -> list[bytes]:
    """Small valid files of every upload format and the modes that take other paths through decoding."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    grey16 = Image.fromarray(rng.integers(0, 65535, size=(12, 16), dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotated
    return [
        encoded(rgb, "JPEG", quality=80),
        encoded(rgb, "JPEG", exif=exif.tobytes()),
        encoded(rgb.convert("CMYK"), "JPEG"),
        encoded(rgb.convert("L"), "JPEG", progressive=True),
        encoded(rgb, "PNG"),
        encoded(rgba, "PNG"),
        encoded(palette, "PNG"),
        encoded(grey16, "PNG"),
        encoded(rgb.convert("LA"), "PNG"),
        encoded(palette, "GIF"),
        encoded(rgb, "BMP"),
        encoded(rgba, "WEBP", quality=80),
        encoded(rgb, "WEBP", lossless=True),
        encoded(rgb, "TIFF"),
        encoded(grey16, "TIFF", compression="tiff_lzw"),
        encoded(rgb.convert("F"), "TIFF"),
        encoded(rgb, "PPM"),
    ]


SEEDS = seed_images()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A valid seed with bytes replaced (mostly in the header), cut short, or with bytes inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["replace-header", "replace", "truncate", "insert"]))
        if not data:
            break
        if kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
            continue
        limit = min(len(data), 96) if kind == "replace-header" else len(data)
        at = draw(st.integers(0, limit - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if kind == "insert":
            data[at:at] = chunk
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


MAGIC = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0", b"MM\0*", b"P6\n"]
upload_bytes = st.one_of(
    damaged_images(),
    st.binary(max_size=512),
    st.tuples(st.sampled_from(MAGIC), st.binary(max_size=256)).map(lambda parts: parts[0] + parts[1]),
)


def check_decode(data: bytes) -> None:
    from cbir.serve.uploads import UploadError, decode_image

    try:
        image = decode_image(data, MAX_PIXELS).image
    except UploadError as error:
        assert error.status_code in (400, 413, 422), error.status_code
        assert error.message
        return
    assert image.mode == "RGB" and image.width * image.height <= MAX_PIXELS


def test_upload_decoding_refuses_any_bad_bytes_with_a_4xx():
    assert fuzz("decode_image (upload bytes)", upload_bytes, check_decode) >= EXAMPLES


def check_file(folder: Path) -> Callable[[bytes], None]:
    """The same bytes as a file: the manifest's check (``unreadable_reason``) agrees with ``load_rgb_image``."""
    from cbir.data.images import load_rgb_image, unreadable_reason

    path = folder / "image.png"

    def check(data: bytes) -> None:
        path.write_bytes(data)
        reason = unreadable_reason(path)
        try:
            image = load_rgb_image(path)
        except Exception:  # any Exception is fine here: every caller catches it and reports the file
            assert reason is not None
            return
        assert reason is None and image.mode == "RGB"

    return check


def test_load_rgb_image_and_the_manifest_check_agree_on_any_file(tmp_path):
    assert fuzz("load_rgb_image (image files)", upload_bytes, check_file(tmp_path)) >= EXAMPLES


def test_the_seed_images_decode():
    from cbir.serve.uploads import decode_image

    for data in SEEDS:
        assert decode_image(data, MAX_PIXELS).image.mode == "RGB"


# --- manifests --------------------------------------------------------------------------------

MANIFEST = (
    "id,path,label,class_name,width,height,bytes,sha256\n"
    "red/000.png,data/tiny/red/000.png,0,red,32,32,2950,ab12\n"
    "green/001.png,data/tiny/green/001.png,1,green,32,32,2948,cd34\n"
    'blue/002.png,"data/tiny/blue/002,x.png",2,blue,32,32,2951,ef56\n'
)


@st.composite
def damaged_manifests(draw: st.DrawFn) -> bytes:
    text = bytearray(MANIFEST.encode())
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["replace", "delete", "insert"]))
        chunk = draw(st.one_of(st.sampled_from([b",", b'"', b"\n", b"\r", b"..", b"/", b"\0", b"\xff", b"nan"]),
                               st.binary(max_size=6), st.text(max_size=6).map(str.encode)))  # fmt: skip
        if kind == "insert":
            text[at:at] = chunk
        elif kind == "delete":
            del text[at : at + draw(st.integers(1, 12))]
        else:
            text[at : at + len(chunk)] = chunk
    return bytes(text)


manifest_bytes = st.one_of(damaged_manifests(), st.binary(max_size=300), st.text(max_size=300).map(str.encode))


def check_manifest(folder: Path) -> Callable[[bytes], None]:
    from cbir.data.manifest import MANIFEST_COLUMNS, DatasetError, read_manifest

    path = folder / "manifest.csv"

    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            frame = read_manifest(path)
        except DatasetError as error:
            assert str(path) in str(error)
            return
        assert set(MANIFEST_COLUMNS) <= set(frame.columns)

    return check


def test_a_damaged_manifest_is_read_or_refused_with_a_dataset_error(tmp_path):
    assert fuzz("read_manifest (damaged CSV)", manifest_bytes, check_manifest(tmp_path)) >= EXAMPLES


# --- configs ----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def key_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += key_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths += key_paths(item, (*prefix, i))
    return paths


def base_configs() -> list[dict[str, Any]]:
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return [tiny_config(Path("/nonexistent/tiny")), default]


@st.composite
def changed_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config with a few keys replaced by any JSON value, removed, or added (never 'plugins',
    which would import modules by name)."""
    config = copy.deepcopy(draw(st.sampled_from(base_configs())))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(key_paths(config)))
        parent: Any = config
        for part in path[:-1]:
            parent = parent[part]
        kind = draw(st.sampled_from(["replace", "remove", "add"]))
        if not path or kind == "add":
            target = parent[path[-1]] if path else config
            if isinstance(target, dict):
                target[draw(st.text(max_size=8).filter(lambda k: k != "plugins"))] = draw(JSON_VALUES)
        elif kind == "remove":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    config.pop("plugins", None)
    return config


def check_config(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    from cbir.pipeline.config import ConfigError, validate_config

    def check(config: dict[str, Any]) -> None:
        try:
            validated = validate_config(config, schema)
        except ConfigError as error:
            assert str(error)
            return
        assert isinstance(validated, dict) and "grid" in validated

    return check


def test_a_changed_config_is_validated_or_refused_with_a_config_error():
    from cbir.pipeline.config import load_schema

    schema = load_schema(SCHEMA)
    assert fuzz("validate_config (changed keys)", changed_configs(), check_config(schema)) >= EXAMPLES


@pytest.mark.parametrize("config", base_configs(), ids=["tiny", "default"])
def test_the_base_configs_are_valid(config):
    from cbir.pipeline.config import load_schema, validate_config

    validate_config(config, load_schema(SCHEMA))


# --- what the fuzzing found, kept as regression tests ---------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "cannot be read as a CSV table (EmptyDataError"),  # pandas' EmptyDataError escaped
        (b"\xff\xfeid,path\n", "cannot be read as a CSV table (UnicodeDecodeError"),  # not UTF-8
        (
            MANIFEST.encode().replace(b'"data/tiny/blue/002,x.png",', b'"data/tiny/blue/002,x.png,'),
            "cannot be read as a CSV table (ParserError",
        ),  # an unclosed quote
        (MANIFEST.encode().replace(b"red/000.png,data", b",data"), "row 1: the id is empty"),  # TypeError before
    ],
    ids=["empty", "not-utf8", "unclosed-quote", "empty-id"],
)
def test_manifest_crashes_found_by_fuzzing_are_dataset_errors(tmp_path, data, message):
    from cbir.data.manifest import DatasetError, read_manifest

    path = tmp_path / "manifest.csv"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=re.escape(message)):
        read_manifest(path)
