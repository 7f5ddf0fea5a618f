"""Image augmentation of the original Noisy Student code (spec §7.4, §7.5).

`randaugment` holds RandAugment (`augment_name=v1`) and the stand-alone
Cutout used by the small-image training view.
"""
