"""``wsinuclei view``: one slide and its nuclei in the browser, served from 127.0.0.1.

The page (``static/``) is OpenSeadragon over Deep Zoom tiles made by OpenSlide's ``DeepZoomGenerator``, with
the nuclei drawn on one canvas from typed arrays. The server answers a fixed set of routes: the page and its
static files (read into memory at start, looked up by exact name), the slide's Deep Zoom descriptor and tiles
(level, column and row parsed as integers), the run's summary and its nuclei. No part of a request becomes a
file-system path, and nothing but the slide and result files named at start is ever read.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from ..errors import WsinucleiError

STATIC = Path(__file__).resolve().parent / "static"
TILE_SIZE = 254  # Deep Zoom tile edge; with the 1-px overlap each JPEG is 256 px
TILE_QUALITY = 85
_TILE = re.compile(r"^/dzi/slide_files/(\d{1,2})/(\d{1,7})_(\d{1,7})\.jpeg$")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
          ".png": "image/png", ".txt": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}


@dataclass
class Detections:
    """The nuclei of one run as arrays: boxes (N, 4) in base pixels, scores (N,), and areas in µm² when the
    model draws contours; ``score_cut`` is the run's cut and ``min_score`` the CSV's floor."""

    boxes: np.ndarray
    scores: np.ndarray
    areas_um2: np.ndarray | None = None
    score_cut: float = 0.5
    min_score: float = 0.1
    # contours, for the nuclei that have one: vertices of nucleus i are outline_xy[offsets[i]:offsets[i+1]]
    outline_offsets: np.ndarray | None = None
    outline_xy: np.ndarray | None = None
    # per-nucleus measurements from NAME.nuclei.parquet (runs with --features): name -> (N,), NaN where none
    measurements: dict = field(default_factory=dict)
    # a typed model's nuclei: each one's type (an index into type_names, its most probable type)
    type_index: np.ndarray | None = None
    type_names: tuple = ()

    def measurements_bytes(self) -> bytes:
        """Little-endian float32, nucleus-major: row i holds nucleus i's measurements in ``measurements`` order."""
        if not self.measurements:
            return b""
        return np.stack(list(self.measurements.values()), axis=1).astype("<f4").tobytes()

    def outlines_bytes(self) -> bytes:
        """Little-endian int32 offsets (N + 1), then float32 x, y vertices; empty without contours."""
        if self.outline_offsets is None:
            return b""
        return self.outline_offsets.astype("<i4").tobytes() + self.outline_xy.astype("<f4").tobytes()

    @property
    def columns(self) -> list[str]:
        return (["x0", "y0", "x1", "y1", "score"] + (["area_um2"] if self.areas_um2 is not None else [])
                + (["type"] if self.type_index is not None else []))

    def to_bytes(self) -> bytes:
        """Little-endian float32 rows of :attr:`columns`: x0, y0, x1, y1, score[, area_um2][, type index] (what
        the page reads into a Float32Array)."""
        cols = [self.boxes, self.scores[:, None]] + ([self.areas_um2[:, None]] if self.areas_um2 is not None else [])
        if self.type_index is not None:
            cols.append(self.type_index[:, None].astype(np.float64))
        return np.hstack(cols).astype("<f4").tobytes()

    def type_legend(self) -> list[dict]:
        """Per type: its name and display colour (as every output colours it)."""
        if self.type_index is None:
            return []
        from ..outputs import Types

        t = Types(np.zeros((0, len(self.type_names))), self.type_names)
        return [{"name": n, "colour": "#%02x%02x%02x" % t.colour(k)} for k, n in enumerate(self.type_names)]


@dataclass
class ViewerSource:
    slide: Path
    name: str
    mpp: float | None = None
    detections: Detections | None = None
    run: dict = field(default_factory=dict)


