"""The pages' stylesheet and script, served as files so that the Content-Security-Policy
allows no inline script or style at all (services/api/guard.py). The demo's payment
system (services/paysim) serves the same stylesheet, so its page looks the same."""

from __future__ import annotations

import hashlib

from aiohttp import web

STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;width:100%}td,th{padding:.4rem;border-bottom:1px solid #ddd;
text-align:left;overflow-wrap:break-word}.label{background:#c62828;color:#fff;border-radius:1rem;padding:.1rem .6rem}
.warn{background:#fff3cd;border:1px solid #e0a800;padding:.5rem;margin:.5rem 0}
.msg{background:#e8f5e9;padding:.5rem}form.inline{display:inline}input{margin:.2rem;max-width:95%}
a,p,li,h1{overflow-wrap:anywhere}.amount{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}#share-tree{display:block}
.outcome{padding:.5rem;margin:.5rem 0;border-left:.3rem solid}
.outcome.ok{background:#e8f5e9;border-color:#2e7d32}
.outcome.refused{background:#fdecea;border-color:#c62828;color:#7f1d1d}
.outcome.pending{background:#eef2f7;border-color:#1565c0}
.ended{background:#f1f1f1;border:1px solid #757575;padding:.5rem;font-weight:bold}
.sim{background:#e3f2fd;border:1px solid #1565c0;padding:.5rem;margin:.5rem 0}
.card{border:1px solid #ddd;border-radius:.5rem;padding:1rem;max-width:26rem}
.msg.refused{background:#fdecea;border:1px solid #b71c1c;color:#7f0000}
.msg.pending{background:#fff8e1;border:1px solid #8d6e00}.msg.ok{border:1px solid #2e7d32}
.scroll{overflow-x:auto}.scroll th,.scroll td{overflow-wrap:normal}.scroll td{white-space:nowrap}
.chart{width:100%;max-width:600px;height:auto}
small.ref{color:#555}.scroll td.state,.scroll td.counted,.scroll td.not-counted{white-space:normal;min-width:14rem}
@media (max-width:600px){body{margin:.5rem}td,th{padding:.2rem;font-size:.85rem}
table{display:block;overflow-x:auto;max-width:100%}.scroll table{display:table}}
"""

# Ticks every countdown on a page once a second: a span with class "countdown" and
# data-deadline (Unix ms) shows the time left until then; at zero it says "closing…"
# (the platform's timer has to act first) and a page without live updates reloads once
# a few seconds later. The share link's Copy button. Live pages (services/api/live.py):
# an element with data-live="<URL>" takes each "update" event's HTML from that stream.
# An update waits while the visitor types in a field of the live part (it would wipe
# what is typed) and comes in when the focus leaves the live part; a <details> with an
# id the visitor opened (a gain's History) stays open across updates.
# Dates: a <time datetime="...Z"> (services/api/earnings.py when_html) is rewritten to
# the visitor's own time zone, named ("2026-12-21 13:30 (Asia/Tokyo)"), the UTC
# instant kept as its title; an SVG <text data-datetime="...Z"> (the console's chart,
# services/api/program.py) the same way; without script they read in UTC.
SCRIPT = """function tick(){const now=Date.now();for(const el of document.querySelectorAll('.countdown')){
let s=Math.floor((Number(el.dataset.deadline)-now)/1000);
if(s<=0){if(el.textContent!=='closing\u2026'){el.textContent='closing\u2026';
if(el.dataset.ticked&&!live){setTimeout(()=>location.reload(),3000);}}continue;}
el.dataset.ticked='1';
const d=Math.floor(s/86400);s-=d*86400;const h=Math.floor(s/3600);s-=h*3600;
const m=Math.floor(s/60);s-=m*60;
el.textContent=(d?d+' d ':'')+(d||h?h+' h ':'')+(d||h||m?m+' min ':'')+s+' s';}}
function localTimes(){const zone=Intl.DateTimeFormat().resolvedOptions().timeZone;
const p=n=>String(n).padStart(2,'0');
for(const t of document.querySelectorAll('time[datetime],text[data-datetime]')){
const d=new Date(t.getAttribute('datetime')||t.dataset.datetime);
if(isNaN(d)||t.dataset.local)continue;t.title=t.textContent;t.dataset.local='1';
t.textContent=d.getFullYear()+'-'+p(d.getMonth()+1)+'-'+p(d.getDate())+' '+p(d.getHours())+':'+p(d.getMinutes())+' ('+zone+')';}}
const live=document.querySelector('[data-live]');
localTimes();tick();setInterval(tick,1000);
document.addEventListener('click',e=>{if(e.target&&e.target.id==='copy'){
navigator.clipboard.writeText(document.getElementById('share').value);}});
if(live&&window.EventSource){const es=new EventSource(live.dataset.live);let held=null;
const put=h=>{const open=[...live.querySelectorAll('details[open][id]')].map(d=>d.id);
live.innerHTML=h;for(const id of open){const d=document.getElementById(id);if(d)d.open=true;}
localTimes();tick();};
es.addEventListener('update',e=>{const a=document.activeElement;
if(a&&a!==live&&live.contains(a)&&a.matches('input,select,textarea'))held=e.data;else put(e.data);});
live.addEventListener('focusout',e=>{if(held!==null&&!(e.relatedTarget&&live.contains(e.relatedTarget))){
const h=held;held=null;put(h);}});
es.addEventListener('gone',()=>es.close());}
"""

VERSION = hashlib.sha256((STYLE + SCRIPT).encode()).hexdigest()[:12]
CSS_PATH = f"/static/site-{VERSION}.css"
JS_PATH = f"/static/site-{VERSION}.js"
HEAD = (f"<link rel=stylesheet href='{CSS_PATH}'>"
        f"<script src='{JS_PATH}' defer></script>")


def _file(text: str, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type=content_type,
                            headers={"Cache-Control": "public, max-age=86400, immutable"})
    return handler


def routes(app: web.Application, *, script: bool = True) -> None:
    app.router.add_get(CSS_PATH, _file(STYLE, "text/css"))
    if script:
        app.router.add_get(JS_PATH, _file(SCRIPT, "application/javascript"))
