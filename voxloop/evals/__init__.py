"""Offline evaluations of voxloop's stages on the recordings in ../shared/eval (see scripts/eval_*)."""