def read_detections(csv_path: Path, score_cut: float, min_score: float) -> Detections:
    """The run's CSV: every candidate ≥ min_score, so the page's slider can go below the cut."""
    try:
        with open(csv_path) as fh:
            header = fh.readline().strip().split(",")
            numeric = [i for i, c in enumerate(header) if c != "type"]  # a typed model's names: from its p_ columns
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2, usecols=numeric)
    except (OSError, ValueError) as exc:
        raise WsinucleiError(f"{csv_path}: unreadable result file ({exc})") from None
    if header[:5] != ["x0", "y0", "x1", "y1", "score"]:
        raise WsinucleiError(f"{csv_path}: not a wsinuclei result CSV (header {','.join(header)})")
    names = [header[i] for i in numeric]
    data = data.reshape(-1, len(names))
    areas = data[:, names.index("area_um2")] if "area_um2" in names else None
    det = Detections(data[:, :4], data[:, 4], areas, score_cut, min_score)
    probs = [i for i, c in enumerate(names) if c.startswith("p_")]
    if "type" in header and probs:
        det.type_names = tuple(names[i][2:] for i in probs)
        det.type_index = data[:, probs].argmax(1) if len(data) else np.zeros(0, int)
    return det


def resolve_source(target: str | Path, results: str | Path | None = None, mpp: float | None = None) -> ViewerSource:
    """What ``wsinuclei view TARGET`` shows: TARGET is an output folder holding one run (its NAME.run.json
    names the slide), a NAME.run.json, or a slide (with ``results``, the folder or run.json of its run)."""
    target = Path(target)
    if not target.exists():
        raise WsinucleiError(f"{target}: no such file or folder")
    from ..run_files import find_run_json, read_run_json, run_name

    run_json = None
    if (target.is_dir() and target.suffix.lower() != ".mrxs") or target.name.endswith(".run.json"):
        run_json = find_run_json(target)  # an output folder (not an MRXS slide's folder) or a summary
    if run_json is None:
        slide = target
        if results is not None:
            return _with_results(resolve_source(results, mpp=mpp), slide)
        return ViewerSource(slide=slide, name=slide.stem, mpp=mpp)
    run = read_run_json(run_json)
    name = run_name(run_json)
    if not run.get("slide"):
        raise WsinucleiError(f"{run_json}: does not name its slide (made by an older wsinuclei); "
                             f"run: wsinuclei view SLIDE --results {run_json.parent}")
    csv_path = run_json.with_name(f"{name}.csv")
    det = read_detections(csv_path, float(run.get("score_cut", 0.5)), float(run.get("min_score", 0.1))) \
        if csv_path.is_file() else None
    geojson = next((p for p in (run_json.with_name(f"{name}.geojson"), run_json.with_name(f"{name}.geojson.gz"))
                    if p.is_file()), None)
    if det is not None and geojson is not None and det.areas_um2 is not None:  # area_um2: a contour model's run
        attach_outlines(det, geojson)
    table = run_json.with_name(f"{name}.nuclei.parquet")
    if det is not None and table.is_file():
        attach_measurements(det, table)
    return ViewerSource(slide=Path(run["slide"]), name=name, mpp=mpp or run.get("mpp"), detections=det, run=run)


def _match_rows(det: Detections, scores, fits) -> np.ndarray | None:
    """For each of a file's ``scores`` (a subsequence of the CSV's rows, in the CSV's order), the CSV row it is:
    the next row with the same score (to the CSV's rounding) for which ``fits(row, k)`` holds. None when a
    file's entry has no such row (not this run's file, or edited by hand)."""
    n = len(det.scores)
    rows = np.empty(len(scores), np.int64)
    row = 0
    for k, score in enumerate(scores):
        while row < n and not (abs(det.scores[row] - score) < 6e-5 and fits(row, k)):
            row += 1
        if row == n:
            return None
        rows[k] = row
        row += 1
    return rows


