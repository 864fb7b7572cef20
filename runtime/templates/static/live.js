// Refreshes the counts of the task list every two seconds, with the page's own filters.
async function tick() {
  try {
    const r = await fetch('/ui/counts' + location.search, {credentials: 'same-origin'});
    if (!r.ok) return;
    const c = await r.json();
    for (const [state, n] of Object.entries(c.counts)) {
      const el = document.getElementById('count-' + state);
      if (el) el.textContent = n;
    }
    for (const el of document.querySelectorAll('[id^="count-"]')) {
      const state = el.id.slice('count-'.length);
      if (state !== 'total' && !(state in c.counts)) el.textContent = 0;
    }
    document.getElementById('count-total').textContent = c.total;
  } catch (e) {}
}
setInterval(tick, 2000);
