"""ctk_cli, taught the ``reference`` attribute of a ``<file>`` parameter.

The DSA ingests an output annotation only when its ``<file>`` names the image it belongs to
(``reference="inputImageFile"``). ctk_cli 1.5 knows ``reference`` on images, transforms, geometries and tables
only, and logs "attribute of 'file' ignored" for a file; slicer_cli_web and HistomicsTK replace ctk_cli's whole
parameter parser to accept it. Here the attribute is lifted off the element before ctk_cli's own parser runs
and put back on the parsed parameter, so every other check of ctk_cli still applies (and still warns).
"""

from __future__ import annotations

import copy

import ctk_cli
from ctk_cli.module import CLIParameter, _tag

_ctk_parse = CLIParameter.parse.__func__
REFERENCE_TYPES = ("image", "file", "transform", "geometry", "table")


def _parse(cls, element):
    reference = element.get("reference") if _tag(element) in REFERENCE_TYPES else None
    if reference is not None:
        element = copy.deepcopy(element)
        del element.attrib["reference"]
    param = _ctk_parse(cls, element)
    param.reference = reference
    return param


if not getattr(CLIParameter, "_wsinuclei_reference", False):
    CLIParameter.parse = classmethod(_parse)
    CLIParameter._wsinuclei_reference = True

CLIModule = ctk_cli.CLIModule
CLIArgumentParser = ctk_cli.CLIArgumentParser