def attach_outlines(det: Detections, geojson: Path) -> None:
    """The contours in the run's GeoJSON, matched to the CSV's rows (each feature is the next row with the same
    score whose box holds the contour's centre); nuclei under the cut keep their box."""
    from ..annotations import read_geojson

    feats = read_geojson(geojson)
    if not feats.polygons or feats.scores is None:
        return
    centres = [p.mean(axis=0) for p in feats.polygons]
    b = det.boxes

    def holds(row, k):
        cx, cy = centres[k]
        return b[row, 0] - 1 <= cx <= b[row, 2] + 1 and b[row, 1] - 1 <= cy <= b[row, 3] + 1

    rows = _match_rows(det, feats.scores, holds)
    if rows is None:
        return  # boxes only
    counts = np.zeros(len(det.scores), np.int64)
    counts[rows] = [len(p) for p in feats.polygons]
    det.outline_offsets = np.r_[0, np.cumsum(counts)]
    det.outline_xy = np.concatenate(feats.polygons).astype(np.float32) if len(rows) else np.zeros((0, 2), np.float32)


#: what a click shows from the features table (column, label, unit), when the run measured them
SHOWN_MEASUREMENTS = (("Size.Area_um2", "area", "µm²"), ("Shape.Circularity", "circularity", ""),
                      ("Shape.Solidity", "solidity", ""), ("Size.MajorAxisLength_um", "major axis", "µm"),
                      ("Nucleus.Intensity.Mean", "hematoxylin mean", ""), ("Cytoplasm.Intensity.Mean", "eosin ring mean", ""))


def attach_measurements(det: Detections, table: Path) -> None:
    """A few columns of NAME.nuclei.parquet, matched to the CSV's rows (each table row is the next CSV row with
    the same score and box, to rounding)."""
    try:
        import pyarrow.parquet as pq

        names = [c for c, _, _ in SHOWN_MEASUREMENTS]
        t = pq.read_table(table, columns=[c for c in ("x0", "y0", "x1", "y1", "score") + tuple(names)
                                          if c in pq.read_schema(table).names])
    except Exception:  # an unreadable table: the viewer still shows the nuclei
        return
    cols = t.to_pydict()
    boxes = np.column_stack([cols["x0"], cols["y0"], cols["x1"], cols["y1"]]).astype(np.float64).reshape(-1, 4)
    rows = _match_rows(det, cols["score"], lambda row, k: np.abs(det.boxes[row] - boxes[k]).max() < 0.2)
    if rows is None:
        return  # not this run's table
    found = {}
    for c in names:
        if c in cols:
            found[c] = np.full(len(det.scores), np.nan)
            found[c][rows] = np.asarray(cols[c], dtype=np.float64)
    det.measurements = found


