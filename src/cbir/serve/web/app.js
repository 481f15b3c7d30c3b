"use strict";
// The cbir search page: load the model's description, then search with an uploaded, a test or a gallery image,
// and refine the results by marking them relevant or not (relevance feedback: every round re-sends the query and
// all marks so far; the server keeps nothing between rounds).

const MODES = ["clustered", "class", "global"];
const STEPS = [
  ["decode", "decode"],
  ["preprocess", "preprocess"],
  ["forward", "CNN forward"],
  ["project_predict", "projection + prediction"],
  ["refine", "refine with the marks"],
  ["search_clustered", "search with clustering"],
  ["search_class", "search without clustering"],
  ["search_global", "search all images"],
  ["total", "total (server)"],
];
const MARK_LABELS = { relevant: "Relevant", irrelevant: "Not relevant" };
// query: what the next round re-sends ({kind: "image" | "test" | "gallery", file, id, label, previewUrl});
// marks: gallery id -> "relevant" | "irrelevant", kept across rounds; round: 1 for a new query
const state = { model: null, preview: null, busy: false, query: null, marks: new Map(), round: 1 };

function byId(id) {
  return document.getElementById(id);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function errorText(body, response) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return `${response.status} ${response.statusText}`;
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.assign("/login"); // a server started with a token: log in first
    throw new Error("this server needs its token: log in at /login");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) throw new Error(errorText(body, response));
  return body;
}

