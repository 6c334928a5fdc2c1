"""The Digital Slide Archive plugin: slicer CLIs in HistomicsTK's layout (one folder per CLI, its XML beside
its script, ``slicer_cli_list.json`` naming them) and the entry point a DSA Docker image runs.

``python -m wsinuclei.dsa --list_cli`` prints the CLI list, ``python -m wsinuclei.dsa NucleiDetection --xml``
a CLI's XML, and ``python -m wsinuclei.dsa NucleiDetection ARGS...`` runs it with the arguments
slicer_cli_web builds from that XML.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI_LIST = HERE / "slicer_cli_list.json"


def xml_path(cli: str) -> Path:
    return HERE / cli / f"{cli}.xml"
