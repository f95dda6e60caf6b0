"""Image data: folders of class folders, tables with an image column, Hugging Face datasets
with an Image feature, and Fashion-MNIST for the demo; batches made by each model's own
image processor.

Every image is decoded once when the data is read, so a corrupt or unreadable file is one
line naming it before any training starts; batches decode again from the source (a path,
bytes or a small array kept in memory), so a large photo folder is not held decoded. A table
(a file, a saved or hub dataset) keeps its image column in Arrow, memory-mapped, read a
picture at a time (`ImageColumn`): a million-row table is never a Python list of its cells.
Grey or colour follows the model (`config.num_channels`); resizing, cropping and
normalising follow its image processor, so a teacher and a student that expect different
sizes each get their own pixels of the same picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd.data import class_names, in_memory, read_rows, read_table, source_name
from edgekd.errors import UserError, first_line
from edgekd.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "img", "image_path", "path", "file", "filename", "pixel_values")


@dataclass
class ImageDataset:
    """Images with labels (None where unlabelled) as indices into `label_names`."""

    images: list  # each a Path, bytes or a uint8 array (H, W) or (H, W, C)
    labels: list[int | None]
    label_names: list[str]
    source: str
    names: list[str] = field(default_factory=list)  # how each image is named in errors

    def __post_init__(self) -> None:
        if isinstance(self.images, ImageColumn):
            self.names = self.images.names  # each read with its row
        elif not self.names:
            self.names = [_describe(image, self.source, row) for row, image in enumerate(self.images)]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        images = (self.images.subset(indices) if isinstance(self.images, ImageColumn)
                  else [self.images[i] for i in indices])
        return ImageDataset(images=images, labels=[self.labels[i] for i in indices], label_names=self.label_names,
                            source=self.source, names=[] if isinstance(images, ImageColumn)
                            else [self.names[i] for i in indices])

    def labelled_by(self, raw_labels: Sequence, label2id: dict[str, int] | None) -> ImageDataset:
        """This dataset with `raw_labels` (one per image, None where unlabelled) mapped by name onto
        `label2id`; without it, the values, sorted, are the labels."""
        labels = [_label_index(value, label2id, where=f"row {i} of {self.source}")
                  for i, value in enumerate(raw_labels, 1)]
        if label2id is None:
            label_names = sorted({str(label) for label in labels if label is not None})
            index = {name: i for i, name in enumerate(label_names)}
            labels = [None if label is None else index[str(label)] for label in labels]
        else:
            label_names = sorted(label2id, key=label2id.get)
        return replace(self, labels=labels, label_names=label_names)

    @property
    def labelled(self) -> bool:
        return all(label is not None for label in self.labels)

    def picture(self, index: int):
        """The image as a PIL image (decoded from its source every time)."""
        return decode(self.images[index], self.names[index])


def _describe(image, source: str, row: int) -> str:
    return str(image) if isinstance(image, Path) else f"row {row + 1} of {source}"


class ImageColumn(Sequence):
    """The image column of an Arrow table, read a row at a time when a batch wants it (a
    million-picture table is never held as Python objects): each value a Path (relative to
    `base`), encoded bytes or a uint8 array, as `_image_value` makes it."""

    def __init__(self, column, *, name: str, base: Path | None, source: str, rows: np.ndarray | None = None) -> None:
        self.column, self.name, self.base, self.source, self.rows = column, name, base, source, rows
        self.names = _ColumnNames(self)

    def __len__(self) -> int:
        return len(self.column) if self.rows is None else len(self.rows)

    def row(self, index: int) -> int:
        """The table row of item `index`."""
        index = range(len(self))[index]
        return index if self.rows is None else int(self.rows[index])

    def __getitem__(self, index: int):
        row = self.row(index)
        return _image_value(self.column[row].as_py(), base=self.base, source=self.source, row=row + 1,
                            column=self.name)

    def subset(self, indices: Sequence[int]) -> ImageColumn:
        chosen = np.asarray(indices, dtype=np.int64)
        return ImageColumn(self.column, name=self.name, base=self.base, source=self.source,
                           rows=chosen if self.rows is None else self.rows[chosen])


class _ColumnNames(Sequence):
    """How each image of an ImageColumn is named in errors: its path, else its table row."""

    def __init__(self, images: ImageColumn) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> str:
        value = self.images.column[self.images.row(index)].as_py()
        value = (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value
        if isinstance(value, str) and value:
            return str(_image_value(value, base=self.images.base, source=self.images.source, row=0, column=""))
        return f"row {self.images.row(index) + 1} of {self.images.source}"


def decode(image, name: str):
    """A PIL image from a path, encoded bytes or an array; one line naming the image if it
    cannot be read."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large but within the limit
            with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as opened:
                opened.load()
                return _eight_bit(ImageOps.exif_transpose(opened))  # as a photo viewer shows it
    except FileNotFoundError as error:
        raise UserError(f"image {name} does not exist; fix the path or remove the row") from error
    except Image.DecompressionBombError as error:
        raise UserError(f"image {name} is too large to read safely ({first_line(error)[:120]}); "
                        "resize it or remove it") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UserError(f"image {name} cannot be read ({first_line(error)[:120]}); "
                        "replace or remove the file") from error