function formatBytes(n) {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MB` : `${Math.round(n / 1024)} KB`;
}

function formatShare(value) {
  return value === null || value === undefined ? "n/a" : value.toFixed(2);
}

function setStatus(text) {
  byId("status").textContent = text;
}

function showError(text) {
  const box = byId("error");
  box.textContent = text;
  box.hidden = !text;
}

function addEntry(list, term, value) {
  list.append(element("dt", "", term), element("dd", "", String(value)));
}

function metricLabel(key, titles) {
  let match = key.match(/^(map|precision)_at_(\d+)_(\w+)$/);
  if (match && titles[match[3]]) return `${match[1] === "map" ? "mAP" : "P"}@${match[2]} ${titles[match[3]]}`;
  match = key.match(/^map_(\w+)$/);
  if (match && titles[match[1]]) return `mAP ${titles[match[1]]}`;
  match = key.match(/^recall_at_(\d+)_vs_exact_(\w+)$/); // a collection without labels
  if (match) return `recall@${match[1]} ${titles[match[2]] || match[2].replace("_", " ")} vs exact`;
  return key === "accuracy" ? "classification accuracy" : null;
}

function renderModel(model) {
  state.model = model;
  byId("model-title").textContent = `${model.dataset} · ${model.backbone} · split ${model.split} · PCA ${model.pca} · k = ${model.k}`;
  const info = byId("model-info");
  info.replaceChildren();
  addEntry(info, "dataset", model.dataset);
  addEntry(info, "backbone", model.backbone);
  addEntry(info, "network", `${model.arch}, ${model.pooling} pooling, ${model.image_size} px`);
  addEntry(info, "precision", model.precision_notice ? `${model.precision} (${model.precision_notice})` : model.precision);
  addEntry(info, "split", model.split);
  addEntry(info, "PCA size", model.pca === "original" ? `original (${model.reduced_dim})` : model.pca);
  addEntry(info, model.labelled === false ? "k (clusters)" : "k (clusters per class)", model.k);
  addEntry(info, "gallery size", model.gallery_size);
  addEntry(info, "test images", model.test_images);
  if (model.labelled === false) addEntry(info, "labels", "none (a collection: no class is predicted)");
  else addEntry(info, "classes", model.classes.length);
  addEntry(info, "distance", model.metric);
  addEntry(info, "search setting", model.setting);
  const metrics = byId("model-metrics");
  metrics.replaceChildren();
  for (const key of Object.keys(model.metrics)) {
    const label = metricLabel(key, model.modes);
    if (label) addEntry(metrics, label, model.metrics[key].toFixed(3));
  }
  if (!metrics.children.length) addEntry(metrics, "metrics", "no metrics file in the model folder");
  byId("max-upload").textContent = formatBytes(model.max_upload_bytes);
  byId("top-k").value = model.top_k;
  byId("top-k").max = model.max_top_k;
  if (model.labelled === false) showCollectionColumns(model.modes);
}

// A collection without labels: its class search is the global one (hidden), its clustered one probes the nearest cluster.
function showCollectionColumns(titles) {
  document.querySelector('.column[data-mode="class"]').hidden = true;
  const clustered = document.querySelector('.column[data-mode="clustered"]');
  clustered.querySelector("h3").textContent = titles.clustered.charAt(0).toUpperCase() + titles.clustered.slice(1);
  clustered.querySelector("p").textContent = "nearest centroid among all clusters, then its images";
}

function renderTestImages(images) {
  const select = byId("test-select");
  select.replaceChildren();
  for (const image of images) {
    const unlabelled = state.model && state.model.labelled === false;
    const option = element("option", "", unlabelled ? image.id : `${image.id} (${image.class})`);
    option.value = image.id;
    select.append(option);
  }
  byId("test-search").disabled = images.length === 0;
  if (!images.length) select.append(element("option", "", "no test images known"));
}

const SIMILARITY = {
  cosine: ["cos", "cosine similarity to the query (1: same direction)"],
  relevance: ["p", "estimated probability that the result is relevant (calibrated on the test split)"],
};

function tile(result, kind) {
  // no verdict when the query's class is unknown (null) or the cell has no labels (no such field)
  const verdict = result.correct === true ? "right" : result.correct === false ? "wrong" : "";
  const group = "cluster" in result ? `cluster ${result.cluster}` : result.class;
  const noMatch = result.good_match === false;
  const item = element("li", `tile ${verdict} ${noMatch ? "no-match" : ""}`.trim());
  item.dataset.id = result.id;
  const image = element("img");
  image.src = result.thumbnail;
  image.alt = `${group} (${result.id})`;
  image.loading = "lazy";
  const meta = element("div", "meta");
  meta.append(
    element("span", "rank", `#${result.rank}`),
    element("span", "class", group),
    element("span", "distance", result.distance.toFixed(4)),
  );
  if (result.similarity !== null && result.similarity !== undefined && SIMILARITY[kind]) {
    const [short, help] = SIMILARITY[kind];
    const score = element("span", "similarity", `${short} ${result.similarity.toFixed(3)}`);
    score.title = help;
    meta.append(score);
  }
  if (noMatch) {
    const label = element("span", "no-match-label", "no good match");
    label.title = "farther than the cell's calibrated distance: more likely not relevant than relevant";
    meta.append(label);
  }
  if (verdict) {
    const marker = element("span", "marker", result.correct ? "✓" : "✗");
    marker.title = result.correct ? "right class" : "wrong class";
    meta.append(marker);
  }
  item.append(image, meta, tileActions(result.id));
  return item;
}

// The tile's buttons: mark it relevant or not (toggles, kept by id across rounds), or search with it.
function tileActions(id) {
  const actions = element("div", "actions");
  for (const mark of ["relevant", "irrelevant"]) {
    const button = element("button", `mark ${mark}`, MARK_LABELS[mark]);
    button.type = "button";
    button.dataset.mark = mark;
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-label", `${MARK_LABELS[mark]}: ${id}`);
    button.addEventListener("click", () => toggleMark(id, mark));
    actions.append(button);
  }
  const more = element("button", "more", "More like this");
  more.type = "button";
  more.setAttribute("aria-label", `More like this: ${id}`);
  more.addEventListener("click", () => moreLikeThis(id));
  actions.append(more);
  return actions;
}

function toggleMark(id, mark) {
  const limit = state.model ? state.model.max_marks : 200;
  if (state.marks.get(id) === mark) state.marks.delete(id);
  else if (state.marks.has(id) || state.marks.size < limit) state.marks.set(id, mark);
  else showError(`At most ${limit} marks: unmark some, or start over`);
  showMarks();
}

