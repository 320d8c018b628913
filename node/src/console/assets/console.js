// Isoflow console: live regions, theme, keyboard. No dependencies; the
// pages work without it (forms post, links navigate), it only adds.
(() => {
  "use strict";
  const root = document.documentElement;

  // Light or dark: the system's choice until the user picks one.
  const saved = localStorage.getItem("isoflow-theme");
  if (saved === "light" || saved === "dark") root.dataset.theme = saved;
  const toggleTheme = () => {
    const dark = root.dataset.theme
      ? root.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    root.dataset.theme = dark ? "light" : "dark";
    localStorage.setItem("isoflow-theme", root.dataset.theme);
  };

  // A live region follows its page's event stream: on each update the
  // page is fetched again and the region swapped, keeping which
  // <details> are open. The stream closes once the region says it is
  // final (no data-live any more).
  const follow = (region) => {
    const url = region.dataset.live;
    if (!url || !window.EventSource) return;
    const source = new EventSource(url);
    let timer = null;
    let fetching = false;
    const refresh = async () => {
      timer = null;
      if (fetching) { timer = setTimeout(refresh, 300); return; }
      fetching = true;
      try {
        const response = await fetch(location.href, { credentials: "same-origin" });
        // Signed out, or the run is gone: stop. Busy: try again shortly.
        if (response.redirected || response.status === 404) { source.close(); return; }
        if (!response.ok) { timer = setTimeout(refresh, 2000); return; }
        const html = await response.text();
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(region.id);
        // Nothing changed: keep the page as it is (and the element a
        // user is about to click).
        if (!fresh || fresh.innerHTML === region.innerHTML) return;
        const open = new Set([...region.querySelectorAll("details[id]")]
          .map((d) => [d.id, d.open]).filter(([, o]) => o).map(([id]) => id));
        const closed = new Set([...region.querySelectorAll("details[id]")]
          .filter((d) => !d.open).map((d) => d.id));
        region.replaceChildren(...fresh.childNodes);
        for (const attribute of [...region.attributes]) {
          if (attribute.name.startsWith("data-") && !fresh.hasAttribute(attribute.name)) {
            region.removeAttribute(attribute.name);
          }
        }
        for (const attribute of fresh.attributes) region.setAttribute(attribute.name, attribute.value);
        for (const d of region.querySelectorAll("details[id]")) {
          if (open.has(d.id)) d.open = true;
          if (closed.has(d.id)) d.open = false;
        }
        if (!region.dataset.live) source.close();
      } finally {
        fetching = false;
      }
    };
    const schedule = () => { if (!timer) timer = setTimeout(refresh, 150); };
    // What changed between rendering the page and the stream's (re)start
    // sent no event: fetch once each time the stream opens.
    source.addEventListener("open", schedule);
    source.addEventListener("update", schedule);
    source.addEventListener("ended", () => source.close());
    // A page left for another keeps no stream open: the browser holds at
    // most six connections to a host, and pages kept for the back button
    // would hold theirs until the next pages could not load. Coming back
    // to such a page loads it again.
    addEventListener("pagehide", () => source.close());
    addEventListener("pageshow", (event) => { if (event.persisted) location.reload(); });
  };

  // j / k move through the runs, / goes to the filters, t switches theme.
  const keys = (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement
        || target instanceof HTMLTextAreaElement) return;
    if (event.key === "t") { toggleTheme(); return; }
    if (event.key === "/") {
      const first = document.querySelector("#filters select, #filters input");
      if (first) { event.preventDefault(); first.focus(); }
      return;
    }
    if (event.key !== "j" && event.key !== "k") return;
    const links = [...document.querySelectorAll("a.run-link")];
    if (!links.length) return;
    const at = links.indexOf(document.activeElement);
    const next = event.key === "j" ? Math.min(at + 1, links.length - 1) : Math.max(at - 1, 0);
    links[at === -1 ? 0 : next].focus();
    event.preventDefault();
  };

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("theme")?.addEventListener("click", toggleTheme);
    for (const region of document.querySelectorAll("[data-live]")) follow(region);
    document.addEventListener("keydown", keys);
  });
})();