def _eight_bit(picture):
    """A 16- or 32-bit single-channel picture scaled to 8 bits over its own range (Pillow's
    conversion clips it: a 16-bit scan would arrive almost white); others as they are."""
    from PIL import Image

    if picture.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return picture
    values = np.asarray(picture, dtype=np.float64)
    top = 65535.0 if picture.mode.startswith("I;16") or values.max() > 255 else (1.0 if values.max() <= 1 else 255.0)
    return Image.fromarray(np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8), "L")


def load_images(source: Path | str, *, label2id: dict[str, int] | None, image_column: str | None = None,
                label_column: str | None = "label", split: str | None = None, default_split: str | None = None,
                show_progress: bool = False) -> ImageDataset:
    """Images from a folder tree (root/<label>/*.png|jpg|webp, or root/<split>/<label>/...), a
    CSV/TSV/JSONL/Parquet file with an image column (paths, relative to the file, or bytes),
    a saved or hub dataset with an Image feature. Labels are mapped by name onto `label2id`
    (the teacher's labels); without `label2id` the folder names or label values, sorted, are
    the labels. Every image is decoded once here."""
    if isinstance(source, (list, tuple)):  # rows handed over: their values may be pictures
        dataset = _from_rows(read_rows(source, split=split), source_name(source), base=None,
                             image_column=image_column, label_column=label_column, label2id=label2id)
        check_readable(dataset, show_progress=show_progress)
        return dataset
    if in_memory(source):  # a datasets.Dataset (or DatasetDict) handed over
        dataset = _from_table(read_table(source, split=split, default_split=default_split), source_name(source),
                              base=None, image_column=image_column, label_column=label_column, label2id=label2id)
        check_readable(dataset, show_progress=show_progress)
        return dataset
    path = Path(source)
    if path.is_dir() and not _is_saved_dataset(path):
        dataset = _read_folder(path, split=split, default_split=default_split, label2id=label2id)
    else:
        dataset = _from_table(read_table(source, split=split, default_split=default_split), str(source),
                              base=path.parent if path.is_file() else None, image_column=image_column,
                              label_column=label_column, label2id=label2id)
    check_readable(dataset, show_progress=show_progress)
    return dataset


def _is_saved_dataset(path: Path) -> bool:
    from edgekd.data import SAVED_DATASET_FILES

    return any((path / name).is_file() for name in SAVED_DATASET_FILES)


def _read_folder(root: Path, *, split: str | None, default_split: str | None,
                 label2id: dict[str, int] | None) -> ImageDataset:
    chosen = split or default_split
    if chosen and (root / chosen).is_dir() and not _images_in(root / chosen):
        root = root / chosen  # root/<split>/<label>/...
    elif split is not None:
        raise UserError(f"{root} has no folder {split}/ of class folders; drop --split {split}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = [folder.name for folder in classes if not _images_in(folder) and any(p.is_dir() for p in folder.iterdir())]
    if classes and len(splits) == len(classes):  # root/<split>/<label>/..., without the split wanted
        missing = f" and has no {chosen}/" if chosen else ""
        raise UserError(f"{root} is split into folders {', '.join(f'{name}/' for name in splits)} of class "
                        f"folders{missing}; choose one with --split (e.g. --split {splits[0]})")
    if not classes:
        loose = _images_in(root)
        raise UserError(f"{root} has no class folders{f' ({len(loose)} loose images)' if loose else ''}; "
                        "put each class's images in a folder named after it: root/<label>/*.png")
    images, labels = [], []
    for number, folder in enumerate(classes):
        files = _images_in(folder)
        if not files:
            raise UserError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); "
                            "add images or remove the folder")
        images += files
        labels += [number if label2id is None else _label_index(folder.name, label2id, where=str(folder))] * len(files)
    label_names = sorted(label2id, key=label2id.get) if label2id else [folder.name for folder in classes]
    return ImageDataset(images=images, labels=labels, label_names=label_names, source=str(root))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _label_index(value, label2id: dict[str, int] | None, *, where: str) -> int | None:
    if value is None or value == "":
        return None
    if label2id is None:
        return value  # mapped once every value is known
    name = str(value)
    if name in label2id:
        return label2id[name]
    if name.lstrip("-").isdigit() and 0 <= int(name) < len(label2id):  # a class index (JSONL and CSV give text)
        return int(name)
    raise UserError(f"label '{name}' of {where} is not one of the teacher's labels "
                    f"({', '.join(sorted(label2id, key=label2id.get)[:8])}); fix the label or the teacher")


