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

  // The cards are made once and reused from page to page: a page switch only swaps each card's image,
  // caption and buttons, which keeps it fast (no new menus, no layout of new elements).
  let pool = [];
  let hovered = null; // the card under the pointer: it stays the same element when the page changes

  function makeCard(i, classes) {
    const c = el("div", "nbtrain-card");
    c.dataset.i = String(i);
    const thumb = el("div", "nbtrain-thumb");
    const img = el("img");
    thumb.append(img, el("span", "nbtrain-badge"));
    const caption = el("div", "nbtrain-caption");
    const actions = el("div", "nbtrain-actions");
    const del = el("button", "nbtrain-del", "Delete");
    del.title = "mark for deletion, or keep again (D)";
    const acc = el("button", "nbtrain-accept", "✓");
    const menu = el("select", "nbtrain-menu");
    for (const o of ["<Keep>", "<Delete>", ...classes]) {
      const opt = el("option", "", o);
      opt.value = o;
      menu.append(opt);
    }
    actions.append(del, acc, menu);
    c.append(thumb, caption, actions);
    thumb.addEventListener("click", () => send("toggle_delete", i));
    del.addEventListener("click", () => send("toggle_delete", i));
    acc.addEventListener("click", () => send("accept", i));
    for (const b of [del, acc]) b.addEventListener("mousedown", (e) => e.preventDefault());
    menu.addEventListener("change", () => {
      const v = menu.value;
      if (v === "<Keep>") send("keep", i);
      else if (v === "<Delete>") send("delete", i);
      else send("relabel", i, { label: v });
      root.focus({ preventScroll: true });
    });
    c.addEventListener("mouseenter", () => {
      hovered = i;
      setCursor(i, false);
    });
    c.addEventListener("mouseleave", () => {
      if (hovered === i) hovered = null;
    });
    c.addEventListener("mousedown", (e) => {
      setCursor(i, false);
      if (e.target.tagName !== "SELECT") {
        e.preventDefault();
        root.focus({ preventScroll: true });
      }
    });
    grid.append(c);
    return { c, img, caption, acc };
  }

  function fillCard(card, info, image) {
    card.c.title = info.name;
    card.img.alt = info.name;
    const url = URL.createObjectURL(new Blob([image], { type: "image/jpeg" }));
    urls.push(url);
    card.img.src = url;
    card.caption.innerHTML = info.caption;
    card.acc.style.display = info.pred ? "" : "none";
    card.acc.textContent = "✓ " + info.pred;
    card.acc.title = "relabel as the prediction, " + info.pred + " (A)";
    card.acc.disabled = !info.pred || info.pred === info.label;
    card.c.style.display = "";
  }

  async function renderPage() {
    root.dataset.receivedAt = String(performance.now());
    const infos = model.get("cards") || [];
    const images = model.get("images") || [];
    const classes = model.get("classes") || [];
    const token = model.get("page_token");
    help.textContent = model.get("help");
    root.style.setProperty("--nbtrain-thumb-h", model.get("thumb_height") + "px");
    root.style.setProperty("--nbtrain-card-w", model.get("card_width") + "px");
    const old = urls;
    urls = [];
    while (pool.length < infos.length) pool.push(makeCard(pool.length, classes));
    pool.forEach((card, i) => {
      if (i < infos.length) fillCard(card, infos[i], images[i]);
      else card.c.style.display = "none";
    });
    cards = pool.slice(0, infos.length).map((p) => p.c);
    renderMarks();
    setCursor(hovered === null || hovered >= cards.length ? 0 : hovered, false);
    root.dataset.builtAt = String(performance.now());
    const shown = pool.slice(0, infos.length).map((p) => p.img);
    await Promise.all(shown.map((img) => img.decode().catch(() => undefined)));
    old.forEach((u) => URL.revokeObjectURL(u));
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
