"""The exception hierarchy. Every error voxloop raises on purpose is a VoxloopError.

VoxloopError
├── ConfigError          a setting is wrong: names the key, the value and the fix
├── AssetError           a model asset is missing or corrupt: names the fix
└── StageError           a stage failed while processing
    ├── TransientError   worth retrying or skipping this turn (timeouts, a server hiccup)
    └── FatalError       the stage cannot go on (model failed to load)
"""


class VoxloopError(Exception):
    """Base of all voxloop errors; the message is written for the user."""


class ConfigError(VoxloopError):
    pass


class AssetError(VoxloopError):
    pass


class InputError(VoxloopError):
    pass


class StageError(VoxloopError):
    pass


class TransientError(StageError):
    pass


class FatalError(StageError):
    pass