def _from_rows(rows: list[dict], source: str, *, base: Path | None, image_column: str | None,
               label_column: str | None, label2id: dict[str, int] | None) -> ImageDataset:
    """Rows handed over in memory (their values may be pictures)."""
    if not rows:
        raise UserError(f"{source} has no rows; pass data with images in it")
    column = _image_column(list(rows[0]), source, image_column=image_column, label_column=label_column)
    images = [_image_value(row.get(column), base=base, source=source, row=number, column=column)
              for number, row in enumerate(rows, start=1)]
    names = [str(image) if isinstance(image, Path) else f"row {number} of {source}"
             for number, image in enumerate(images, start=1)]
    raw_labels = [row.get(label_column) for row in rows] if label_column else [None] * len(rows)
    return ImageDataset(images=images, labels=[], label_names=[], source=source, names=names).labelled_by(
        raw_labels, label2id)


def _from_table(table, source: str, *, base: Path | None, image_column: str | None, label_column: str | None,
                label2id: dict[str, int] | None) -> ImageDataset:
    """A table read from a file or a dataset: its image column stays in Arrow (ImageColumn)."""
    if len(table) == 0:
        raise UserError(f"{source} has no rows; pass data with images in it")
    column = _image_column(table.column_names, source, image_column=image_column, label_column=label_column)
    mapping = getattr(table, "_indices", None)  # a selection of the table's rows, when it is one
    images = ImageColumn(table.data.column(column), name=column, base=base, source=source,
                         rows=None if mapping is None else np.asarray(mapping.column(0), dtype=np.int64))
    raw_labels = [None] * len(table)
    if label_column:
        raw_labels = table[label_column]
        names = class_names(table).get(label_column)
        if names:  # a ClassLabel column: its values by class name, as a file would give them
            raw_labels = [names[value] if isinstance(value, int) and 0 <= value < len(names) else value
                          for value in raw_labels]
    return ImageDataset(images=images, labels=[], label_names=[], source=source).labelled_by(raw_labels, label2id)


def _image_column(columns: list[str], source: str, *, image_column: str | None, label_column: str | None) -> str:
    """The column holding the images (given, or the first of IMAGE_COLUMNS), after checking that
    it and the label column are there."""
    column = image_column or next((c for c in IMAGE_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise UserError(f"{source} has no image column{f' {image_column}' if image_column else ''} "
                        f"(columns: {', '.join(columns)}); pass --image-column")
    if label_column and label_column not in columns:
        raise UserError(f"{source} has no label column {label_column} (columns: {', '.join(columns)}); "
                        "pass --label-column")
    return column


def _image_value(value, *, base: Path | None, source: str, row: int, column: str):
    """What a table cell holds: a path (relative to the table's folder), encoded bytes, a
    dataset Image cell ({bytes, path}) or a PIL image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image, as datasets decode them
        return np.asarray(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        return path if path.is_absolute() or base is None else base / path
    raise UserError(f"row {row} of {source}: column {column} holds no image (got {type(value).__name__}); "
                    "give a file path or image bytes")


def check_readable(dataset: ImageDataset, *, show_progress: bool) -> None:
    """Decode every image once, so a broken one fails now, naming its file."""
    arrays = [i for i, image in enumerate(dataset.images) if isinstance(image, np.ndarray)]
    others = [i for i in range(len(dataset)) if not isinstance(dataset.images[i], np.ndarray)]
    for i in arrays:
        image = dataset.images[i]
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise UserError(f"image {dataset.names[i]} is not an 8-bit picture (array {image.dtype}, "
                            f"{image.ndim} axes); pass images as files or bytes")
    with progress_bar("checking images", total=len(others), enabled=show_progress and len(others) > 200) as advance:
        for i in others:
            dataset.picture(i)
            advance(1)
