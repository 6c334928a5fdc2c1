"""A star model's network in INT8, made once at export and carried in the model file: the format (the names it
is stored under, and reading it back). Making it (quantising, checking) is export's (``wsinuclei.int8_export``).

On a CPU with 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI) OpenVINO runs the quantised network
about three times as fast as float32 (BENCHMARKS.md, "Its INT8 network against float32"). ``wsinuclei export --int8 PREPARED`` quantises
it with NNCF's post-training quantisation, calibrated on crops of the prepared folder's *training* images,
checks it on the validation images against float32 at the model's operating point, and stores it in the model
file: the IR's XML in the metadata, its weights as one uint8 tensor. Inference reads it from there with
OpenVINO alone (``inference.load_detector``), so neither NNCF nor torch is needed to run it.

NNCF is needed only to make the network (``pip install nncf``), never to run it; it is not a dependency.
"""

from __future__ import annotations


#: names in the model file: the IR's XML (metadata) and its weights (a uint8 tensor)
XML_KEY = "openvino_int8_xml"
WEIGHTS_KEY = "openvino_int8_weights"
#: metadata: the digest of the float weights the INT8 network was made from (:func:`float_digest`)
FLOAT_DIGEST_KEY = "openvino_int8_float_sha1"


def float_digest(tensors: dict) -> str:
    """SHA-1 over a model file's weights other than the INT8 network's (names and bytes, in name order), as
    stored: an INT8 network is checked against the float weights it was made from, so a file whose two
    networks do not belong together is refused."""
    import hashlib

    import numpy as np

    h = hashlib.sha1()
    for name in sorted(k for k in tensors if k != WEIGHTS_KEY):
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(tensors[name])).tobytes())
    return h.hexdigest()


def read(fh, meta: dict) -> tuple[bytes, bytes] | None:
    """The INT8 network an open model file (``safetensors.safe_open``, numpy) carries, or None."""
    if XML_KEY not in meta:
        return None
    return meta[XML_KEY].encode(), fh.get_tensor(WEIGHTS_KEY).tobytes()
