// wsinuclei viewer: OpenSeadragon shows the slide; one canvas above it shows the nuclei.
// A whole slide holds hundreds of thousands of nuclei, so nothing here is one DOM element per nucleus: the
// nuclei are one Float32Array, bucketed into a grid of cells, and each frame draws only the cells in view,
// as outlines when they are big enough to see and few enough to draw, as dots while dots would not merge on
// screen, and only then as a density map.
"use strict";

(async function () {
  const BOX_COLOUR = "#00e05a";
  const PICK_COLOUR = "#ffd400";
  const CELL = 512;           // image px per bucket of the spatial index
  const DENSITY_CELL = 64;    // image px per density-map cell
  const MAX_BOXES = 40000;    // more boxes than this in view: dots
  const MIN_BOX_PX = 3;       // boxes smaller than this on screen: dots
  const MAX_DOTS = 150000;    // more dots than this in view: density map
  const MIN_DOT_SPACING_PX = 4;  // nuclei closer than this on screen where the slide is densest: density map
  const DOT_PX = 2;           // a dot's side on screen

  const state = { ready: false, frames: 0, lastFrameMs: 0, mode: "", inView: 0, total: 0, cut: 0.5 };
  window.wsinuclei = state;
  const $ = (id) => document.getElementById(id);

  const info = await (await fetch("/api/info")).json();
  const raw = await (await fetch("/api/nuclei")).arrayBuffer();
  const ncol = info.columns.length;
  const data = new Float32Array(raw);
  const n = data.length / ncol;
  const areaCol = info.columns.indexOf("area_um2");
  const hasArea = areaCol >= 0;
  // a typed model: column typeCol holds each nucleus' type, an index into info.types ({name, colour})
  const typeCol = info.columns.indexOf("type");
  const types = info.types || [];
  const shown = types.map(() => true);
  const hidden = (o) => typeCol >= 0 && !shown[data[o + typeCol]];
  // contours (contour models): vertices of nucleus i are xy[2 * offs[i]] .. xy[2 * offs[i + 1]]
  let offs = null, xy = null;
  // measurements (runs with --features): info.measurements[k] = [label, unit]; nucleus i's at meas[i * m + k]
  const m = info.measurements.length;
  const meas = m ? new Float32Array(await (await fetch("/api/measurements")).arrayBuffer()) : null;
  if (info.outlines) {
    const ob = await (await fetch("/api/outlines")).arrayBuffer();
    offs = new Int32Array(ob, 0, n + 1);
    xy = new Float32Array(ob, 4 * (n + 1));
  }
  state.cut = info.score_cut === null ? 0.5 : info.score_cut;
  $("slide-name").textContent = info.name;
  document.title = `${info.name} · wsinuclei`;
  const slider = $("cut");
  slider.min = info.min_score === null ? 0 : info.min_score;
  slider.value = state.cut;

  // -- spatial index: nuclei sorted by the cell that holds their centre (counting sort) -------------------
  const gw = Math.max(1, Math.ceil(info.width / CELL)), gh = Math.max(1, Math.ceil(info.height / CELL));
  const cellOf = new Int32Array(n);
  const cellStart = new Int32Array(gw * gh + 1);
  for (let i = 0; i < n; i++) {
    const o = i * ncol;
    const cx = Math.min(gw - 1, Math.max(0, Math.floor((data[o] + data[o + 2]) / 2 / CELL)));
    const cy = Math.min(gh - 1, Math.max(0, Math.floor((data[o + 1] + data[o + 3]) / 2 / CELL)));
    cellOf[i] = cy * gw + cx;
    cellStart[cellOf[i] + 1]++;
  }
  for (let c = 0; c < gw * gh; c++) cellStart[c + 1] += cellStart[c];
  const order = new Int32Array(n);
  const fill = cellStart.slice(0, gw * gh);
  for (let i = 0; i < n; i++) order[fill[cellOf[i]]++] = i;
  const widths = new Float32Array(n);
  for (let i = 0; i < n; i++) widths[i] = data[i * ncol + 2] - data[i * ncol];
  const typicalWidth = n ? widths.slice().sort()[Math.floor(n / 2)] : 0;
  state.typicalWidth = typicalWidth;

  // -- density map at the current cut, drawn once per cut into a small canvas -----------------------------
  const dw = Math.max(1, Math.ceil(info.width / DENSITY_CELL)), dh = Math.max(1, Math.ceil(info.height / DENSITY_CELL));
  const density = document.createElement("canvas");
  density.width = dw; density.height = dh;
  function rebuildDensity() {
    const counts = new Uint16Array(dw * dh);
    const perType = types.map(() => 0);
    let total = 0, top = 0;
    for (let i = 0; i < n; i++) {
      const o = i * ncol;
      if (data[o + 4] < state.cut) continue;
      if (typeCol >= 0) perType[data[o + typeCol]]++;
      if (hidden(o)) continue;
      total++;
      const x = Math.min(dw - 1, Math.floor((data[o] + data[o + 2]) / 2 / DENSITY_CELL));
      const y = Math.min(dh - 1, Math.floor((data[o + 1] + data[o + 3]) / 2 / DENSITY_CELL));
      const k = y * dw + x;
      if (counts[k] < 65535) counts[k]++;
      if (counts[k] > top) top = counts[k];
    }
    const img = density.getContext("2d").createImageData(dw, dh);
    for (let k = 0; k < counts.length; k++) {
      if (!counts[k]) continue;
      const t = Math.sqrt(counts[k] / top);  // yellow (sparse) to red (dense)
      img.data[4 * k] = 255; img.data[4 * k + 1] = Math.round(230 * (1 - t)); img.data[4 * k + 2] = 0;
      img.data[4 * k + 3] = Math.round(40 + 120 * t);
    }
    density.getContext("2d").putImageData(img, 0, 0);
    // how close nuclei come where the slide is densest (the 95th percentile of the occupied cells' counts):
    // at a zoom where that spacing falls under MIN_DOT_SPACING_PX on screen, dots would merge
    const occupied = Array.from(counts.filter((c) => c > 0)).sort((a, b) => a - b);
    const dense = occupied.length ? occupied[Math.min(occupied.length - 1, Math.floor(0.95 * occupied.length))] : 0;
    state.denseSpacing = dense ? DENSITY_CELL / Math.sqrt(dense) : Infinity;  // image px between nuclei
    state.total = total;
    state.perType = perType;
    $("count-total").textContent = total.toLocaleString("en-US");
    types.forEach((t, k) => { $(`count-type-${k}`).textContent = perType[k].toLocaleString("en-US"); });
  }

  // -- the legend of a typed model: a colour, a count at the cut and a toggle per type ----------------------
  if (types.length) {
    const legend = $("types");
    types.forEach((t, k) => {
      const label = document.createElement("label");
      label.className = "type";
      label.innerHTML = `<input type="checkbox" checked data-type="${k}"><span class="swatch"></span>` +
        `<span class="type-name"></span> <span class="type-count" id="count-type-${k}">0</span>`;
      label.querySelector(".swatch").style.background = t.colour;
      label.querySelector(".type-name").textContent = t.name;
      label.querySelector("input").addEventListener("change", (e) => {
        shown[k] = e.target.checked;
        rebuildDensity();
        draw();
      });
      legend.appendChild(label);
    });
    legend.hidden = false;
  }

  // -- the viewer and its overlay --------------------------------------------------------------------------
  const viewer = OpenSeadragon({
    id: "osd", prefixUrl: "/static/openseadragon/images/", tileSources: "/dzi/slide.dzi",
    showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 4, visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false }, crossOriginPolicy: false,
  });
  state.viewer = viewer;
  const canvas = document.createElement("canvas");
  canvas.id = "nuclei-overlay";
  canvas.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none";
  viewer.canvas.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  let picked = -1;

  function transform() {
    const vp = viewer.viewport;
    const a = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const b = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(info.width, info.height));
    return { sx: (b.x - a.x) / info.width, sy: (b.y - a.y) / info.height, ox: a.x, oy: a.y };
  }

  function draw() {
    if (!viewer.world.getItemCount()) return;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
      canvas.width = Math.round(cw * dpr); canvas.height = Math.round(ch * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    const { sx, sy, ox, oy } = transform();
    // the part of the image in view, in image px, and the index cells it covers
    const x0 = -ox / sx, x1 = (cw - ox) / sx, y0 = -oy / sy, y1 = (ch - oy) / sy;
    const c0 = Math.max(0, Math.floor(x0 / CELL)), c1 = Math.min(gw - 1, Math.floor(x1 / CELL));
    const r0 = Math.max(0, Math.floor(y0 / CELL)), r1 = Math.min(gh - 1, Math.floor(y1 / CELL));
    const cut = state.cut;
    let inView = 0;
    const visible = [];
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const cell = r * gw + c;
        for (let j = cellStart[cell]; j < cellStart[cell + 1]; j++) {
          const i = order[j], o = i * ncol;
          if (data[o + 4] < cut || hidden(o)) continue;
          const mx = (data[o] + data[o + 2]) / 2, my = (data[o + 1] + data[o + 3]) / 2;
          if (mx < x0 || mx >= x1 || my < y0 || my >= y1) continue;
          inView++;
          if (visible.length <= MAX_DOTS) visible.push(i);
        }
      }
    }
    const mode = modeAt(sx, inView);
    const boxes = mode === "boxes";
    // one path per colour: every nucleus in the box colour, or each type's in its own
    const groups = typeCol >= 0 ? types.map(() => []) : [visible];
    if (typeCol >= 0) for (const i of visible) groups[data[i * ncol + typeCol]].push(i);
    if (mode === "dots") {  // small squares at the nuclei's centres
      const h = DOT_PX / 2;
      groups.forEach((group, g) => {
        ctx.beginPath();
        for (const i of group) {
          const o = i * ncol;
          ctx.rect((data[o] + data[o + 2]) / 2 * sx + ox - h, (data[o + 1] + data[o + 3]) / 2 * sy + oy - h, DOT_PX, DOT_PX);
        }
        ctx.fillStyle = typeCol >= 0 ? types[g].colour : BOX_COLOUR;
        ctx.fill();
      });
    } else if (boxes) {
      ctx.lineWidth = 1.5;
      groups.forEach((group, g) => {
        ctx.beginPath();
        for (const i of group) {
          const o = i * ncol;
          if (offs !== null && offs[i + 1] > offs[i]) {  // the contour
            let k = 2 * offs[i];
            ctx.moveTo(xy[k] * sx + ox, xy[k + 1] * sy + oy);
            for (k += 2; k < 2 * offs[i + 1]; k += 2) ctx.lineTo(xy[k] * sx + ox, xy[k + 1] * sy + oy);
            ctx.closePath();
          } else {
            ctx.rect(data[o] * sx + ox, data[o + 1] * sy + oy, (data[o + 2] - data[o]) * sx, (data[o + 3] - data[o + 1]) * sy);
          }
        }
        ctx.strokeStyle = typeCol >= 0 ? types[g].colour : BOX_COLOUR;
        ctx.stroke();
      });
    } else if (state.total) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(density, ox, oy, dw * DENSITY_CELL * sx, dh * DENSITY_CELL * sy);
    }
    if (picked >= 0 && data[picked * ncol + 4] >= cut) {
      const o = picked * ncol;
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = PICK_COLOUR;
      ctx.strokeRect(data[o] * sx + ox, data[o + 1] * sy + oy, (data[o + 2] - data[o]) * sx, (data[o + 3] - data[o + 1]) * sy);
    }
    drawScaleBar(sx, ch);
    state.inView = inView;
    state.mode = mode;
    $("count-view").textContent = inView.toLocaleString("en-US");
    $("mode").textContent = mode === "boxes" ? "" : mode === "dots" ? "dots (zoom in for outlines)" :
      "density map (zoom in for dots)";
    state.frames++;
    state.lastFrameMs = performance.now() - t0;
  }

  // what a frame at ``sx`` screen px per image px, with ``inView`` nuclei in view, draws
  function modeAt(sx, inView) {
    if (inView <= MAX_BOXES && typicalWidth * sx >= MIN_BOX_PX) return "boxes";
    if (inView <= MAX_DOTS && state.denseSpacing * sx >= MIN_DOT_SPACING_PX) return "dots";
    return "density";
  }
  state.modeAt = modeAt;

  function drawScaleBar(sx, ch) {
    if (!info.mpp) return;
    const pxPerUm = sx / info.mpp;
    const want = 120 / pxPerUm;
    const p = Math.pow(10, Math.floor(Math.log10(want)));
    const um = [5, 2, 1].map((m) => m * p).find((v) => v <= want) || p;
    const len = um * pxPerUm;
    const label = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
    ctx.fillStyle = "rgba(255,255,255,0.85)";
    ctx.fillRect(10, ch - 34, len + 16, 26);
    ctx.fillStyle = "#000";
    ctx.fillRect(18, ch - 14, len, 3);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(label, 18, ch - 19);
  }

  function pick(point) {
    const cx = Math.floor(point.x / CELL), cy = Math.floor(point.y / CELL);
    let best = -1, bestArea = Infinity;
    for (let r = Math.max(0, cy - 1); r <= Math.min(gh - 1, cy + 1); r++) {
      for (let c = Math.max(0, cx - 1); c <= Math.min(gw - 1, cx + 1); c++) {
        const cell = r * gw + c;
        for (let j = cellStart[cell]; j < cellStart[cell + 1]; j++) {
          const i = order[j], o = i * ncol;
          if (data[o + 4] < state.cut || hidden(o)) continue;
          if (point.x < data[o] || point.x > data[o + 2] || point.y < data[o + 1] || point.y > data[o + 3]) continue;
          const area = (data[o + 2] - data[o]) * (data[o + 3] - data[o + 1]);
          if (area < bestArea) { best = i; bestArea = area; }
        }
      }
    }
    return best;
  }

  function showDetails(i) {
    const box = $("details");
    if (i < 0) { box.hidden = true; return; }
    const o = i * ncol;
    const um = (v) => (info.mpp ? `${(v * info.mpp).toFixed(1)} µm` : `${v.toFixed(0)} px`);
    const kind = typeCol >= 0 ? types[data[o + typeCol]].name : "nucleus";
    let html = `<b>${kind}</b><br>score ${data[o + 4].toFixed(3)}<br>` +
      `box ${um(data[o + 2] - data[o])} × ${um(data[o + 3] - data[o + 1])}<br>` +
      `centre ${((data[o] + data[o + 2]) / 2).toFixed(0)}, ${((data[o + 1] + data[o + 3]) / 2).toFixed(0)} px`;
    if (hasArea) html += `<br>area ${data[o + areaCol].toFixed(1)} µm² (contour)`;
    for (let k = 0; k < m; k++) {
      const v = meas[i * m + k];
      if (Number.isFinite(v)) html += `<br>${info.measurements[k][0]} ${v.toFixed(Math.abs(v) < 10 ? 3 : 1)} ${info.measurements[k][1]}`;
    }
    box.innerHTML = html;
    box.hidden = false;
  }

  viewer.addHandler("canvas-click", (e) => {
    if (!e.quick) return;
    picked = pick(viewer.viewport.viewerElementToImageCoordinates(e.position));
    state.picked = picked;
    showDetails(picked);
    draw();
  });
  slider.addEventListener("input", () => {
    state.cut = parseFloat(slider.value);
    $("cut-value").textContent = state.cut.toFixed(2);
    rebuildDensity();
    draw();
  });
  viewer.addHandler("update-viewport", draw);
  viewer.addHandler("resize", draw);
  viewer.addHandler("open", () => {
    const item = viewer.world.getItemAt(0);
    const ready = () => {
      draw();
      state.ready = true;
      $("status").textContent = "";
      $("status").dataset.ready = "1";
    };
    if (item.getFullyLoaded()) ready();
    else item.addHandler("fully-loaded-change", (e) => { if (e.fullyLoaded && !state.ready) ready(); });
  });
  viewer.addHandler("open-failed", (e) => { $("status").textContent = `cannot open the slide: ${e.message}`; });
  $("cut-value").textContent = state.cut.toFixed(2);
  rebuildDensity();
})().catch((err) => {
  const s = document.getElementById("status");
  s.textContent = `error: ${err}`;
  s.dataset.ready = "error";
});
