// The keyboard-and-click grid of ImageClassifierCleaner (an anywidget ES module; no network, no build).
// The kernel owns every choice: this code only draws the page it is sent and sends back what the
// person did ({action, index, label}); the kernel answers with the new marks.

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el: host }) {
  const root = el("div", "nbtrain-review");
  root.tabIndex = 0;
  // JupyterLab and Notebook 7 (Lumino) leave keys alone inside an element with this attribute, so
  // "d", "a" or a digit never deletes, inserts or retypes a notebook cell while the grid has focus.
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  root.setAttribute("data-p-suppress-shortcuts", "true");
  const help = el("div", "nbtrain-help");
  const grid = el("div", "nbtrain-grid");
  root.append(help, grid);
  host.append(root);

  let cards = [];
  let urls = [];
  let cursor = 0;

  const send = (action, index, extra) => model.send({ action, index, ...(extra || {}) });

  function setCursor(i, scroll) {
    if (!cards.length) return;
    cursor = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c, j) => c.classList.toggle("is-cursor", j === cursor));
    if (scroll) cards[cursor].scrollIntoView({ block: "nearest" });
  }

  function columns() {
    if (cards.length < 2) return 1;
    const top = cards[0].offsetTop;
    const n = cards.findIndex((c) => c.offsetTop !== top);
    return n < 0 ? cards.length : n;
  }

  function renderMarks() {
    const marks = model.get("marks") || [];
    cards.forEach((card, i) => {
      const m = marks[i] || { kind: "keep" };
      card.classList.toggle("is-delete", m.kind === "delete");
      card.classList.toggle("is-relabel", m.kind === "relabel");
      card.classList.toggle("is-kept", m.kind === "kept");
      const badge = card.querySelector(".nbtrain-badge");
      badge.textContent = m.kind === "delete" ? "DELETE" : m.kind === "relabel" ? "→ " + m.label : m.kind === "kept" ? "✓" : "";
      const menu = card.querySelector("select");
      menu.value = m.kind === "delete" ? "<Delete>" : m.kind === "relabel" ? m.label : "<Keep>";
      card.querySelector(".nbtrain-del").textContent = m.kind === "delete" ? "Keep" : "Delete";
    });
    root.dataset.marksToken = String(model.get("marks_token"));
  }

  function card(info, i, image, classes) {
    const c = el("div", "nbtrain-card");
    c.dataset.i = String(i);
    c.title = info.name;
    const thumb = el("div", "nbtrain-thumb");
    const img = el("img");
    img.alt = info.name;
    const url = URL.createObjectURL(new Blob([image], { type: "image/jpeg" }));
    urls.push(url);
    img.src = url;
    thumb.append(img, el("span", "nbtrain-badge"));
    const caption = el("div", "nbtrain-caption");
    caption.innerHTML = info.caption;
    const actions = el("div", "nbtrain-actions");
    const del = el("button", "nbtrain-del", "Delete");
    del.title = "mark for deletion, or keep again (D)";
    actions.append(del);
    if (info.pred) {
      const acc = el("button", "nbtrain-accept", "✓ " + info.pred);
      acc.title = "relabel as the prediction, " + info.pred + " (A)";
      acc.disabled = info.pred === info.label;
      actions.append(acc);
    }
    const menu = el("select", "nbtrain-menu");
    for (const o of ["<Keep>", "<Delete>", ...classes]) {
      const opt = el("option", "", o);
      opt.value = o;
      menu.append(opt);
    }
    actions.append(menu);
    c.append(thumb, caption, actions);
    thumb.addEventListener("click", () => send("toggle_delete", i));
    del.addEventListener("click", () => send("toggle_delete", i));
    actions.querySelectorAll("button").forEach((b) => b.addEventListener("mousedown", (e) => e.preventDefault()));
    const acc = actions.querySelector(".nbtrain-accept");
    if (acc) acc.addEventListener("click", () => send("accept", i));
    menu.addEventListener("change", () => {
      const v = menu.value;
      if (v === "<Keep>") send("keep", i);
      else if (v === "<Delete>") send("delete", i);
      else send("relabel", i, { label: v });
      root.focus({ preventScroll: true });
    });
    c.addEventListener("mouseenter", () => setCursor(i, false));
    c.addEventListener("mousedown", (e) => {
      setCursor(i, false);
      if (e.target.tagName !== "SELECT") {
        e.preventDefault();
        root.focus({ preventScroll: true });
      }
    });
    return { c, img };
  }

  async function renderPage() {
    const infos = model.get("cards") || [];
    const images = model.get("images") || [];
    const classes = model.get("classes") || [];
    const token = model.get("page_token");
    help.textContent = model.get("help");
    root.style.setProperty("--nbtrain-thumb-h", model.get("thumb_height") + "px");
    root.style.setProperty("--nbtrain-card-w", model.get("card_width") + "px");
    const old = urls;
    urls = [];
    const built = infos.map((info, i) => card(info, i, images[i], classes));
    cards = built.map((b) => b.c);
    grid.replaceChildren(...cards);
    old.forEach((u) => URL.revokeObjectURL(u));
    renderMarks();
    setCursor(0, false);
    await Promise.all(built.map((b) => b.img.decode().catch(() => undefined)));
    if (model.get("page_token") === token) {
      root.dataset.pageToken = String(token);
      root.dataset.renderedAt = String(performance.now());
    }
  }

  root.addEventListener("keydown", (e) => {
    if (e.target.tagName === "SELECT" || e.altKey) return;
    const k = e.key;
    const classes = model.get("classes") || [];
    const ctrl = e.ctrlKey || e.metaKey;
    let handled = true;
    if (k === "ArrowRight") setCursor(cursor + 1, true);
    else if (k === "ArrowLeft") setCursor(cursor - 1, true);
    else if (k === "ArrowDown") setCursor(cursor + columns(), true);
    else if (k === "ArrowUp") setCursor(cursor - columns(), true);
    else if (ctrl && (k === "z" || k === "Z")) send("undo");
    else if (ctrl) handled = false;
    else if (k === "D") send("delete_all");
    else if (k === "A") send("accept_all");
    else if (k === "d" || k === "x" || k === "Delete" || k === "Backspace") send("toggle_delete", cursor);
    else if (k === "k") send("keep", cursor);
    else if (k === "a" || k === "Enter") send("accept", cursor);
    else if (/^[0-9]$/.test(k) && classes[Number(k)] !== undefined) send("relabel", cursor, { label: classes[Number(k)] });
    else if (k === "n" || k === "PageDown") send("next");
    else if (k === "p" || k === "PageUp") send("prev");
    else if (k === "u") send("undo");
    else handled = false;
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  });

  model.on("change:page_token", renderPage);
  model.on("change:marks_token", renderMarks);
  renderPage();
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}

export default { render };