// Every tile of a marked id shows its mark (in each column, and in later rounds); the buttons follow the marks.
function showMarks() {
  for (const item of document.querySelectorAll(".tile")) {
    const mark = state.marks.get(item.dataset.id) || "";
    if (mark) item.dataset.mark = mark;
    else delete item.dataset.mark;
    for (const button of item.querySelectorAll("button.mark")) {
      button.setAttribute("aria-pressed", String(button.dataset.mark === mark));
    }
  }
  const counts = { relevant: 0, irrelevant: 0 };
  for (const mark of state.marks.values()) counts[mark] += 1;
  byId("marks-summary").textContent = state.marks.size
    ? `Marked: ${counts.relevant} relevant, ${counts.irrelevant} not relevant. Refine runs the next round with them.`
    : "Mark results relevant or not relevant, then refine: the next round learns from every mark so far. " +
      '"More like this" searches with a result itself.';
  byId("refine").disabled = !state.query || !state.marks.size;
  byId("start-over").disabled = !state.query || (!state.marks.size && state.round === 1);
}

function showRound(answer) {
  const info = answer.feedback;
  const how = info ? ` · ${info.method === "learned" ? "learned from" : "Rocchio with"} ${info.relevant} relevant, ${info.irrelevant} not relevant` : "";
  byId("round").textContent = `round ${state.round}${how}`;
}

function renderAnswer(answer, previewUrl) {
  const query = answer.query;
  byId("query-image").src = query.preview || previewUrl; // the server's JPEG of an upload: HEIC and RAW show too
  const about = [query.source === "gallery" ? `more like ${query.name}` : query.name];
  if (query.width !== null) about.push(`${query.width}×${query.height}`);
  if (query.true_class) about.push(`class ${query.true_class}`);
  byId("query-name").textContent = about.join(" · ");
  const prediction = byId("prediction");
  if (answer.nearest_clusters) renderNearestClusters(prediction, answer.nearest_clusters);
  else renderPrediction(prediction, answer);
  const noMatch = answer.no_match;
  byId("no-match-note").textContent = noMatch.distance === null
    ? `No result is marked "no good match": ${noMatch.source}.`
    : `Results farther than distance ${noMatch.distance.toFixed(4)} are marked "no good match" (more likely not relevant than relevant; on the test split P = ${formatShare(noMatch.precision)}, R = ${formatShare(noMatch.recall)}).`;
  byId("no-match-note").title = noMatch.source;
  const rows = byId("timings").tBodies[0];
  rows.replaceChildren();
  for (const [key, label] of STEPS) {
    if (!(key in answer.timings_ms)) continue;
    const row = element("tr");
    row.dataset.step = key;
    row.append(element("th", "", label), element("td", "", `${answer.timings_ms[key].toFixed(1)} ms`));
    rows.append(row);
  }
  for (const mode of MODES) {
    const list = byId(`results-${mode}`);
    list.replaceChildren(...(answer.results[mode] || []).map((result) => tile(result, answer.similarity)));
    if (!list.children.length) list.append(element("li", "empty muted", "no results"));
  }
  showRound(answer);
  showMarks();
  byId("results").hidden = false;
  document.body.dataset.state = "done";
}

function renderPrediction(prediction, answer) {
  prediction.replaceChildren(
    element("span", "", "predicted class "),
    element("strong", "predicted", answer.predicted_class),
    element("span", "", ` with probability ${answer.probability.toFixed(3)}`),
  );
  if (answer.prediction_correct !== null) {
    prediction.append(element("span", answer.prediction_correct ? "verdict right" : "verdict wrong",
      answer.prediction_correct ? " ✓ right" : " ✗ wrong"));
  }
}

function renderNearestClusters(prediction, clusters) {
  prediction.replaceChildren(element("span", "", "nearest clusters "));
  clusters.forEach((cluster, i) => {
    if (i) prediction.append(element("span", "", " · "));
    const item = element("strong", "nearest-cluster", `${cluster.cluster}`);
    item.dataset.cluster = cluster.cluster;
    prediction.append(item, element("span", "muted", ` (d ${cluster.distance.toFixed(4)}, ${cluster.size} images)`));
  });
}

