"""Raw model outputs -> per-slice lesion probability and location (numpy only).

This module is copied verbatim into a Triton python-backend model (``pacsflow model-repository``), so the
embedded and the Triton paths turn raw outputs into findings with the same function: keep it one small pure
function that imports nothing but numpy.
"""

import numpy as np


def postprocess(logit: np.ndarray, location_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid of the raw outputs every model of the repository produces (the shared ONNX output contract).

    Parameters
    ----------
    logit : numpy.ndarray
        ``[N, 1]`` (or ``[N]``) pre-sigmoid score that slice n shows a lesion.
    location_logit : numpy.ndarray
        ``[N, 2]`` pre-sigmoid (row, column) of the lesion centre as fractions of the image.

    Returns
    -------
    probability : numpy.ndarray
        ``[N]`` float32 in [0, 1].
    location : numpy.ndarray
        ``[N, 2]`` float32 (row, column) fractions in [0, 1].
    """
    z = np.asarray(logit, dtype=np.float64).reshape(-1)
    loc = np.asarray(location_logit, dtype=np.float64).reshape(-1, 2)
    # Clipping keeps exp() finite for any logit; sigmoid(+-60) is 0/1 in float32 anyway.
    probability = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
    location = 1.0 / (1.0 + np.exp(-np.clip(loc, -60.0, 60.0)))
    return probability.astype(np.float32), location.astype(np.float32)
