"""HemaFed data layer (numpy + Pillow only, no TensorFlow).

* :mod:`hemafed.data.loader` - what the hospital agent calls at run time:
  :func:`load_image_folder` and :func:`validation_split` (:func:`stratified_split` or :func:`random_split`).
* :mod:`hemafed.data.synthetic` - offline, deterministic blood-cell-like images (8 PBC classes).
* :mod:`hemafed.data.sources` - dataset sources (synthetic, image folders, BloodMNIST ``.npz``),
  spec parsing and class mapping.
* :mod:`hemafed.data.split` - the ``hemafed-split`` CLI (``python -m hemafed.data.split``).
"""

from hemafed.data.loader import LoadedImages, load_image_folder, random_split, stratified_split, validation_split
from hemafed.data.synthetic import CLASSES

__all__ = ["CLASSES", "LoadedImages", "load_image_folder", "random_split", "stratified_split", "validation_split"]
