"""The Digital Slide Archive plugin, driven the way the DSA drives it: the entry point's --list_cli and --xml,
arguments built from the XML as slicer_cli_web builds them, progress lines, and an annotation that validates
against the DSA's own schema."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsinuclei.dsa import CLI_LIST, HERE, xml_path

SCHEMA = Path(__file__).parent / "data" / "dsa" / "annotation_schema.json"
VENV_BIN = str(Path(sys.executable).parent)


def run_entry(*args, cwd=HERE, via_shell=False):
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    cmd = ["bash", "docker-entrypoint.sh", *args] if via_shell else [sys.executable, "-m", "wsinuclei.dsa", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def slicer_cli_web_args(xml: Path, values: dict) -> list[str]:
    """The container arguments slicer_cli_web's prepare_task builds: optional parameters first as
    ``--longflag value`` (in the order the XML's classifyParameters gives them, only those the user set),
    vectors and regions as one ``"a, b, c"`` string, booleans as ``true``/``false``; then the indexed
    parameters by index."""
    from wsinuclei.dsa.ctk_adjustment import CLIModule

    index_params, opt_params, _ = CLIModule(str(xml)).classifyParameters()
    args = []
    for p in opt_params:
        if p.identifier() not in values:
            continue
        v = values[p.identifier()]
        if p.isVector() or p.typ == "region":
            v = ", ".join(map(str, v))
        elif p.typ == "boolean":
            v = "true" if v else "false"
        args += [p.longflag, str(v)]
    for p in sorted(index_params, key=lambda p: p.index):
        args.append(str(values[p.identifier()]))
    return args


def validate_annotation(doc):
    import jsonschema

    jsonschema.Draft6Validator(json.loads(SCHEMA.read_text())).validate(doc)


def test_xml_parses_with_ctk_cli_without_warnings(caplog):
    from wsinuclei.dsa.ctk_adjustment import CLIModule

    with caplog.at_level(logging.WARNING):
        m = CLIModule(str(xml_path("NucleiDetection")))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    params = {p.name: p for p in m.parameters()}
    image, out = params["inputImageFile"], params["outputNucleiAnnotationFile"]
    assert (image.typ, image.index, image.channel) == ("image", 0, "input")
    # the DSA ingests an output only when its name ends in AnnotationFile, it is a .anot file, and it
    # references the image parameter
    assert (out.typ, out.index, out.channel) == ("file", 1, "output")
    assert out.name.endswith("AnnotationFile") and out.fileExtensions == [".anot"]
    assert out.reference == "inputImageFile"
    assert params["analysis_roi"].typ == "region" and params["analysis_roi"].default == [-1, -1, -1, -1]
    for name in ("mpp", "min_fgnd_frac", "analysis_tile_size", "tile_overlap_value", "score_cut", "model_file",
                 "device", "scheduler", "num_workers", "norm_statistics", "shipped_model"):
        assert params[name].longflag == f"--{name}" and params[name].description


def test_the_model_choices_are_the_packaged_star_models_default_first():
    # the form's list is written by hand in the XML: it must name every packaged star model, and only those
    from wsinuclei.checkpoint import DEFAULT_MODEL, shipped_models
    from wsinuclei.dsa.ctk_adjustment import CLIModule

    param = {p.name: p for p in CLIModule(str(xml_path("NucleiDetection"))).parameters()}["shipped_model"]
    star = [m["name"] for m in shipped_models() if m["preset"].startswith("star")]
    assert sorted(param.elements) == sorted(star) and param.default == DEFAULT_MODEL.stem == param.elements[0]


def test_list_cli_and_xml_print_nothing_else():
    r = run_entry("--list_cli")
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(CLI_LIST.read_text())
    r = run_entry("NucleiDetection", "--xml")
    assert r.returncode == 0 and r.stdout.strip() == xml_path("NucleiDetection").read_text().strip()
    # the Docker entrypoint, run from the CLI folder as the image's WORKDIR: the script path, then the module
    r = run_entry("NucleiDetection", "--xml", via_shell=True)
    assert r.returncode == 0 and r.stdout.strip() == xml_path("NucleiDetection").read_text().strip()
    r = run_entry("--list_cli", via_shell=True)
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(CLI_LIST.read_text())
    r = run_entry("NoSuchCli")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown CLI" in r.stderr


def test_xml_into_a_closed_pipe_ends_quietly():
    """`wsinuclei-dsa NucleiDetection --xml | head -c 0` (a script that stops reading early): the shell's code
    for a closed pipe and no traceback; under `set -o pipefail` a caller sees 141, not a crash."""
    r = subprocess.run(f'"{sys.executable}" -m wsinuclei.dsa NucleiDetection --xml | head -c 0; '
                       'echo "${PIPESTATUS[0]}" >&2', shell=True, executable="/bin/bash", capture_output=True,
                       text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "141"


def test_cli_honours_the_roi_and_writes_a_schema_valid_annotation(pyramid_slide, stub_detector, tmp_path, capsys):
    from wsinuclei.dsa.NucleiDetection.NucleiDetection import main

    slide = pyramid_slide[0]
    out = tmp_path / "job" / "synthetic-outputNucleiAnnotationFile.anot"
    roi = (300, 200, 600, 500)
    args = slicer_cli_web_args(xml_path("NucleiDetection"), {
        "analysis_roi": roi, "analysis_tile_size": 256, "tile_overlap_value": 32, "min_fgnd_frac": 0.25,
        "score_cut": 0.5, "device": "cpu", "scheduler": "", "num_workers": 0, "mpp": -1,
        "inputImageFile": slide, "outputNucleiAnnotationFile": out})
    assert args[args.index("--analysis_roi") + 1] == "300, 200, 600, 500"
    assert main(args) == 0
    stdout = capsys.readouterr().out
    doc = json.loads(out.read_text())
    validate_annotation(doc)
    centres = np.array([e["center"][:2] for e in doc["elements"]])
    assert len(centres) > 5
    assert (centres[:, 0] >= 300).all() and (centres[:, 0] < 900).all()
    assert (centres[:, 1] >= 200).all() and (centres[:, 1] < 700).all()
    # the stub finds the dark blobs: those whose centre is in the ROI, each once
    truth = pyramid_slide[2]
    tc = (truth[:, :2] + truth[:, 2:]) / 2
    inside = ((tc[:, 0] >= 305) & (tc[:, 0] < 895) & (tc[:, 1] >= 205) & (tc[:, 1] < 695)).sum()
    assert abs(len(centres) - inside) <= 0.1 * inside + 2
    attrs = doc["attributes"]
    assert attrs["params"]["arguments"]["analysis_roi"] == [300.0, 200.0, 600.0, 500.0]
    assert attrs["params"]["roi"] == [300, 200, 600, 500] and attrs["version"] and attrs["model"]["sha1"]
    assert len(attrs["src_mu_lab"]) == 3 and len(attrs["src_sigma_lab"]) == 3
    progress = [float(line[len("<filter-progress>"):-len("</filter-progress>")])
                for line in stdout.splitlines() if line.startswith("<filter-progress>")]
    assert progress[-1] == 1.0 and progress == sorted(progress) and len(progress) >= 2
    assert "<filter-start>" in stdout and "<filter-end>" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # the scratch folder is gone


def test_real_model_through_the_docker_entrypoint(pyramid_slide, tmp_path):
    """The exact path a DSA job takes: docker-entrypoint.sh -> the CLI script -> the shipped model."""
    out = tmp_path / "nuclei.anot"
    args = slicer_cli_web_args(xml_path("NucleiDetection"), {
        "analysis_roi": (0, 0, 700, 600), "score_cut": 0.3, "num_workers": 0,
        "inputImageFile": pyramid_slide[0], "outputNucleiAnnotationFile": out})
    r = run_entry("NucleiDetection", *args, via_shell=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    validate_annotation(doc)
    scores = [e["user"]["score"] for e in doc["elements"]]
    assert scores and min(scores) >= 0.3
    assert f"{len(scores)} nuclei at score >= 0.3" in r.stdout


def test_the_typed_model_picked_by_name_gives_a_group_per_type(pyramid_slide, tmp_path):
    """Model = star_types, as slicer_cli_web passes the enumeration: each element is in its type's group, drawn
    in that type's colour, and the job's attributes name the typed file."""
    from wsinuclei.nucleus_types import TYPE_COLOURS

    out = tmp_path / "nuclei.anot"
    args = slicer_cli_web_args(xml_path("NucleiDetection"), {
        "analysis_roi": (0, 0, 700, 600), "score_cut": 0.3, "num_workers": 0, "shipped_model": "star_types",
        "inputImageFile": pyramid_slide[0], "outputNucleiAnnotationFile": out})
    assert args[args.index("--shipped_model") + 1] == "star_types"
    r = run_entry("NucleiDetection", *args, via_shell=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    validate_annotation(doc)
    assert doc["elements"] and doc["attributes"]["model"]["file"].endswith("star_types.safetensors")
    for e in doc["elements"]:
        assert e["lineColor"] == "rgb({})".format(",".join(map(str, TYPE_COLOURS[e["group"]])))
    r = run_entry("NucleiDetection", "--shipped_model", "no_such", str(pyramid_slide[0]), str(tmp_path / "x.anot"))
    assert r.returncode == 2 and "no_such" in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("flag,value,message", [
    ("--analysis_roi", "10, 10, 0, 50", "width and height > 0"),
    ("--score_cut", "1.5", "--score-cut must be a number from 0 to 1"),
    ("--analysis_tile_size", "abc", "invalid"),
    ("--analysis_roi", "nan,nan,nan,nan", "every value must be a finite number"),  # was a ValueError traceback
    ("--mpp", "1e9", "--mpp must be from 0.05 to 20"),  # listed ~10^12 tiles
])
def test_bad_arguments_give_one_line(flag, value, message, pyramid_slide, tmp_path):
    r = run_entry("NucleiDetection", flag, value, str(pyramid_slide[0]), str(tmp_path / "x.anot"))
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "x.anot").exists()


def test_missing_slide_gives_one_line(tmp_path):
    r = run_entry("NucleiDetection", str(tmp_path / "nope.svs"), str(tmp_path / "x.anot"))
    assert r.returncode == 2 and r.stderr.startswith("NucleiDetection: error:") and r.stderr.count("\n") == 1


def test_schema_catches_a_bad_element():
    """The copy of the schema is strict where the DSA is: an element with a field it does not know fails."""
    import jsonschema

    bad = {"name": "x", "elements": [{"type": "rectangle", "center": [1, 2, 0], "width": 3, "height": 4,
                                      "score": 0.9}]}
    with pytest.raises(jsonschema.ValidationError):
        validate_annotation(bad)
    validate_annotation({"name": "x", "elements": [{"type": "rectangle", "center": [1, 2, 0], "width": 3,
                                                    "height": 4, "user": {"score": 0.9}}]})


@pytest.fixture(scope="module")
def cmu_slide():
    from wsinuclei.datasets import cmu_small_region
    from wsinuclei.errors import WsinucleiError

    try:
        return cmu_small_region()
    except WsinucleiError as exc:  # no route to PyPI here
        pytest.skip(f"the demo slide could not be fetched ({exc})")


def test_demo_slide_with_an_roi_the_dsa_way(cmu_slide, tmp_path):
    """The issue's acceptance run: CMU-1-Small-Region (a real 20x SVS), an ROI drawn in HistomicsUI, the
    shipped model, through docker-entrypoint.sh with slicer_cli_web's arguments."""
    out = tmp_path / "CMU-1-Small-Region-outputNucleiAnnotationFile.anot"
    roi = (1000, 1000, 600, 500)
    args = slicer_cli_web_args(xml_path("NucleiDetection"), {
        "analysis_roi": roi, "score_cut": 0.5, "num_workers": 0, "device": "cpu", "scheduler": "",
        "inputImageFile": cmu_slide, "outputNucleiAnnotationFile": out})
    r = run_entry("NucleiDetection", *args, via_shell=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    validate_annotation(doc)
    # the shipped model draws contours: closed polylines (a box model gives rectangles with a centre)
    assert {e["type"] for e in doc["elements"]} == {"polyline"} and all(e["closed"] for e in doc["elements"])
    pts = [np.asarray(e["points"])[:, :2] for e in doc["elements"]]
    c = np.array([(p.min(axis=0) + p.max(axis=0)) / 2 for p in pts])
    assert len(c) > 50  # a dense epidermis region
    # the ROI keeps a nucleus by its box's centre; a contour lies inside its box, so the centre of its extent is
    # within half a nucleus (< 12 base px here) of the ROI, and most are inside it
    m = 12
    assert (c[:, 0] >= 1000 - m).all() and (c[:, 0] < 1600 + m).all() and (c[:, 1] >= 1000 - m).all() and (c[:, 1] < 1500 + m).all()
    inside = (c[:, 0] >= 1000) & (c[:, 0] < 1600) & (c[:, 1] >= 1000) & (c[:, 1] < 1500)
    assert inside.mean() > 0.9
    assert "<filter-progress>1.0000</filter-progress>" in r.stdout
    assert doc["attributes"]["mpp"] == pytest.approx(0.499, abs=0.001)