// One request; `done` runs before the answer is shown: it makes the query, marks and round the page's state
// (a failed request leaves the page as it was).
async function search(form, previewUrl, label, done) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.state = "busy";
  showError("");
  setStatus(`searching with ${label}…`);
  form.append("top_k", byId("top-k").value || state.model.top_k);
  const started = performance.now();
  try {
    const answer = await api("/api/query", { method: "POST", body: form });
    if (done) done();
    renderAnswer(answer, previewUrl);
    setStatus(`${label}: ${(performance.now() - started).toFixed(0)} ms in the browser, ${answer.timings_ms.total.toFixed(1)} ms on the server`);
  } catch (error) {
    document.body.dataset.state = "error";
    setStatus("");
    showError(`Cannot search with ${label}: ${error.message}`);
  } finally {
    state.busy = false;
  }
}

function searchFile(file) {
  if (!file) return;
  if (state.model && file.size > state.model.max_upload_bytes) {
    document.body.dataset.state = "error";
    showError(`${file.name} is ${formatBytes(file.size)}, over the limit of ${formatBytes(state.model.max_upload_bytes)}`);
    return;
  }
  if (state.preview) URL.revokeObjectURL(state.preview);
  state.preview = URL.createObjectURL(file);
  ask({ kind: "image", file, label: file.name, previewUrl: state.preview }, new Map(), 1);
}

function imageUrl(id) {
  return `/api/images/${id.split("/").map(encodeURIComponent).join("/")}`;
}

function searchTestImage() {
  const id = byId("test-select").value;
  if (!id) return;
  const option = byId("test-select").selectedOptions[0];
  ask({ kind: "test", id, label: option ? option.textContent : id, previewUrl: imageUrl(id) }, new Map(), 1);
}

// "More like this": a gallery image as a new query (no marks, round 1); the focus moves to the round's heading.
async function moreLikeThis(id) {
  await ask({ kind: "gallery", id, label: `more like ${id}`, previewUrl: imageUrl(id) }, new Map(), 1);
  if (state.query && state.query.id === id) byId("round").focus();
}

// A query with its marks: a new query, the next round (the same query again, with every mark so far), or round 1.
function ask(query, marks, round) {
  const form = new FormData();
  if (query.kind === "image") form.append("image", query.file, query.file.name); // the same File, sent again
  else form.append(query.kind === "test" ? "test_id" : "gallery_id", query.id);
  for (const [id, mark] of marks) form.append(mark === "relevant" ? "relevant_ids" : "irrelevant_ids", id);
  const label = round > 1 ? `${query.label} (round ${round})` : query.label;
  return search(form, query.previewUrl, label, () => Object.assign(state, { query, marks, round }));
}

function refine() {
  if (state.query && state.marks.size) ask(state.query, state.marks, state.round + 1); // marks made meanwhile stay
}

function startOver() {
  if (state.query) ask(state.query, new Map(), 1);
}

function wireDropZone() {
  const zone = byId("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer ? event.dataTransfer.files : [];
    if (files.length) searchFile(files[0]);
    else showError("Drop an image file (nothing usable was dropped)");
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") byId("file-input").click();
  });
  // a file dropped next to the zone must not make the browser navigate away
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());
}

async function start() {
  wireDropZone();
  byId("file-input").addEventListener("change", (event) => {
    searchFile(event.target.files[0]);
    event.target.value = "";
  });
  byId("test-search").addEventListener("click", searchTestImage);
  byId("refine").addEventListener("click", refine);
  byId("start-over").addEventListener("click", startOver);
  try {
    renderModel(await api("/api/model"));
    renderTestImages(await api("/api/test-images"));
    document.body.dataset.state = "ready";
  } catch (error) {
    showError(`Cannot load the model description: ${error.message}`);
  }
}

document.addEventListener("DOMContentLoaded", start);