def _with_results(src: ViewerSource, slide: Path) -> ViewerSource:
    src.slide = slide
    return src


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, source: ViewerSource, port: int = 0):
        from openslide.deepzoom import DeepZoomGenerator

        from ..slide import Slide

        self.source = source
        self.slide = Slide(source.slide, mpp=source.mpp)  # clear errors for a missing or unreadable slide
        osr = self.slide.as_openslide()
        # limit_bounds=False keeps Deep Zoom's image coordinates equal to base-level pixels, the nuclei's
        self.dz = DeepZoomGenerator(osr, tile_size=TILE_SIZE, overlap=1, limit_bounds=False)
        self.dzi = self.dz.get_dzi("jpeg").encode()
        self.static = {p.relative_to(STATIC).as_posix(): p.read_bytes() for p in STATIC.rglob("*") if p.is_file()}
        det = source.detections
        self.detections = det.to_bytes() if det is not None else b""
        self.outlines = det.outlines_bytes() if det is not None else b""
        self.measurements = det.measurements_bytes() if det is not None else b""
        shown = {c: (label, unit) for c, label, unit in SHOWN_MEASUREMENTS}
        self.info = json.dumps({
            "name": source.name, "width": self.slide.dimensions[0], "height": self.slide.dimensions[1],
            "mpp": self.slide.mpp, "nuclei": 0 if det is None else int((det.scores >= det.score_cut).sum()),
            "candidates": 0 if det is None else len(det.scores),
            "score_cut": None if det is None else det.score_cut, "min_score": None if det is None else det.min_score,
            "outlines": bool(self.outlines),
            "measurements": [] if det is None else [[*shown[c]] for c in det.measurements],
            "columns": ["x0", "y0", "x1", "y1", "score"] if det is None else det.columns,
            "types": [] if det is None else det.type_legend(),
        }).encode()
        # OpenSlide handles are thread-safe; a PIL-backed ImageSlide is not, so tile reads are serialised there
        self.tile_lock = threading.Lock() if self.slide.format == "image" else None
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as exc:
            self.slide.close()
            raise WsinucleiError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        import io

        if level >= self.dz.level_count:
            return None
        cols, rows = self.dz.level_tiles[level]
        if col >= cols or row >= rows:
            return None
        if self.tile_lock is not None:
            with self.tile_lock:
                im = self.dz.get_tile(level, (col, row))
        else:
            im = self.dz.get_tile(level, (col, row))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=TILE_QUALITY)
        return buf.getvalue()

    def server_close(self) -> None:
        super().server_close()
        self.slide.close()


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # the terminal shows the address, not every tile request
        pass

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _host_allowed(self) -> bool:
        """Only requests addressed to this server by a loopback name: a page on another site that points its
        own name at 127.0.0.1 (DNS rebinding) sends its name in Host, and must not read the slide or nuclei."""
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._send(HTTPStatus.FORBIDDEN, b"forbidden: address this viewer as 127.0.0.1 or localhost\n",
                       "text/plain; charset=utf-8")
            return
        path = self.path.split("?", 1)[0]
        srv = self.server
        if path in ("/", "/index.html"):
            return self._send(200, srv.static["index.html"], _TYPES[".html"])
        if path.startswith("/static/"):
            body = srv.static.get(path[len("/static/"):])
            if body is None:
                return self._not_found()
            return self._send(200, body, _TYPES.get(Path(path).suffix, "application/octet-stream"), cache=True)
        if path == "/api/info":
            return self._send(200, srv.info, "application/json")
        if path == "/api/nuclei":
            return self._send(200, srv.detections, "application/octet-stream")
        if path == "/api/outlines":
            return self._send(200, srv.outlines, "application/octet-stream")
        if path == "/api/measurements":
            return self._send(200, srv.measurements, "application/octet-stream")
        if path == "/dzi/slide.dzi":
            return self._send(200, srv.dzi, "application/xml")
        m = _TILE.match(path)
        if m:
            try:
                body = srv.tile(int(m[1]), int(m[2]), int(m[3]))
            except Exception as exc:  # a read error on one tile must not take the server down
                return self._send(500, f"tile unreadable: {exc}\n".encode(), "text/plain; charset=utf-8")
            if body is None:
                return self._not_found()
            return self._send(200, body, "image/jpeg", cache=True)
        return self._not_found()

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only viewer\n", "text/plain; charset=utf-8")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


def serve(source: ViewerSource, port: int = 0, open_browser: bool = True, log=print) -> None:
    """Serve until Ctrl-C."""
    server = ViewerServer(source, port)
    det = source.detections
    what = f"{json.loads(server.info)['nuclei']} nuclei" if det is not None else "no results"
    log(f"wsinuclei view: {source.name} ({what}) at {server.url}  (Ctrl-C stops)")
    if open_browser:
        import webbrowser

        try:
            webbrowser.open(server.url)
        except Exception:  # no browser here: the printed address is enough
            pass
    import signal

    def stop(*_):
        raise KeyboardInterrupt

    # Ctrl-C stops it, and so does a plain kill (SIGTERM); a shell may have started it with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log("wsinuclei view: stopped")
    finally:
        server.server_close()
