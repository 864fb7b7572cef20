// Live updates without a reload: the task list's counts every two seconds, the queue table
// every two seconds, and the activity charts every ten.
async function json(url) {
  const r = await fetch(url, {credentials: 'same-origin'});
  return r.ok ? r.json() : null;
}

async function counts() {
  const c = await json('/ui/counts' + location.search);
  if (!c) return;
  for (const [state, n] of Object.entries(c.counts)) {
    const el = document.getElementById('count-' + state);
    if (el) el.textContent = n;
  }
  for (const el of document.querySelectorAll('[id^="count-"]')) {
    const state = el.id.slice('count-'.length);
    if (state !== 'total' && !(state in c.counts)) el.textContent = 0;
  }
  document.getElementById('count-total').textContent = c.total;
}

async function queues() {
  const c = await json('/ui/queues.json');
  if (!c) return;
  for (const q of c.queues) {
    const row = document.querySelector('tr.queue[data-queue="' + CSS.escape(q.queue) + '"]');
    if (!row) continue;
    row.querySelector('.lag').textContent = q.lag === null ? '–' : q.lag;
    for (const k of ['pending', 'scheduled', 'running']) row.querySelector('.' + k).textContent = q[k];
    row.querySelector('.paused').textContent = q.paused ? 'paused' : 'taking tasks';
  }
}

function charts() {
  for (const img of document.querySelectorAll('img.live-chart')) {
    const url = new URL(img.src);
    url.searchParams.set('t', Date.now());
    img.src = url.toString();
  }
}

function every(ms, fn) {
  setInterval(() => fn().catch(() => {}), ms);
}

if (document.getElementById('count-total')) every(2000, counts);
if (document.getElementById('queues')) every(2000, queues);
if (document.querySelector('img.live-chart')) setInterval(charts, 10000);
