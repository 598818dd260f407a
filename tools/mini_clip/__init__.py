"""Procedural image-caption scenes and the mini-CLIP trained on them (docs/mini_clip.md).

Independent of ``alfa_ad``: numpy + PIL for the scenes; torch + open_clip only in ``train.py``.
"""
