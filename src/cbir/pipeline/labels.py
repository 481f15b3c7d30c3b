"""``cbir index --labels auto``: whether a folder's sub-folders are classes, decided from its layout, with why.

A folder is taken as labelled (``folders``: each sub-folder a class) only when it looks like a
labelled dataset, as Corel's ``africans/ beaches/ buses/ ...``:

1. no sub-folder holding photos is named by a date (``2024``, ``2024-06``, ``2024_06_01``,
   ``2024-06-01 Paris``, ``June 2024``; and ``01`` … ``31`` under a folder named by a year or a
   month, as ``2024/06``), by a camera or an app (``DCIM``, ``100APPLE``, ``Camera``,
   ``Screenshots``, ``WhatsApp Images`` ...) or by what a photo library does with its photos
   (``Dups``, ``Export``, ``Edited``, ``Originals``, ``RAW`` ...): one such folder makes it a
   photo library, whatever the others are named;
2. no photo lies at the top of the folder, beside the sub-folders;
3. two or more sub-folders hold photos;
4. every photo lies directly in its sub-folder: a tree nested more than one level deep
   (``animals/cats/``) is not one class per folder.

Otherwise ``none``: the folder is one collection without labels. What :mod:`cbir.data.ignore`
ignores (videos, sidecars, OS files, hidden and thumbnail folders ...) plays no part. The decision
carries one line saying why, and how to ask for the other (``--labels folders``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cbir.data.ignore import list_folder

FOLDERS, NONE = "folders", "none"

_YEAR = r"(?:19|20)\d\d"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_SEP = r"[-_. ]?"
_MONTH_NAMES = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
    r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
# a name that starts with a date (an event after it is still a date folder: '2024-06-01 Paris'), or
# is a date written day first, or a month's name with or without its year
DATE_NAME = re.compile(
    rf"^(?:{_YEAR}(?:{_SEP}(?:0[1-9]|1[0-2])(?:{_SEP}(?:0[1-9]|[12]\d|3[01]))?)?(?!\d)"
    rf"|{_DAY}[-_.]{_MONTH}[-_.]{_YEAR}(?!\d)|{_MONTH}[-_.]{_YEAR}(?!\d)"
    rf"|(?:\d{{1,2}}[-_. ])?{_MONTH_NAMES}(?:[-_. ,]*{_YEAR})?$)",
    re.IGNORECASE,
)
# under a folder named by a date: the month's or the day's number alone ('2024/06', '2024/06/01')
DATE_PART = re.compile(rf"^(?:{_MONTH}|{_DAY})$")
# DCF camera folders (100APPLE, 101CANON, 100_FUJI, 100MSDCF), phones' and apps' folders
CAMERA_NAME = re.compile(r"^(?:[1-9]\d\d[a-z0-9_]{5}|photos from \d{4}|camera uploads?( from .*)?)$", re.IGNORECASE)
CAMERA_FOLDERS = frozenset({
    "dcim", "camera", "cameraroll", "camera roll", "screenshots", "screenshot", "screen shots", "screen recordings",
    "whatsapp images", "whatsapp video", "whatsapp animated gifs", "whatsapp documents", "whatsapp stickers",
    "telegram images", "telegram video", "instagram", "snapchat", "messenger", "facebook", "twitter", "viber",
    "wechat", "pictures", "my pictures", "photos", "my photos", "images", "downloads", "download", "bluetooth",
    "bursts", "live photos", "slo-mo", "time-lapse", "recents", "mobile uploads", "icloud photos",
    "google photos", "takeout", "photo library", "photos library", "all photos", "100media", "movies", "videos",
})  # fmt: skip
LIBRARY_FOLDERS = frozenset({
    "dups", "dupes", "duplicates", "export", "exports", "exported", "edited", "edits", "originals", "original",
    "raw", "raws", "jpeg", "jpg", "jpegs", "heic", "backup", "backups", "imported", "import", "imports",
    "unsorted", "misc", "new folder", "untitled folder", "recently deleted", "deleted", "trash", "to sort",
    "favorites", "favourites", "selects", "rejected", "processed", "resized", "thumbnails", "previews",
})  # fmt: skip


@dataclass(frozen=True)
class LabelDecision:
    """``folders`` or ``none``, and one line saying why (and, for ``none``, how to ask for labels)."""

    labels: str
    reason: str

    @property
    def message(self) -> str:
        return f"labels: {self.labels}: {self.reason}"


def folder_kind(name: str, parent: str = "") -> str | None:
    """What a folder named ``name`` (inside one named ``parent``) is named by: 'a date', 'a camera or an app',
    'a photo library's step', or None (it may be a class)."""
    lowered = name.strip().lower()
    if DATE_NAME.match(lowered) or (DATE_PART.match(lowered) and DATE_NAME.match(parent.strip().lower())):
        return "a date"
    if lowered in CAMERA_FOLDERS or CAMERA_NAME.match(lowered):
        return "a camera or an app"
    if lowered in LIBRARY_FOLDERS:
        return "what a photo library does with its photos"
    return None


def detect_labels(folder: str | Path) -> LabelDecision:
    """Whether ``folder``'s sub-folders are classes (the rule of this module's docstring), with the reason."""
    folder = Path(folder)
    files = list_folder(folder).files
    parts = [path.relative_to(folder).parts for path in files]
    per_folder = Counter(part[0] for part in parts if len(part) > 1)
    ask = "pass --labels folders to make each sub-folder a class all the same"
    for name in sorted(per_folder):
        kind = folder_kind(name, folder.name)
        if kind:
            return LabelDecision(NONE, f"'{name}' is named by {kind}, so this looks like a photo library; {ask}")
    at_top = sum(len(part) == 1 for part in parts)
    sort_them = "for labels, sort the photos into one sub-folder per class and pass --labels folders"
    if at_top:
        where = f" beside {len(per_folder)} sub-folder(s)" if per_folder else ""
        return LabelDecision(NONE, f"{at_top} photo(s) lie at the top of the folder{where}; {sort_them}")
    if len(per_folder) < 2:
        only = f"only '{next(iter(per_folder))}' holds photos" if per_folder else "no sub-folder holds photos"
        return LabelDecision(NONE, f"{only}, one class at most; {sort_them}")
    nested = sorted({"/".join(part[:2]) for part in parts if len(part) > 2})
    if nested:
        return LabelDecision(
            NONE,
            f"photos lie in sub-folders of sub-folders ('{nested[0]}'{' ...' if len(nested) > 1 else ''}), "
            "not one class per folder; pass --labels folders to make each top sub-folder a class, with all below it",
        )
    return LabelDecision(FOLDERS, f"the photos are sorted into {len(per_folder)} sub-folders, each one a class")
