"""Small real offline datasets, materialised in ImageFolder layout (``root/{train,val}/<class>/*.png``).

- ``build_digits(out_dir)``: scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits,
  shipped inside the scikit-learn wheel), upscaled to 3-channel PNGs, stratified train/val split.
- ``check_imagefolder(root)``: validate a ``train/`` + ``val/`` class-folder layout (used by training
  and evaluation before anything is written).
"""

from .builders import DATASETS, build_dataset, build_digits, check_imagefolder, DataLayoutError

__all__ = ["DATASETS", "build_dataset", "build_digits", "check_imagefolder", "DataLayoutError"]
