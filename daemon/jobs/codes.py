"""Every error code a job, a rejected input or an error sidecar can carry: one enum, stable values.

The values are what rows, events, sidecars and metrics labels store; a StrEnum member is its value
(`ErrorCode.EMPTY_FILE == "empty_file"`), so rows written before this enum read the same.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # A dropped pair, or a file i2vd was handed, cannot be used (intake, web upload, CLI submit).
    AMBIGUOUS_PAIR = "ambiguous_pair"
    EMPTY_FILE = "empty_file"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"
    IMAGE_UNREADABLE = "image_unreadable"
    INTERNAL_ERROR = "internal_error"
    INVALID_JSON = "invalid_json"
    INVALID_SIDECAR = "invalid_sidecar"
    MISSING_IMAGE = "missing_image"
    MISSING_SIDECAR = "missing_sidecar"
    NOT_A_FILE = "not_a_file"
    NOT_AN_IMAGE = "not_an_image"
    SIDECAR_NOT_OBJECT = "sidecar_not_object"
    SIDECAR_TOO_LARGE = "sidecar_too_large"
    SYMLINK = "symlink"
    # A job failed.
    INPUTS_VANISHED = "inputs_vanished"
    INPUT_MISSING = "input_missing"
    POISON_JOB = "poison_job"
    OUT_OF_MEMORY = "out_of_memory"
    GENERATION_ERROR = "generation_error"
    ENCODE_ERROR = "encode_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    NONFINITE_OUTPUT = "nonfinite_output"
    UNSUPPORTED_SHAPE = "unsupported_shape"
    DTYPE_MISMATCH = "dtype_mismatch"
    INPUT_REFUSED = "input_refused"
