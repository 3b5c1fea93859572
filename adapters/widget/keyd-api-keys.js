/*!
 * keyd-api-keys.js: the drop-in API key manager for keyd.
 *
 *   <script src="https://keyd.example/widget/keyd-api-keys.js"></script>
 *   <keyd-api-keys session-token="…"></keyd-api-keys>
 *
 * Attributes:
 *   session-token  widget session token (POST /v1/widget/sessions on your server).
 *                  Set it again to refresh an expired session; the widget reloads.
 *   api-base       keyd base URL; defaults to the origin this script was loaded from.
 *   org-id         organization id; if absent the widget asks GET /v1/widget/session.
 * Sessions: an organization-scope session (the default) lists every key of the
 *   organization with an Owner column, creates organization keys and may revoke
 *   or suspend members' keys; a user-scope session manages only its own user's keys.
 * Events (bubble, composed):
 *   keyd-session-expired  the API answered 401; detail: {message}. Set a fresh
 *                         session-token to continue.
 * Theming: --keyd-font, --keyd-accent, --keyd-radius, --keyd-bg, --keyd-fg,
 *   --keyd-muted, --keyd-border, --keyd-danger (and --keyd-on-accent, the text
 *   colour on accent buttons). Dark defaults follow prefers-color-scheme.
 *
 * Plain JavaScript, no dependencies, no build step. Server data only ever reaches
 * the page through textContent and attribute values, never as markup.
 */
(function () {
  'use strict';

  var TAG = 'keyd-api-keys';
  if (typeof window === 'undefined' || !window.customElements || window.customElements.get(TAG)) return;

  // The origin the script came from, captured while the script is being evaluated
  // (document.currentScript is null afterwards, and for module scripts).
  var SCRIPT_SRC = (function () {
    var s = document.currentScript;
    if (s && s.src) return s.src;
    var all = document.querySelectorAll('script[src]');
    for (var i = all.length - 1; i >= 0; i--) {
      if (/keyd-api-keys(\.min)?\.js([?#]|$)/.test(all[i].src)) return all[i].src;
    }
    return '';
  })();

  const PAGE_SIZE = 10;
  // A resource as keyd takes it: "<type>:<id>", split at the first ':'.
  const RESOURCE_RE = /^[a-z][a-z0-9_-]{0,63}:[A-Za-z0-9_.:\/@-]{1,256}$/;
  const STATUS_FILTERS = [['all', 'Any status'], ['active', 'Active'], ['suspended', 'Suspended'], ['revoked', 'Revoked'], ['expired', 'Expired']];
  const OWNER_FILTERS = [['', 'Anyone'], ['organization', 'The organization'], ['user', 'Members'], ['member', 'One member…']];
  const MSG_SESSION = 'Your session has expired. Refresh the page to continue.';
  const MSG_NETWORK = 'Could not reach the API key service. Check your connection and try again.';
  const MSG_NO_TOKEN = 'This page did not provide a session for managing API keys.';

  const EXPIRY_CHOICES = [
    ['never', 'Never', 0],
    ['30d', '30 days', 30],
    ['90d', '90 days', 90],
    ['1y', '1 year', 365],
  ];
  const GRACE_CHOICES = [
    ['0', 'Immediately'],
    ['3600', '1 hour'],
    ['86400', '24 hours'],
    ['604800', '7 days'],
  ];
  const DEFAULT_GRACE = '86400';

  // ---------------------------------------------------------------- helpers

  // h builds an element. Strings become text nodes; nothing is parsed as HTML.
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const k of Object.keys(props)) {
        const v = props[k];
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'readOnly' || k === 'selected') el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else if (c instanceof Node) el.appendChild(c);
      else el.appendChild(document.createTextNode(String(c)));
    }
  }

  class ApiError extends Error {
    constructor(kind, status, code, message) {
      super(message);
      this.kind = kind; // 'network' | 'session' | 'http'
      this.status = status;
      this.code = code;
    }
    get retryable() {
      return this.kind === 'network' || this.status === 503 || this.status === 502 || this.status === 504;
    }
  }

  const dateFmt = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
  const shortDateFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit',
  });
  const relFmt = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'short' });
  const DAY = 86400000;

  function relative(ms) {
    const diff = ms - Date.now();
    const abs = Math.abs(diff);
    if (abs < 60000) return diff < 0 ? 'just now' : 'in under a minute';
    if (abs < 3600000) return relFmt.format(Math.round(diff / 60000), 'minute');
    if (abs < DAY) return relFmt.format(Math.round(diff / 3600000), 'hour');
    return relFmt.format(Math.round(diff / DAY), 'day');
  }

  // timeEl renders a timestamp, or "Never" for null.
  function timeEl(iso, useRelative) {
    if (!iso) return h('span', { class: 'never' }, 'Never');
    const ms = Date.parse(iso);
    if (Number.isNaN(ms)) return h('span', null, String(iso));
    let text;
    if (useRelative && Math.abs(ms - Date.now()) < 7 * DAY) text = relative(ms);
    else if (new Date(ms).getFullYear() === new Date().getFullYear()) text = shortDateFmt.format(ms);
    else text = dateFmt.format(ms);
    return h('time', { datetime: iso, title: dateTimeFmt.format(ms) }, text);
  }

  function rfc3339(ms) {
    return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  function effectiveStatus(k) {
    if ((k.status === 'active' || k.status === 'suspended') && k.expires_at && Date.parse(k.expires_at) <= Date.now()) return 'expired';
    return k.status;
  }

  const STATUS_LABEL = { active: 'Active', revoked: 'Revoked', expired: 'Expired', suspended: 'Suspended' };

  // ------------------------------------------------ lifecycle: constants

  // Dialog kinds of the lifecycle controls (suspend, resume, expiration); the
  // key details view is a dialog too, but submits nothing.
  const LIFECYCLE_KINDS = new Set(['suspend', 'resume', 'expiry']);
  // What each event of a key's history is called.
  const EVENT_LABEL = {
    'key.created': 'Created',
    'key.updated': 'Renamed or updated',
    'key.permissions_changed': 'Permissions changed',
    'key.revoked': 'Revoked',
    'key.rotated': 'Rotated',
    'key.suspended': 'Suspended',
    'key.resumed': 'Resumed',
    'key.expiry_changed': 'Expiration changed',
    'key.expiring': 'Expiry notice sent',
    'key.expired': 'Expired',
    'key.leaked': 'Reported as leaked',
  };
  const MAX_REASON = 500;

  // duration says n seconds in words: "90 days", "12 hours", "45 minutes".
  function duration(n) {
    if (n >= 86400 && n % 86400 === 0) return (n / 86400) + (n === 86400 ? ' day' : ' days');
    if (n >= 3600 && n % 3600 === 0) return (n / 3600) + (n === 3600 ? ' hour' : ' hours');
    if (n >= 86400) return Math.floor(n / 86400) + ' days';
    if (n >= 3600) return Math.floor(n / 3600) + ' hours';
    return Math.max(1, Math.floor(n / 60)) + ' minutes';
  }

  const LIFECYCLE_STYLES = `
.badge.suspended { color: var(--_warn); }
.reason { display: block; font-size: 12px; color: var(--_muted); max-width: 22ch; overflow-wrap: anywhere; white-space: normal; }
textarea.reason-input {
  width: 100%; min-height: 64px; padding: 6px 10px; resize: vertical; font: inherit;
  border: 1px solid var(--_border); border-radius: var(--_radius); background: var(--_bg); color: var(--_fg);
}
textarea.reason-input:focus-visible, input[type=date]:focus-visible { box-shadow: var(--_focus); }
input[type=date] {
  width: 100%; min-height: 36px; padding: 6px 10px; font: inherit;
  border: 1px solid var(--_border); border-radius: var(--_radius); background: var(--_bg); color: var(--_fg);
}
.policy-note { font-size: 13px; color: var(--_muted); }
.field[hidden] { display: none; }
dialog.wide { width: min(720px, calc(100vw - 24px)); }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 6px 16px; margin: 0; }
.facts dt { color: var(--_muted); }
.facts dd { margin: 0; overflow-wrap: anywhere; }
.history { max-height: 340px; overflow: auto; border: 1px solid var(--_border); border-radius: var(--_radius); }
.history table { width: 100%; border-collapse: collapse; }
.history th, .history td { padding: 8px 10px; text-align: left; vertical-align: top; font-size: 13px; }
.history thead th { position: sticky; top: 0; background: var(--_subtle); color: var(--_muted); font-weight: 500; }
.history tbody tr + tr > * { border-top: 1px solid var(--_border); }
.history td.ev { font-weight: 500; white-space: nowrap; }
.history .by { color: var(--_muted); white-space: nowrap; }
.dlg h3:focus { outline: none; }
`;

  let uid = 0;

  // ---------------------------------------------------------------- styles

  const STYLES = `
:host {
  --_font: var(--keyd-font, ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif);
  --_mono: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace;
  --_accent: var(--keyd-accent, #2f5bea);
  --_on-accent: var(--keyd-on-accent, #ffffff);
  --_radius: var(--keyd-radius, 8px);
  --_bg: var(--keyd-bg, #ffffff);
  --_fg: var(--keyd-fg, #1b1f27);
  --_muted: var(--keyd-muted, #5d6472);
  --_border: var(--keyd-border, #e2e5ea);
  --_danger: var(--keyd-danger, #c42b2b);
  --_ok: #1f7a4d;
  --_warn: #9a5b00;
  --_subtle: color-mix(in srgb, var(--_fg) 3.5%, var(--_bg));
  --_hover: color-mix(in srgb, var(--_fg) 6%, var(--_bg));
  --_focus: 0 0 0 2px var(--_bg), 0 0 0 4px color-mix(in srgb, var(--_accent) 75%, transparent);
  display: block;
  color-scheme: light;
  font-family: var(--_font);
  font-size: 14px;
  line-height: 1.45;
  color: var(--_fg);
}
@media (prefers-color-scheme: dark) {
  :host {
    --_accent: var(--keyd-accent, #7f9cff);
    --_on-accent: var(--keyd-on-accent, #0c1024);
    --_bg: var(--keyd-bg, #16181d);
    --_fg: var(--keyd-fg, #e5e7eb);
    --_muted: var(--keyd-muted, #9ba3b0);
    --_border: var(--keyd-border, #2d313a);
    --_danger: var(--keyd-danger, #ff7b7b);
    --_ok: #5fd39a;
    --_warn: #f0b35a;
    color-scheme: dark;
  }
}
:host([hidden]) { display: none; }
*, *::before, *::after { box-sizing: border-box; }

.root {
  container-type: inline-size;
  background: var(--_bg);
  color: var(--_fg);
}
.head {
  display: flex; flex-wrap: wrap; align-items: flex-start; justify-content: space-between;
  gap: 12px 24px; margin-bottom: 16px;
}
.head h2 { margin: 0 0 2px; font-size: 17px; font-weight: 600; letter-spacing: -0.01em; }
.head p { margin: 0; color: var(--_muted); max-width: 64ch; }

button, input, select { font: inherit; color: inherit; }
button {
  display: inline-flex; align-items: center; justify-content: center; gap: 6px;
  min-height: 34px; padding: 6px 14px;
  border: 1px solid var(--_border); border-radius: var(--_radius);
  background: var(--_bg); color: var(--_fg);
  font-weight: 500; cursor: pointer; white-space: nowrap;
  transition: background-color .12s, border-color .12s, box-shadow .12s;
}
button:hover { background: var(--_hover); }
button:disabled { opacity: .6; cursor: progress; }
button.primary { background: var(--_accent); border-color: var(--_accent); color: var(--_on-accent); }
button.primary:hover { background: color-mix(in srgb, var(--_accent) 88%, var(--_fg)); }
button.danger { background: var(--_danger); border-color: var(--_danger); color: #fff; }
@media (prefers-color-scheme: dark) { button.danger { color: #1a0d0d; } }
button.danger:hover { background: color-mix(in srgb, var(--_danger) 88%, var(--_fg)); }
button.small { min-height: 28px; padding: 3px 10px; font-size: 13px; }
button.ghost { border-color: transparent; background: transparent; color: var(--_accent); }
button.ghost:hover { background: color-mix(in srgb, var(--_accent) 10%, transparent); }
button.ghost.danger-text { color: var(--_danger); }
button.ghost.danger-text:hover { background: color-mix(in srgb, var(--_danger) 10%, transparent); }
:focus { outline: none; }
:focus-visible { outline: none; box-shadow: var(--_focus); }
button:focus-visible, input:focus-visible, select:focus-visible { box-shadow: var(--_focus); }
[tabindex="-1"]:focus-visible { box-shadow: none; outline: 2px solid color-mix(in srgb, var(--_accent) 60%, transparent); outline-offset: 2px; }

.banner {
  display: flex; flex-wrap: wrap; align-items: center; gap: 8px 12px;
  margin: 0 0 14px; padding: 10px 12px;
  border: 1px solid color-mix(in srgb, var(--_danger) 40%, var(--_border));
  background: color-mix(in srgb, var(--_danger) 7%, var(--_bg));
  border-radius: var(--_radius);
}
.banner:empty { display: none; }
.banner .msg { flex: 1 1 220px; }

.frame {
  border: 1px solid var(--_border); border-radius: var(--_radius); overflow: hidden;
  background: var(--_bg);
}
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: 11px 8px; }
th:first-child, td:first-child { padding-left: 14px; }
th:last-child, td:last-child { padding-right: 10px; }
thead th {
  font-size: 12px; font-weight: 500; color: var(--_muted);
  background: var(--_subtle); border-bottom: 1px solid var(--_border);
  padding-top: 8px; padding-bottom: 8px; white-space: nowrap;
}
tbody tr + tr > * { border-top: 1px solid var(--_border); }
tbody th { font-weight: 600; }
.name { min-width: 10ch; max-width: 26ch; overflow-wrap: anywhere; }
tbody td { color: var(--_fg); }
tr.inactive > * { color: var(--_muted); }
tr.inactive th { font-weight: 500; }
td.when { white-space: nowrap; }
td.actions { text-align: right; white-space: nowrap; padding-top: 7px; padding-bottom: 7px; }
.actions-inner { display: inline-flex; flex-wrap: wrap; justify-content: flex-end; gap: 2px; width: 186px; }
button.ghost.small { padding: 3px 7px; }
@container (min-width: 1000px) { .actions-inner { flex-wrap: nowrap; width: auto; } }
code.mask { font-family: var(--_mono); font-size: 12.5px; white-space: nowrap; }
.never, .none { color: var(--_muted); }
.perms { display: flex; flex-wrap: wrap; gap: 4px; }
.chip {
  font-family: var(--_mono); font-size: 11.5px; line-height: 18px; padding: 0 5px;
  border-radius: calc(var(--_radius) / 2); border: 1px solid var(--_border);
  background: var(--_subtle); white-space: nowrap;
}
.rolechip, .reschip {
  font-size: 11.5px; line-height: 18px; padding: 0 6px; border-radius: 999px; white-space: nowrap;
  border: 1px solid color-mix(in srgb, var(--_accent) 45%, var(--_border));
  color: color-mix(in srgb, var(--_accent) 80%, var(--_fg));
}
.reschip { font-family: var(--_mono); border-style: dashed; }
.owner { overflow-wrap: anywhere; }
.owner .org { color: var(--_muted); }
.filters { display: flex; flex-wrap: wrap; align-items: flex-end; gap: 10px 12px; margin-bottom: 12px; }
.filters .field { gap: 4px; min-width: 140px; flex: 0 1 auto; }
.filters .field.grow { flex: 1 1 220px; }
.filters .field > label { font-size: 13px; }
.filters .buttons { display: flex; gap: 8px; }
input[type=search] {
  width: 100%; min-height: 36px; padding: 6px 10px;
  border: 1px solid var(--_border); border-radius: var(--_radius); background: var(--_bg); color: var(--_fg);
}
.pager { display: flex; align-items: center; justify-content: space-between; gap: 12px; padding: 10px; border-top: 1px solid var(--_border); }
.pager .pageinfo { color: var(--_muted); font-size: 13px; }
textarea.resources { width: 100%; min-height: 60px; padding: 6px 10px; font-family: var(--_mono); font-size: 13px;
  border: 1px solid var(--_border); border-radius: var(--_radius); background: var(--_bg); color: var(--_fg); resize: vertical; }
textarea[aria-invalid=true] { border-color: var(--_danger); }
.badge { display: inline-flex; align-items: center; gap: 6px; white-space: nowrap; font-weight: 500; }
.badge::before { content: ""; width: 7px; height: 7px; border-radius: 50%; background: currentColor; }
.badge.active { color: var(--_ok); }
.badge.revoked { color: var(--_danger); }
.badge.expired { color: var(--_muted); }
.soon { display: block; font-size: 12px; color: var(--_warn); }

.empty, .loading { padding: 36px 16px; text-align: center; color: var(--_muted); }
.empty strong { display: block; color: var(--_fg); font-weight: 600; margin-bottom: 4px; }
.more { display: flex; justify-content: center; padding: 10px; border-top: 1px solid var(--_border); }
.vh {
  position: absolute !important; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}

/* Below ~920px eight columns no longer fit: rows become cards. */
@container (max-width: 919px) {
  .frame { border: 0; border-radius: 0; overflow: visible; background: transparent; }
  table, thead, tbody, tr, th, td { display: block; }
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  tbody tr {
    display: grid; grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)); gap: 12px 20px;
    padding: 14px 16px; margin-bottom: 10px;
    border: 1px solid var(--_border); border-radius: var(--_radius); background: var(--_bg);
  }
  tbody tr + tr > * { border-top: 0; }
  tbody th, tbody td, tbody th:first-child, tbody td:last-child { padding: 0; }
  tbody th { grid-column: 1 / -1; font-size: 15px; }
  tbody th .name { max-width: none; min-width: 0; }
  tbody td::before { content: attr(data-label); display: block; margin-bottom: 2px; color: var(--_muted); font-size: 12px; }
  td.perms-cell { grid-column: 1 / -1; order: 1; }
  td.actions { grid-column: 1 / -1; text-align: left; order: 2; }
  td.actions::before { content: none; }
  td.actions:empty { display: none; }
  .actions-inner {
    flex-wrap: wrap; justify-content: flex-start; width: auto;
    margin: 0 -16px -6px; padding: 8px 8px 0; border-top: 1px solid var(--_border); display: flex;
  }
  .more { border-top: 0; padding: 4px 0 0; }
}
/* Phones: label beside value, one field a line. */
@container (max-width: 479px) {
  tbody tr { grid-template-columns: auto 1fr; gap: 6px 14px; padding: 14px; }
  tbody td { display: contents; }
  tbody td::before { display: inline; margin: 0; font-size: 13px; }
  td.perms-cell { grid-column: auto; order: 0; }
  td.actions .actions-inner { grid-column: 1 / -1; order: 2; margin: 4px -14px -6px; padding: 8px 6px 0; }
  .head > button { width: 100%; }
}

/* Dialogs */
dialog {
  width: min(480px, calc(100vw - 24px)); max-height: calc(100dvh - 24px);
  padding: 0; border: 1px solid var(--_border); border-radius: calc(var(--_radius) + 4px);
  background: var(--_bg); color: var(--_fg);
  box-shadow: 0 24px 48px -12px rgb(0 0 0 / .25), 0 2px 6px rgb(0 0 0 / .08);
  font-family: var(--_font); font-size: 14px; line-height: 1.45;
}
dialog::backdrop { background: rgb(15 18 25 / .45); }
.dlg { padding: 20px 22px 18px; display: grid; gap: 16px; }
.dlg h3 { margin: 0; font-size: 16px; font-weight: 600; }
.dlg .sub { margin: 4px 0 0; color: var(--_muted); overflow-wrap: anywhere; }
.dlg p { margin: 0; }
.field { display: grid; gap: 6px; }
.field > label, fieldset legend { font-weight: 500; }
input[type=text], select {
  width: 100%; min-height: 36px; padding: 6px 10px;
  border: 1px solid var(--_border); border-radius: var(--_radius);
  background: var(--_bg); color: var(--_fg);
}
input[type=text]:hover, select:hover { border-color: color-mix(in srgb, var(--_fg) 25%, var(--_border)); }
input[aria-invalid=true] { border-color: var(--_danger); }
.hint { font-size: 13px; color: var(--_muted); }
fieldset { margin: 0; padding: 0; border: 0; min-width: 0; }
fieldset legend { padding: 0; margin-bottom: 6px; }
.checks {
  display: grid; max-height: 232px; overflow: auto;
  border: 1px solid var(--_border); border-radius: var(--_radius);
}
.check { display: grid; grid-template-columns: auto 1fr; column-gap: 10px; padding: 8px 10px; align-items: start; }
.check + .check { border-top: 1px solid var(--_border); }
.check:hover { background: var(--_subtle); }
.check input { margin: 2px 0 0; width: 16px; height: 16px; accent-color: var(--_accent); }
.check label { font-family: var(--_mono); font-size: 13px; cursor: pointer; overflow-wrap: anywhere; }
.check .desc { grid-column: 2; color: var(--_muted); font-size: 13px; }
.checks-empty { padding: 10px; color: var(--_muted); border: 1px dashed var(--_border); border-radius: var(--_radius); }
.err { color: var(--_danger); display: flex; flex-wrap: wrap; align-items: center; gap: 8px 12px; }
.err:empty { display: none; }
.err .msg { flex: 1 1 200px; }
.actionsbar { display: flex; flex-wrap: wrap; justify-content: flex-end; gap: 8px; margin-top: 4px; }
.warnbox {
  display: flex; gap: 10px; padding: 10px 12px; border-radius: var(--_radius);
  background: color-mix(in srgb, var(--_warn) 10%, var(--_bg));
  border: 1px solid color-mix(in srgb, var(--_warn) 35%, var(--_border));
}
.warnbox::before { content: "!"; flex: none; display: grid; place-items: center; width: 18px; height: 18px;
  margin-top: 1px; border-radius: 50%; background: var(--_warn); color: var(--_bg); font-weight: 700; font-size: 12px; }
.secretrow { display: flex; gap: 8px; }
.secretrow textarea { flex: 1; min-width: 0; font-family: var(--_mono); font-size: 13px; background: var(--_subtle); resize: none; word-break: break-all; line-height: 1.4; }
.status { font-size: 13px; color: var(--_ok); min-height: 1.45em; }
.status.fail { color: var(--_muted); }
.keyname { font-weight: 600; color: var(--_fg); }
` + LIFECYCLE_STYLES;

  // ---------------------------------------------------------------- element

  class KeydApiKeys extends HTMLElement {
    static get observedAttributes() {
      return ['session-token', 'api-base', 'org-id'];
    }

    constructor() {
      super();
      this._id = ++uid;
      const root = this.attachShadow({ mode: 'open' });
      root.appendChild(h('style', { text: STYLES }));
      this._root = h('div', { class: 'root', part: 'root' });
      this._dialog = h('dialog', { 'aria-labelledby': this._ids('dlg-title'), part: 'dialog' });
      this._dialog.addEventListener('cancel', (e) => {
        // Escape: close through our own path, so state and focus stay right.
        e.preventDefault();
        this._closeDialog();
      });
      root.append(this._root, this._dialog);

      this._org = null;
      this._orgPromise = null;
      this._catalog = null; // [{slug, description, status}]
      this._catalogPromise = null;
      this._policy = null; // the organization's policy (GET /v1/orgs/{org}/policy)
      this._policyPromise = null;
      this._roles = null; // [{slug, description, permissions, status}]
      this._rolesPromise = null;
      this._scope = null; // 'organization' or 'user', from GET /v1/widget/session
      this._user = null;
      // A session narrowed to some permissions ("permissions" not null) may
      // grant no role: the role picker is not offered, and roles not sent.
      this._narrowed = false;
      // Listing filters as applied, and as being edited (applied on submit).
      this._filters = { q: '', status: 'all', owner: '', member: '', permission: '' };
      this._draft = Object.assign({}, this._filters);
      this._cursor = null; // the cursor of the page shown (null: the first)
      this._prev = []; // the cursors of the pages before it
      this._keys = [];
      this._next = null;
      this._loaded = false;
      this._loading = false;
      this._loadingMore = false;
      this._listError = null;
      this._retry = null;
      this._gen = 0;
      this._dlg = null; // open dialog state
      this._secret = null;
      this._expiredToken = null;
      this._connected = false;
    }

    _ids(name) {
      return 'k' + this._id + '-' + name;
    }

    connectedCallback() {
      this._connected = true;
      this._render();
      this._start();
    }

    disconnectedCallback() {
      this._connected = false;
      this._gen++;
      this._wipeSecret();
      if (this._dialog.open) this._dialog.close();
      this._dlg = null;
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (oldValue === newValue || !this._connected) return;
      if (name === 'session-token') {
        // A fresh token after an expiry: clear the session errors and carry on.
        const wasBroken = !this._loaded || (this._listError && this._listError.kind === 'session') ||
          (this._expiredToken !== null && this._expiredToken === (oldValue || '').trim());
        if (this._dlg && this._dlg.error && this._dlg.error.kind === 'session') this._setDialogError(null);
        if (wasBroken) {
          // The new session may belong to someone else: ask again unless told.
          if (!this.hasAttribute('org-id')) this._org = null;
          if (!this._loaded) this._start();
          else {
            this._loadCatalog().catch(() => {});
            this._loadRoles().catch(() => {});
            this._loadList({ keep: true });
          }
        }
        return;
      }
      // api-base or org-id: everything we know may be about something else now.
      this._org = null;
      this._orgPromise = null;
      this._catalog = null;
      this._catalogPromise = null;
      this._policy = null;
      this._policyPromise = null;
      this._roles = null;
      this._rolesPromise = null;
      this._scope = null;
      this._cursor = null;
      this._prev = [];
      this._keys = [];
      this._next = null;
      this._loaded = false;
      this._start();
    }

    get _token() {
      return (this.getAttribute('session-token') || '').trim();
    }

    get _api() {
      let base = (this.getAttribute('api-base') || '').trim();
      if (!base) {
        try {
          base = SCRIPT_SRC ? new URL(SCRIPT_SRC, document.baseURI).origin : location.origin;
        } catch (_) {
          base = location.origin;
        }
      }
      return base.replace(/\/+$/, '');
    }

    _start() {
      this._listError = null;
      if (!this._token) {
        this._gen++;
        this._loading = false;
        this._listError = new ApiError('session', 0, 'unauthenticated', MSG_NO_TOKEN);
        this._render();
        return;
      }
      // The filters offer the catalog's permissions once it is there.
      this._loadCatalog().then(() => { if (this._loaded) this._render(); }, () => {});
      this._loadRoles().catch(() => {});
      this._loadPolicy().catch(() => {});
      this._loadList({});
    }

    // ------------------------------------------------------------ API

    async _request(method, path, body, isRetry) {
      const token = this._token;
      const headers = { Accept: 'application/json', Authorization: 'Bearer ' + token };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let res;
      let text = '';
      try {
        res = await fetch(this._api + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          mode: 'cors',
          credentials: 'omit',
          cache: 'no-store',
        });
        text = await res.text();
      } catch (_) {
        throw new ApiError('network', 0, 'network', MSG_NETWORK);
      }
      let data = null;
      if (text) {
        try {
          data = JSON.parse(text);
        } catch (_) {
          data = null;
        }
      }
      if (res.status === 401) {
        this._sessionExpired(token);
        // The host may have handed us a fresh token meanwhile (even from inside the
        // event handler): a 401 changed nothing on the server, so try once more.
        if (!isRetry && this._token && this._token !== token) return this._request(method, path, body, true);
        throw new ApiError('session', 401, 'unauthenticated', MSG_SESSION);
      }
      if (!res.ok) {
        const e = data && data.error;
        const msg = e && typeof e.message === 'string' && e.message
          ? e.message
          : 'The API key service answered with an unexpected error (HTTP ' + res.status + '). Try again in a moment.';
        throw new ApiError('http', res.status, (e && e.code) || 'unknown', msg);
      }
      if (data === null || typeof data !== 'object') {
        throw new ApiError('http', res.status, 'bad_response', 'The API key service sent a reply this page could not read.');
      }
      return data;
    }

    _sessionExpired(token) {
      if (this._expiredToken === token) return;
      this._expiredToken = token;
      this.dispatchEvent(new CustomEvent('keyd-session-expired', {
        bubbles: true,
        composed: true,
        detail: { message: MSG_SESSION },
      }));
    }

    _orgPath() {
      return '/v1/orgs/' + encodeURIComponent(this._org) + '/keys';
    }

    async _ensureOrg() {
      const attr = (this.getAttribute('org-id') || '').trim();
      if (attr) this._org = attr;
      if (this._org && this._scope) return;
      // One session lookup at a time, shared by whoever needs it meanwhile: it
      // names the organization and the session's scope.
      if (!this._orgPromise) {
        const p = this._request('GET', '/v1/widget/session').then((s) => {
          if (!s || typeof s.org_id !== 'string' || !s.org_id) {
            throw new ApiError('http', 200, 'bad_response', 'The session does not name an organization.');
          }
          return s;
        }, (err) => {
          if (err.status === 404 || err.status === 405) {
            // An older keyd: organization scope.
            if (attr) return { org_id: attr, scope: 'organization' };
            throw new ApiError('http', err.status, err.code,
              'This keyd server cannot tell which organization the session belongs to. Set the org-id attribute on <keyd-api-keys>.');
          }
          throw err;
        });
        this._orgPromise = p;
        p.catch(() => {}).then(() => {
          if (this._orgPromise === p) this._orgPromise = null;
        });
      }
      const sess = await this._orgPromise;
      if (!attr) this._org = sess.org_id;
      this._scope = sess.scope === 'user' ? 'user' : 'organization';
      this._user = typeof sess.user_id === 'string' ? sess.user_id : null;
      this._narrowed = Array.isArray(sess.permissions);
    }

    get _userScope() {
      return this._scope === 'user';
    }

    _loadRoles() {
      if (this._roles) return Promise.resolve(this._roles);
      if (this._rolesPromise) return this._rolesPromise;
      const p = this._request('GET', '/v1/roles').then(
        (data) => {
          if (this._rolesPromise !== p) return this._roles;
          this._roles = Array.isArray(data.data) ? data.data : [];
          this._rolesPromise = null;
          return this._roles;
        },
        (err) => {
          if (this._rolesPromise === p) this._rolesPromise = null;
          // An older keyd without roles: none to offer.
          if (err.status === 404) {
            this._roles = [];
            return this._roles;
          }
          throw err;
        },
      );
      this._rolesPromise = p;
      return p;
    }

    _loadCatalog() {
      if (this._catalog) return Promise.resolve(this._catalog);
      if (this._catalogPromise) return this._catalogPromise;
      const p = this._request('GET', '/v1/permissions').then(
        (data) => {
          if (this._catalogPromise !== p) return this._catalog;
          this._catalog = Array.isArray(data.data) ? data.data : [];
          this._catalogPromise = null;
          return this._catalog;
        },
        (err) => {
          if (this._catalogPromise === p) this._catalogPromise = null;
          throw err;
        },
      );
      this._catalogPromise = p;
      return p;
    }

    async _loadList(opts) {
      const gen = ++this._gen;
      this._loading = true;
      this._loadingMore = false;
      this._listError = null;
      this._render();
      try {
        await this._ensureOrg();
        const q = this._listQuery();
        if (this._cursor) q.set('cursor', this._cursor);
        if (opts.minSequence) q.set('min_sequence', String(opts.minSequence));
        const data = await this._request('GET', this._orgPath() + '?' + q.toString());
        if (gen !== this._gen) return;
        this._keys = Array.isArray(data.data) ? data.data : [];
        this._next = data.next_cursor || null;
        this._loaded = true;
      } catch (err) {
        if (gen !== this._gen) return;
        this._listError = err;
        this._retry = () => this._loadList(opts);
      }
      this._loading = false;
      this._render();
      // Keep the keyboard where it was: on the pager button (the other one at
      // either end), else the search box.
      if (opts.focus && !this._focus(opts.focus) && !this._focus(opts.focus === 'next' ? 'prev' : 'next')) this._focus('filter-q');
    }

    // _listQuery is the listing's query: one page, with the applied filters.
    _listQuery() {
      const f = this._filters;
      const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (f.status && f.status !== 'all') q.set('status', f.status);
      if (f.q) q.set('q', f.q);
      if (f.permission) q.set('permission', f.permission);
      if (!this._userScope) {
        if (f.owner === 'member' && f.member) q.set('owner_id', f.member);
        else if (f.owner === 'organization' || f.owner === 'user') q.set('owner_type', f.owner);
      }
      return q;
    }

    _page(dir) {
      if (this._loading) return;
      if (dir > 0) {
        if (!this._next) return;
        this._prev.push(this._cursor);
        this._cursor = this._next;
      } else {
        if (!this._prev.length) return;
        this._cursor = this._prev.pop();
      }
      this._loadList({ focus: dir > 0 ? 'next' : 'prev' });
    }

    _applyFilters(focusFid) {
      this._filters = Object.assign({}, this._draft);
      this._cursor = null;
      this._prev = [];
      this._loadList({ focus: focusFid });
    }

    _merge(key, atTop) {
      if (!key || !key.id) return;
      const i = this._keys.findIndex((k) => k.id === key.id);
      if (i >= 0) this._keys[i] = key;
      else if (atTop) this._keys.unshift(key);
    }

    // ------------------------------------------------------------ rendering

    _render() {
      if (!this._connected) return;
      const active = this.shadowRoot.activeElement;
      const fid = active && this._root.contains(active) ? active.getAttribute('data-fid') : null;

      const createBtn = h('button', {
        type: 'button', class: 'primary', 'data-fid': 'create',
        onclick: () => this._openCreate(),
      }, 'Create API key');

      const head = h('div', { class: 'head' },
        h('div', null,
          h('h2', { id: this._ids('title') }, this._userScope ? 'Your API keys' : 'API keys'),
          h('p', null, this._userScope
            ? 'Your personal keys let your scripts call the API as you. Only you can see and manage them.'
            : 'Keys let your scripts and services call the API on behalf of this organization.')),
        createBtn);

      const banner = h('div', { class: 'banner', role: 'alert' });
      if (this._listError) {
        banner.append(h('span', { class: 'msg' }, this._listError.message));
        if (this._listError.kind !== 'session' && this._retry) {
          const retry = this._retry;
          banner.append(h('button', { type: 'button', class: 'small', 'data-fid': 'retry', onclick: () => retry() }, 'Retry'));
        }
      }

      const filtering = this._filtered();
      let body;
      if (!this._loaded) {
        body = this._loading
          ? h('div', { class: 'frame loading', role: 'status' }, 'Loading API keys…')
          : null;
      } else if (this._keys.length === 0 && !this._prev.length) {
        body = filtering
          ? h('div', { class: 'frame empty', role: 'status' },
            h('strong', null, 'No keys match'),
            'Change the search or the filters to see more keys.')
          : h('div', { class: 'frame empty' },
            h('strong', null, 'No API keys yet'),
            'Create a key to let a script or service call the API.');
      } else {
        body = h('div', { class: 'frame' }, this._table(), this._pager());
      }

      this._root.setAttribute('aria-busy', this._loading || this._loadingMore ? 'true' : 'false');
      const filters = this._loaded || filtering ? this._filterBar() : null;
      this._root.replaceChildren(
        h('section', { 'aria-labelledby': this._ids('title') }, head, filters, banner, body));
      if (fid) this._focus(fid);
    }

    _table() {
      const cols = ['Name', 'Key', 'Permissions', 'Created', 'Last used', 'Expires', 'Status'];
      if (!this._userScope) cols.splice(1, 0, 'Owner');
      const thead = h('thead', null,
        h('tr', null,
          cols.map((c) => h('th', { scope: 'col', role: 'columnheader' }, c)),
          h('th', { scope: 'col', role: 'columnheader' }, h('span', { class: 'vh' }, 'Actions'))));
      thead.firstChild.setAttribute('role', 'row');
      thead.setAttribute('role', 'rowgroup');
      const tbody = h('tbody', { role: 'rowgroup' }, this._keys.map((k) => this._row(k)));
      // Explicit roles: the card layouts change `display`, which can cost a table
      // its semantics in some browsers.
      return h('table', { role: 'table' },
        h('caption', { class: 'vh' }, (this._userScope ? 'Your API keys' : 'API keys') + ', newest first, page ' + (this._prev.length + 1)),
        thead, tbody);
    }

    _row(k) {
      const status = effectiveStatus(k);
      const name = typeof k.name === 'string' && k.name ? k.name : 'Untitled key';
      const perms = Array.isArray(k.permissions) ? k.permissions : [];
      const cell = (label, cls, ...content) =>
        h('td', { 'data-label': label, class: cls, role: 'cell' }, h('div', null, ...content));

      let expires = timeEl(k.expires_at, true);
      if (status === 'active' && k.expires_at && Date.parse(k.expires_at) - Date.now() < 7 * DAY) {
        expires = h('div', null, expires, h('span', { class: 'soon' }, 'Expires soon'));
      }

      const roles = Array.isArray(k.roles) ? k.roles : [];
      const resources = Array.isArray(k.resources) ? k.resources : [];
      const owner = k.owner && typeof k.owner === 'object' ? k.owner : { type: 'organization', id: '' };
      const memberKey = owner.type === 'user';
      const actions = h('td', { class: 'actions', role: 'cell' });
      if (status === 'active' && memberKey && !this._userScope) {
        // An organization session may revoke a member's key, not change it.
        actions.append(h('div', { class: 'actions-inner' },
          h('button', {
            type: 'button', class: 'ghost small danger-text', 'data-fid': 'revoke:' + k.id,
            'aria-label': 'Revoke ' + name, onclick: () => this._openRevoke(k.id),
          }, 'Revoke')));
      } else if (status === 'active') {
        actions.append(h('div', { class: 'actions-inner' },
          h('button', {
            type: 'button', class: 'ghost small', 'data-fid': 'rotate:' + k.id,
            'aria-label': 'Rotate ' + name, onclick: () => this._openRotate(k.id),
          }, 'Rotate'),
          h('button', {
            type: 'button', class: 'ghost small', 'data-fid': 'edit:' + k.id,
            'aria-label': 'Edit permissions for ' + name, onclick: () => this._openEdit(k.id),
          }, 'Edit permissions'),
          h('button', {
            type: 'button', class: 'ghost small danger-text', 'data-fid': 'revoke:' + k.id,
            'aria-label': 'Revoke ' + name, onclick: () => this._openRevoke(k.id),
          }, 'Revoke')));
      }

      this._lifecycleActions(actions, k, status, name, memberKey && !this._userScope);

      return h('tr', { class: status === 'active' ? '' : 'inactive', 'data-key-id': k.id, role: 'row' },
        h('th', { scope: 'row', role: 'rowheader', tabindex: '-1', 'data-fid': 'row:' + k.id },
          h('div', { class: 'name' }, name)),
        this._userScope ? null : cell('Owner', 'owner', memberKey
          ? h('span', { class: 'member' }, String(owner.id))
          : h('span', { class: 'org' }, 'Organization')),
        cell('Key', '', h('code', { class: 'mask' }, k.mask || '')),
        cell('Permissions', 'perms-cell', perms.length || roles.length || resources.length
          ? h('div', { class: 'perms' },
            perms.map((p) => h('span', { class: 'chip' }, p)),
            roles.map((r) => h('span', { class: 'rolechip', title: 'Role' }, h('span', { class: 'vh' }, 'Role '), r)),
            resources.map((r) => h('span', { class: 'reschip', title: 'Only this resource of its type' }, h('span', { class: 'vh' }, 'Resource '), r)))
          : h('span', { class: 'none' }, 'None')),
        cell('Created', 'when', timeEl(k.created_at, false)),
        cell('Last used', 'when', timeEl(k.last_used_at, true)),
        cell('Expires', 'when', expires),
        cell('Status', '', h('span', { class: 'badge ' + status }, STATUS_LABEL[status] || String(status))),
        actions);
    }

    _filtered() {
      const f = this._filters;
      return !!(f.q || (f.status && f.status !== 'all') || f.permission || f.owner);
    }

    // _filterBar renders the search box and the filters. Typing changes only
    // the draft; the search applies on Enter or the Search button, and each
    // select applies at once.
    _filterBar() {
      const d = this._draft;
      const id = (n) => this._ids('filter-' + n);
      const select = (name, label, choices, value) => h('div', { class: 'field' },
        h('label', { for: id(name) }, label),
        h('select', {
          id: id(name), name, 'data-fid': 'filter-' + name,
          onchange: (e) => {
            d[name] = e.target.value;
            if (name === 'owner' && d.owner === 'member') {
              this._render();
              this._focus('filter-member');
              return;
            }
            this._applyFilters('filter-' + name);
          },
        }, choices.map(([v, l]) => h('option', { value: v, selected: v === value }, l))));
      const perms = (this._catalog || []).filter((p) => p && typeof p.slug === 'string');
      const fields = [
        h('div', { class: 'field grow' },
          h('label', { for: id('q') }, 'Search keys'),
          h('input', {
            type: 'search', id: id('q'), name: 'q', 'data-fid': 'filter-q', value: d.q, autocomplete: 'off',
            placeholder: 'Name, or the last 4 characters of the key', maxlength: '200',
            oninput: (e) => { d.q = e.target.value; },
          })),
        select('status', 'Status', STATUS_FILTERS, d.status),
      ];
      if (!this._userScope) {
        fields.push(select('owner', 'Owner', OWNER_FILTERS, d.owner));
        if (d.owner === 'member') {
          fields.push(h('div', { class: 'field' },
            h('label', { for: id('member') }, 'Member user id'),
            h('input', {
              type: 'text', id: id('member'), name: 'member', 'data-fid': 'filter-member', value: d.member,
              autocomplete: 'off', maxlength: '128', oninput: (e) => { d.member = e.target.value.trim(); },
            })));
        }
      }
      fields.push(select('permission', 'Permission', [['', 'Any permission']].concat(perms.map((p) => [p.slug, p.slug])), d.permission));
      const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Search and filter API keys', novalidate: true },
        fields,
        h('div', { class: 'buttons' },
          h('button', { type: 'submit', 'data-fid': 'filter-apply' }, 'Search'),
          this._filtered() ? h('button', {
            type: 'button', class: 'ghost', 'data-fid': 'filter-clear',
            onclick: () => {
              this._draft = { q: '', status: 'all', owner: '', member: '', permission: '' };
              this._applyFilters('filter-q');
            },
          }, 'Clear filters') : null));
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        this._applyFilters('filter-apply');
      });
      return form;
    }

    // _pager renders previous and next page buttons (10 keys a page).
    _pager() {
      const page = this._prev.length + 1;
      if (page === 1 && !this._next) return null;
      return h('nav', { class: 'pager', 'aria-label': 'Pages of API keys' },
        h('button', {
          type: 'button', 'data-fid': 'prev', disabled: page === 1 || this._loading,
          onclick: () => this._page(-1),
        }, 'Previous page'),
        h('span', { class: 'pageinfo', 'aria-live': 'polite' }, 'Page ' + page),
        h('button', {
          type: 'button', 'data-fid': 'next', disabled: !this._next || this._loading,
          onclick: () => this._page(1),
        }, 'Next page'));
    }

    _focus(fid) {
      const el = this.shadowRoot.querySelector('[data-fid="' + CSS_escape(fid) + '"]');
      if (el && !el.disabled) {
        el.focus();
        return true;
      }
      return false;
    }

    // ------------------------------------------------------------ dialogs

    _openDialog(state, content, firstField, opener) {
      if (this._dlg) this._closeDialog(true);
      const returnTo = this.shadowRoot.activeElement;
      // Some browsers do not focus a clicked button; fall back to the opener's id.
      state.returnFid = (returnTo && returnTo.getAttribute('data-fid')) || opener || null;
      this._dlg = state;
      this._dialog.replaceChildren(content);
      if (!this._dialog.open) this._dialog.showModal();
      if (firstField) firstField.focus();
    }

    _closeDialog(silent) {
      const d = this._dlg;
      if (!d) {
        if (this._dialog.open) this._dialog.close();
        return;
      }
      if (d.busy && !silent) return; // a request is in flight; its reply must not be lost
      this._wipeSecret();
      this._dlg = null;
      if (this._dialog.open) this._dialog.close();
      this._dialog.replaceChildren();
      if (silent) return;
      // Return focus to what opened the dialog, or the closest thing still there.
      const tries = [d.returnFid, d.keyId && 'row:' + d.keyId, d.newKeyId && 'row:' + d.newKeyId, 'create'];
      for (const t of tries) if (t && this._focus(t)) return;
    }

    _wipeSecret() {
      const input = this._dialog.querySelector('[data-secret]');
      if (input) {
        input.value = '';
        input.remove();
      }
      this._secret = null;
    }

    _errorBox() {
      return h('div', { class: 'err', role: 'alert', 'data-err': '' });
    }

    _setDialogError(err) {
      const d = this._dlg;
      if (!d) return;
      d.error = err;
      const box = this._dialog.querySelector('[data-err]');
      if (!box) return;
      box.replaceChildren();
      if (!err) return;
      box.append(h('span', { class: 'msg' }, err.message));
      if (err.retryable) {
        box.append(h('button', { type: 'button', class: 'small', onclick: () => this._submit() }, 'Retry'));
      }
    }

    _setBusy(busy) {
      const d = this._dlg;
      if (!d) return;
      d.busy = busy;
      for (const b of this._dialog.querySelectorAll('button')) b.disabled = busy;
      const form = this._dialog.querySelector('form');
      if (form) form.setAttribute('aria-busy', busy ? 'true' : 'false');
    }

    _form(title, sub, fields, submitLabel, submitClass) {
      const titleId = this._ids('dlg-title');
      const form = h('form', { class: 'dlg', novalidate: true },
        h('div', null,
          h('h3', { id: titleId }, title),
          sub ? h('p', { class: 'sub' }, sub) : null),
        fields,
        this._errorBox(),
        h('div', { class: 'actionsbar' },
          h('button', { type: 'button', onclick: () => this._closeDialog() }, 'Cancel'),
          h('button', { type: 'submit', class: submitClass || 'primary' }, submitLabel)));
      form.addEventListener('submit', (e) => {
        e.preventDefault();
        this._submit();
      });
      return form;
    }

    // permissionPicker renders one checkbox per active catalog permission, filling in
    // once the catalog has loaded.
    _permissionPicker(selected) {
      const legendId = this._ids('perm-legend');
      const fs = h('fieldset', { 'aria-describedby': this._ids('perm-note') },
        h('legend', { id: legendId }, 'Permissions'));
      const holder = h('div');
      const note = h('div', { id: this._ids('perm-note'), class: 'hint' });
      fs.append(holder, note);

      const fill = (catalog) => {
        const active = catalog.filter((p) => p && p.status === 'active' && typeof p.slug === 'string' && this._policyAllows(p.slug));
        const activeSet = new Set(active.map((p) => p.slug));
        if (active.length === 0) {
          holder.replaceChildren(h('div', { class: 'checks-empty' }, 'No permissions are available yet.'));
        } else {
          holder.replaceChildren(h('div', { class: 'checks' }, active.map((p, i) => {
            const id = this._ids('perm-' + i);
            const descId = id + '-d';
            return h('div', { class: 'check' },
              h('input', {
                type: 'checkbox', id, name: 'permission', value: p.slug,
                checked: selected.has(p.slug),
                'aria-describedby': p.description ? descId : null,
              }),
              h('label', { for: id }, p.slug),
              p.description ? h('span', { class: 'desc', id: descId }, p.description) : null);
          })));
        }
        const gone = [...selected].filter((s) => !activeSet.has(s));
        note.textContent = gone.length
          ? 'No longer available, removed when you save: ' + gone.join(', ') + '.'
          : '';
      };

      if (this._catalog && this._policy) {
        fill(this._catalog);
      } else {
        holder.replaceChildren(h('div', { class: 'checks-empty', role: 'status' }, 'Loading permissions…'));
        // The policy too: only the permissions it allows are offered.
        const both = () => Promise.all([this._loadCatalog(), this._loadPolicy().catch(() => null)]).then((r) => r[0]);
        const load = () => both().then(fill, (err) => {
          holder.replaceChildren(h('div', { class: 'err', role: 'alert' },
            h('span', { class: 'msg' }, err.message),
            err.kind !== 'session' ? h('button', {
              type: 'button', class: 'small',
              onclick: () => {
                holder.replaceChildren(h('div', { class: 'checks-empty', role: 'status' }, 'Loading permissions…'));
                load();
              },
            }, 'Retry') : null));
        });
        load();
      }
      return fs;
    }

    // rolePicker renders one checkbox per active role, beside the permissions
    // (nothing for a narrowed session, which may grant no role); like the
    // permissions, only roles whose every permission the organization's
    // policy allows are offered (keyd refuses the others).
    _rolePicker(selected) {
      if (this._narrowed) return null;
      const fs = h('fieldset', { 'aria-describedby': this._ids('role-note') },
        h('legend', null, 'Roles'));
      const holder = h('div');
      const note = h('div', { id: this._ids('role-note'), class: 'hint' });
      fs.append(holder, note);
      const fill = (roles) => {
        const active = roles.filter((r) => r && r.status === 'active' && typeof r.slug === 'string' &&
          (Array.isArray(r.permissions) ? r.permissions : []).every((p) => this._policyAllows(p)));
        const activeSet = new Set(active.map((r) => r.slug));
        if (active.length === 0) {
          holder.replaceChildren(h('div', { class: 'checks-empty' }, 'No roles are available.'));
        } else {
          holder.replaceChildren(h('div', { class: 'checks' }, active.map((r, i) => {
            const id = this._ids('role-' + i);
            const descId = id + '-d';
            const perms = Array.isArray(r.permissions) ? r.permissions : [];
            const desc = (r.description ? r.description + ' ' : '') + '(' + (perms.length ? perms.join(', ') : 'no permissions') + ')';
            return h('div', { class: 'check' },
              h('input', { type: 'checkbox', id, name: 'role', value: r.slug, checked: selected.has(r.slug), 'aria-describedby': descId }),
              h('label', { for: id }, r.slug),
              h('span', { class: 'desc', id: descId }, desc));
          })));
        }
        const gone = [...selected].filter((s) => !activeSet.has(s));
        note.textContent = gone.length ? 'No longer available, removed when you save: ' + gone.join(', ') + '.' : '';
      };
      if (this._roles && this._policy) fill(this._roles);
      else {
        holder.replaceChildren(h('div', { class: 'checks-empty', role: 'status' }, 'Loading roles…'));
        Promise.all([this._loadRoles(), this._loadPolicy().catch(() => null)]).then((r) => fill(r[0]), (err) => {
          holder.replaceChildren(h('div', { class: 'err', role: 'alert' }, h('span', { class: 'msg' }, err.message)));
        });
      }
      return fs;
    }

    // resourcesField is a text area of "type:id" entries, one per line.
    _resourcesField(list) {
      const id = this._ids('resources');
      const hintId = this._ids('resources-hint');
      return h('div', { class: 'field' },
        h('label', { for: id }, 'Resources'),
        h('textarea', {
          id, name: 'resources', class: 'resources', rows: 3, 'aria-describedby': hintId,
          autocomplete: 'off', autocapitalize: 'off', spellcheck: 'false',
          placeholder: 'project:p_123', value: list.join('\n'),
        }),
        h('div', { class: 'hint', id: hintId },
          'One per line, as type:id (for example project:p_123). For each type listed, the key can reach only those ids; leave empty for no restriction.'));
    }

    // _resources returns the entries of the resources field, or null (having
    // marked the field) when one is not type:id.
    _resources() {
      const ta = this._dialog.querySelector('textarea[name=resources]');
      if (!ta) return [];
      const list = ta.value.split(/[\n,]+/).map((s) => s.trim()).filter((s) => s);
      const bad = list.find((r) => !RESOURCE_RE.test(r));
      const hint = ta.parentElement.querySelector('.hint');
      if (bad || list.length > 100) {
        ta.setAttribute('aria-invalid', 'true');
        hint.textContent = bad
          ? '"' + bad + '" is not type:id: a lowercase type, a colon, then an id of letters, digits and _ . : / @ -.'
          : 'A key can list at most 100 resources.';
        hint.style.color = 'var(--_danger)';
        ta.focus();
        return null;
      }
      ta.removeAttribute('aria-invalid');
      return list;
    }

    _checkedRoles() {
      return [...this._dialog.querySelectorAll('input[name=role]')].filter((c) => c.checked).map((c) => c.value);
    }

    _checkedPermissions() {
      return [...this._dialog.querySelectorAll('input[name=permission]')]
        .filter((c) => c.checked).map((c) => c.value);
    }

    _openCreate() {
      const nameId = this._ids('name');
      const nameErrId = this._ids('name-err');
      const expId = this._ids('expires');
      const name = h('input', {
        type: 'text', id: nameId, name: 'name', autocomplete: 'off', maxlength: '200',
        placeholder: 'For example: CI deploy', required: true, 'aria-describedby': nameErrId,
      });
      const content = this._form('New API key', null, [
        h('div', { class: 'field' },
          h('label', { for: nameId }, 'Name'),
          name,
          h('div', { class: 'hint', id: nameErrId }, 'A name helps you recognise the key later.')),
        this._permissionPicker(new Set()),
        this._rolePicker(new Set()),
        this._resourcesField([]),
        h('div', { class: 'field' },
          h('label', { for: expId }, 'Expires'),
          h('select', { id: expId, name: 'expires' },
            this._expiryChoices().map(([v, label]) => h('option', { value: v }, label))),
          this._policyExpiryHint()),
      ], 'Create');
      this._openDialog({ kind: 'create' }, content, name, 'create');
    }

    _keyById(id) {
      return this._keys.find((k) => k.id === id);
    }

    _openRotate(id) {
      const k = this._keyById(id);
      if (!k) return;
      const selId = this._ids('grace');
      const hintId = this._ids('grace-hint');
      const sel = h('select', { id: selId, name: 'grace', 'aria-describedby': hintId },
        GRACE_CHOICES.map(([v, label]) => h('option', { value: v, selected: v === DEFAULT_GRACE }, label)));
      const content = this._form('Rotate API key', null, [
        h('p', null, 'A new secret replaces ', h('span', { class: 'keyname' }, k.name || 'this key'),
          '. It keeps the same name and permissions.'),
        h('div', { class: 'field' },
          h('label', { for: selId }, 'Keep the old key working for'),
          sel,
          h('div', { class: 'hint', id: hintId }, 'Give your services time to switch to the new key before the old one stops working.')),
      ], 'Rotate key');
      this._openDialog({ kind: 'rotate', keyId: id }, content, sel, 'rotate:' + id);
    }

    _openEdit(id) {
      const k = this._keyById(id);
      if (!k) return;
      const picker = this._permissionPicker(new Set(Array.isArray(k.permissions) ? k.permissions : []));
      const roles = this._rolePicker(new Set(Array.isArray(k.roles) ? k.roles : []));
      const resources = this._resourcesField(Array.isArray(k.resources) ? k.resources : []);
      const content = this._form('Permissions for ' + (k.name || 'this key'),
        'Choose what this key is allowed to do: permissions, roles, and the resources it may reach.', [picker, roles, resources], 'Save');
      this._openDialog({ kind: 'edit', keyId: id }, content, null, 'edit:' + id);
      const first = this._dialog.querySelector('input[name=permission]');
      (first || this._dialog.querySelector('button')).focus();
    }

    _openRevoke(id) {
      const k = this._keyById(id);
      if (!k) return;
      const content = this._form('Revoke API key', null, [
        h('p', null, 'Revoking ', h('span', { class: 'keyname' }, k.name || 'this key'),
          ' (', h('code', { class: 'mask' }, k.mask || ''), ') stops it from working immediately. ' +
          'Anything still using it will be refused. This cannot be undone.'),
      ], 'Revoke key', 'danger');
      // Focus the safe choice first.
      this._openDialog({ kind: 'revoke', keyId: id }, content, null, 'revoke:' + id);
      const cancel = [...this._dialog.querySelectorAll('button')].find((b) => b.textContent === 'Cancel');
      if (cancel) cancel.focus();
    }

    _showSecret(secret, note) {
      const d = this._dlg;
      const titleId = this._ids('dlg-title');
      const inputId = this._ids('secret');
      const warnId = this._ids('secret-warn');
      this._secret = secret;
      // A wrapping read-only textarea: the whole key stays visible, prefix
      // included, at any width.
      const input = h('textarea', {
        id: inputId, readOnly: true, rows: 2, 'data-secret': '',
        autocomplete: 'off', autocapitalize: 'off', spellcheck: 'false', 'aria-describedby': warnId,
      });
      input.value = secret;
      input.addEventListener('focus', () => input.select());
      const status = h('div', { class: 'status', role: 'status', 'aria-live': 'polite' });
      const copy = h('button', { type: 'button', onclick: () => this._copy(input, status) }, 'Copy');
      const panel = h('div', { class: 'dlg', 'aria-live': 'polite' },
        h('h3', { id: titleId }, 'Your new API key'),
        h('p', { class: 'warnbox', id: warnId },
          'Copy this key now and keep it somewhere safe. It will not be shown again.'),
        h('div', { class: 'field' },
          h('label', { for: inputId }, 'Secret key'),
          h('div', { class: 'secretrow' }, input, copy),
          status),
        note ? h('p', { class: 'hint' }, note) : null,
        h('div', { class: 'actionsbar' },
          h('button', { type: 'button', class: 'primary', onclick: () => this._closeDialog() }, 'Done')));
      d.kind = 'secret';
      d.busy = false;
      this._dialog.replaceChildren(panel);
      input.focus();
    }

    async _copy(input, status) {
      const secret = this._secret;
      if (!secret) return;
      let ok = false;
      try {
        if (navigator.clipboard && window.isSecureContext) {
          await navigator.clipboard.writeText(secret);
          ok = true;
        }
      } catch (_) {
        ok = false;
      }
      if (!ok) {
        try {
          input.focus();
          input.select();
          ok = document.execCommand('copy');
        } catch (_) {
          ok = false;
        }
      }
      status.classList.toggle('fail', !ok);
      status.textContent = ok
        ? 'Copied to the clipboard.'
        : 'Copying is blocked here. The key is selected: press Ctrl+C (⌘C on a Mac) to copy it.';
      if (!ok) {
        input.focus();
        input.select();
      }
    }

    async _submit() {
      const d = this._dlg;
      if (!d || d.busy) return;
      const keyPath = (suffix) => this._orgPath() + '/' + encodeURIComponent(d.keyId) + suffix;
      let req;
      if ((d.kind === 'create' || d.kind === 'edit') && !this._catalog) {
        this._setDialogError(new ApiError('http', 0, 'not_ready', 'The list of permissions has not loaded yet. Wait a moment and try again.'));
        return;
      }
      if (d.kind === 'create') {
        const nameInput = this._dialog.querySelector('input[name=name]');
        const name = nameInput.value.trim();
        const hint = nameInput.parentElement.querySelector('.hint');
        if (!name) {
          nameInput.setAttribute('aria-invalid', 'true');
          hint.textContent = 'Enter a name for the key.';
          hint.style.color = 'var(--_danger)';
          nameInput.focus();
          return;
        }
        nameInput.removeAttribute('aria-invalid');
        const resources = this._resources();
        if (resources === null) return;
        const body = { name, permissions: this._checkedPermissions() };
        if (this._roles && !this._narrowed) body.roles = this._checkedRoles();
        if (resources.length) body.resources = resources;
        const choice = this._expiryChoices().find(([v]) => v === this._dialog.querySelector('select[name=expires]').value);
        const exp = choice ? this._expiryFor(choice, true) : null;
        if (exp) body.expires_at = exp;
        req = () => this._request('POST', this._orgPath(), body);
      } else if (d.kind === 'rotate') {
        const grace = Number(this._dialog.querySelector('select[name=grace]').value) || 0;
        req = () => this._request('POST', keyPath('/rotate'), { grace_period_seconds: grace });
      } else if (d.kind === 'edit') {
        const resources = this._resources();
        if (resources === null) return;
        const body = { permissions: this._checkedPermissions(), resources };
        if (this._roles && !this._narrowed) body.roles = this._checkedRoles();
        req = () => this._request('PUT', keyPath('/permissions'), body);
      } else if (d.kind === 'revoke') {
        req = () => this._request('POST', keyPath('/revoke'), {});
      } else if (LIFECYCLE_KINDS.has(d.kind)) {
        req = this._lifecycleRequest(d, keyPath);
        if (!req) return;
      } else {
        return;
      }

      this._setDialogError(null);
      this._setBusy(true);
      let reply;
      try {
        await this._ensureOrg();
        reply = await req();
      } catch (err) {
        if (this._dlg !== d) return;
        this._setBusy(false);
        this._setDialogError(err);
        return;
      }
      const seq = reply && reply.sequence;

      if (d.kind === 'create') {
        this._merge(reply.key, true);
        d.newKeyId = reply.key && reply.key.id;
      } else if (d.kind === 'rotate') {
        this._merge(reply.previous, false);
        this._merge(reply.key, true);
        d.newKeyId = reply.key && reply.key.id;
      } else {
        this._merge(reply.key, false);
      }
      this._render();
      this._loadList({ minSequence: seq, keep: true });

      if (this._dlg !== d) return;
      if ((d.kind === 'create' || d.kind === 'rotate') && typeof reply.secret === 'string' && reply.secret) {
        let note = null;
        if (d.kind === 'rotate' && reply.previous) {
          const until = reply.previous.expires_at ? Date.parse(reply.previous.expires_at) : NaN;
          note = !Number.isNaN(until) && until > Date.now() + 1000
            ? 'The previous key keeps working until ' + dateTimeFmt.format(until) + '.'
            : 'The previous key has stopped working.';
        }
        this._showSecret(reply.secret, note);
      } else {
        d.busy = false;
        if (d.kind === 'revoke') d.returnFid = null; // its button is gone; focus the row
        else if (LIFECYCLE_KINDS.has(d.kind)) this._lifecycleDone(d);
        this._closeDialog();
      }
    }

    // ------------------------------------------------ lifecycle controls
    // Suspend and resume, "Edit expiration", the organization's policy, and
    // the key details view with its history. Kept together, apart from the
    // rest, so that other changes to the table and its dialogs merge cleanly.

    // _loadPolicy fetches the organization's policy once. A keyd without
    // policies (404) counts as no restrictions: keyd enforces the policy
    // anyway, the widget only leaves out what would be refused.
    _loadPolicy() {
      if (this._policy) return Promise.resolve(this._policy);
      if (this._policyPromise) return this._policyPromise;
      const p = this._ensureOrg()
        .then(() => this._request('GET', '/v1/orgs/' + encodeURIComponent(this._org) + '/policy'))
        .then((data) => (data && data.policy && typeof data.policy === 'object' ? data.policy : {}),
          (err) => {
            if (err.status === 404 && err.code !== 'not_found') return {};
            throw err;
          })
        .then((policy) => {
          if (this._policyPromise === p) {
            this._policy = policy;
            this._policyPromise = null;
          }
          return policy;
        }, (err) => {
          if (this._policyPromise === p) this._policyPromise = null;
          throw err;
        });
      this._policyPromise = p;
      return p;
    }

    // _policyAllows reports whether the policy lets a key hold permission slug.
    _policyAllows(slug) {
      const allowed = this._policy && this._policy.allowed_permissions;
      return !Array.isArray(allowed) || allowed.includes(slug);
    }

    _maxLifetime() {
      const m = this._policy && this._policy.max_lifetime_seconds;
      return typeof m === 'number' && m > 0 ? m : 0;
    }

    _expiryRequired() {
      return !!(this._policy && (this._policy.require_expiry || this._maxLifetime()));
    }

    // _expiryChoices lists the expiry choices the policy allows, as
    // [value, label, seconds]: "Never" only without require_expiry or a
    // max lifetime, no choice longer than the max lifetime, and the max
    // lifetime itself when it is not one of the usual choices.
    _expiryChoices() {
      const max = this._maxLifetime();
      const out = [];
      for (const [v, label, days] of EXPIRY_CHOICES) {
        const secs = days * 86400;
        if (secs === 0 && this._expiryRequired()) continue;
        if (max && secs > max) continue;
        out.push([v, label, secs]);
      }
      if (max && !out.some((c) => c[2] === max)) {
        out.push(['max', duration(max) + ' (the longest allowed)', max]);
      }
      return out;
    }

    // _expiryFor returns the expires_at for choice ([value, label, seconds]),
    // or null for none. For a create, the longest allowed is left to keyd
    // (a key without an expiry gets now + the max lifetime), so clocks that
    // differ cannot make it a refusal; elsewhere it keeps a minute's margin.
    _expiryFor(choice, forCreate) {
      const secs = choice[2];
      if (!secs) return null;
      const max = this._maxLifetime();
      if (max && secs >= max) {
        if (forCreate) return null;
        return rfc3339(Date.now() + Math.max(60, max - 60) * 1000);
      }
      return rfc3339(Date.now() + secs * 1000);
    }

    // _policyExpiryHint says what the policy asks of an expiry, if anything.
    _policyExpiryHint() {
      const max = this._maxLifetime();
      let text = '';
      if (max) text = 'Your organization allows keys to last at most ' + duration(max) + '.';
      else if (this._expiryRequired()) text = 'Your organization requires every key to expire.';
      return text ? h('div', { class: 'policy-note', 'data-policy-note': '' }, text) : null;
    }

    // _lifecycleActions adds the row's lifecycle buttons: Suspend or Resume,
    // Edit expiration, and Details (every key, revoked and expired too).
    // revokeOnly: an organization session looking at a member's key, which it
    // may suspend and revoke but not change (no Resume, Edit permissions or
    // Edit expiration).
    _lifecycleActions(actions, k, status, name, revokeOnly) {
      let inner = actions.querySelector('.actions-inner');
      if (!inner) {
        inner = h('div', { class: 'actions-inner' });
        actions.append(inner);
      }
      const btn = (label, fid, aria, onclick, cls) => h('button', {
        type: 'button', class: 'ghost small' + (cls ? ' ' + cls : ''), 'data-fid': fid + ':' + k.id,
        'aria-label': aria, onclick,
      }, label);
      if (status === 'active') {
        inner.append(btn('Suspend', 'suspend', 'Suspend ' + name, () => this._openSuspend(k.id)));
      }
      if (status === 'suspended' && revokeOnly) {
        inner.append(btn('Revoke', 'revoke', 'Revoke ' + name, () => this._openRevoke(k.id), 'danger-text'));
      } else if (status === 'suspended') {
        inner.append(
          btn('Resume', 'resume', 'Resume ' + name, () => this._openResume(k.id)),
          btn('Edit permissions', 'edit', 'Edit permissions for ' + name, () => this._openEdit(k.id)),
          btn('Revoke', 'revoke', 'Revoke ' + name, () => this._openRevoke(k.id), 'danger-text'));
      }
      if (!revokeOnly && (status === 'active' || status === 'suspended')) {
        inner.append(btn('Edit expiration', 'expiry', 'Edit expiration of ' + name, () => this._openExpiry(k.id)));
      }
      inner.append(btn('Details', 'details', 'Details and history of ' + name, () => this._openDetails(k.id)));
    }

    _openSuspend(id) {
      const k = this._keyById(id);
      if (!k) return;
      const reasonId = this._ids('reason');
      const hintId = this._ids('reason-hint');
      const reason = h('textarea', {
        id: reasonId, name: 'reason', class: 'reason-input', maxlength: String(MAX_REASON), rows: 3,
        placeholder: 'For example: unusual traffic from a new region', 'aria-describedby': hintId,
      });
      const content = this._form('Suspend API key', null, [
        h('p', null, 'Suspending ', h('span', { class: 'keyname' }, k.name || 'this key'),
          ' (', h('code', { class: 'mask' }, k.mask || ''), ') stops it from working until you resume it. ' +
          'Its secret stays the same.'),
        h('div', { class: 'field' },
          h('label', { for: reasonId }, 'Reason'),
          reason,
          h('div', { class: 'hint', id: hintId }, 'Optional. Recorded in the key\u2019s history.')),
      ], 'Suspend key', 'danger');
      this._openDialog({ kind: 'suspend', keyId: id }, content, reason, 'suspend:' + id);
    }

    _openResume(id) {
      const k = this._keyById(id);
      if (!k) return;
      const content = this._form('Resume API key', null, [
        h('p', null, 'Resuming ', h('span', { class: 'keyname' }, k.name || 'this key'),
          ' (', h('code', { class: 'mask' }, k.mask || ''), ') lets it work again at once, with the same secret and permissions.'),
      ], 'Resume key');
      this._openDialog({ kind: 'resume', keyId: id }, content, null, 'resume:' + id);
      const submit = this._dialog.querySelector('button[type=submit]');
      if (submit) submit.focus();
    }

    // _openExpiry offers the expiry choices within the policy, a date, "No
    // expiration" where allowed, and "Now".
    _openExpiry(id) {
      const k = this._keyById(id);
      if (!k) return;
      const selId = this._ids('new-expiry');
      const dateId = this._ids('expiry-date');
      const hintId = this._ids('expiry-hint');
      const choices = this._expiryChoices().filter((c) => c[2] > 0);
      const max = this._maxLifetime();
      const today = new Date();
      const dayISO = (ms) => new Date(ms).toISOString().slice(0, 10);
      const date = h('input', {
        type: 'date', id: dateId, name: 'expiry-date',
        min: dayISO(today.getTime() + DAY), max: max ? dayISO(Date.now() + max * 1000) : null,
      });
      const dateField = h('div', { class: 'field', hidden: true },
        h('label', { for: dateId }, 'Date'), date);
      const sel = h('select', { id: selId, name: 'new-expiry', 'aria-describedby': hintId },
        choices.map(([v, label]) => h('option', { value: v }, label)),
        h('option', { value: 'date' }, 'On a date\u2026'),
        this._expiryRequired() ? null : h('option', { value: 'never' }, 'No expiration'),
        h('option', { value: 'now' }, 'Now (the key stops working at once)'));
      sel.addEventListener('change', () => {
        dateField.hidden = sel.value !== 'date';
      });
      const content = this._form('Edit expiration', k.name || null, [
        h('p', null, 'Currently: ', k.expires_at
          ? h('span', null, 'expires ', h('time', { datetime: k.expires_at }, dateTimeFmt.format(Date.parse(k.expires_at))))
          : h('span', null, 'no expiration'), '.'),
        h('div', { class: 'field' },
          h('label', { for: selId }, 'New expiration'),
          sel,
          h('div', { class: 'hint', id: hintId }, 'Counted from now. keyd sends an expiry notice before the key expires.')),
        dateField,
        this._policyExpiryHint(),
      ], 'Save expiration');
      this._openDialog({ kind: 'expiry', keyId: id }, content, sel, 'expiry:' + id);
    }

    // _lifecycleRequest returns the request of a lifecycle dialog's submit,
    // or null (after saying why) when the form is not complete.
    _lifecycleRequest(d, keyPath) {
      if (d.kind === 'suspend') {
        const reason = (this._dialog.querySelector('textarea[name=reason]').value || '').trim();
        const body = reason ? { reason } : {};
        return () => this._request('POST', keyPath('/suspend'), body);
      }
      if (d.kind === 'resume') {
        return () => this._request('POST', keyPath('/resume'), {});
      }
      if (d.kind === 'expiry') {
        const v = this._dialog.querySelector('select[name=new-expiry]').value;
        let expiresAt;
        if (v === 'never') expiresAt = null;
        else if (v === 'now') expiresAt = rfc3339(Date.now());
        else if (v === 'date') {
          const input = this._dialog.querySelector('input[name=expiry-date]');
          const ms = input.value ? Date.parse(input.value + 'T23:59:59') : NaN;
          if (Number.isNaN(ms) || ms <= Date.now()) {
            input.setAttribute('aria-invalid', 'true');
            this._setDialogError(new ApiError('http', 0, 'invalid', 'Choose a date after today.'));
            input.focus();
            return null;
          }
          input.removeAttribute('aria-invalid');
          const max = this._maxLifetime();
          expiresAt = rfc3339(max ? Math.min(ms, Date.now() + (max - 60) * 1000) : ms);
        } else {
          const choice = this._expiryChoices().find((c) => c[0] === v);
          if (!choice) return null;
          expiresAt = this._expiryFor(choice, false);
        }
        return () => this._request('PUT', keyPath('/expiry'), { expires_at: expiresAt });
      }
      return null;
    }

    // _lifecycleDone runs when a lifecycle dialog's request succeeded, before
    // the dialog closes: focus goes to the button that undoes it, if any.
    _lifecycleDone(d) {
      if (d.kind === 'suspend') d.returnFid = 'resume:' + d.keyId;
      else if (d.kind === 'resume') d.returnFid = 'suspend:' + d.keyId;
    }

    // _openDetails shows a key's details and its history, oldest first
    // (GET …/keys/{key_id}/history): every event with when, who and the
    // key's status right after it.
    _openDetails(id) {
      const k = this._keyById(id);
      if (!k) return;
      const titleId = this._ids('dlg-title');
      const histId = this._ids('history-title');
      const status = effectiveStatus(k);
      const perms = Array.isArray(k.permissions) ? k.permissions : [];
      const roles = Array.isArray(k.roles) ? k.roles : [];
      const resources = Array.isArray(k.resources) ? k.resources : [];
      const owner = k.owner && typeof k.owner === 'object' ? k.owner : { type: 'organization', id: '' };
      const holder = h('div', { class: 'history', role: 'region', 'aria-labelledby': histId, tabindex: '0' },
        h('div', { class: 'checks-empty', role: 'status' }, 'Loading history\u2026'));
      const closeBtn = h('button', { type: 'button', class: 'primary', onclick: () => this._closeDialog() }, 'Close');
      const heading = h('h3', { id: titleId, tabindex: '-1' }, k.name || 'Untitled key');
      const panel = h('div', { class: 'dlg' },
        h('div', null, heading, h('p', { class: 'sub' }, 'Key details and history')),
        h('dl', { class: 'facts' },
          h('dt', null, 'Key'), h('dd', null, h('code', { class: 'mask' }, k.mask || '')),
          h('dt', null, 'Status'), h('dd', null, h('span', { class: 'badge ' + status }, STATUS_LABEL[status] || String(status))),
          h('dt', null, 'Owner'), h('dd', null, owner.type === 'user' ? 'User ' + String(owner.id) : 'Organization'),
          h('dt', null, 'Permissions'), h('dd', null, perms.length ? perms.join(', ') : 'None'),
          h('dt', null, 'Roles'), h('dd', null, roles.length ? roles.join(', ') : 'None'),
          h('dt', null, 'Resources'), h('dd', null, resources.length ? resources.join(', ') : 'Any'),
          h('dt', null, 'Created'), h('dd', null, timeEl(k.created_at, false)),
          h('dt', null, 'Expires'), h('dd', null, timeEl(k.expires_at, false))),
        h('h4', { id: histId, style: 'margin: 0; font-size: 14px; font-weight: 600;' }, 'History'),
        holder,
        h('div', { class: 'actionsbar' }, closeBtn));
      this._dialog.classList.add('wide');
      this._openDialog({ kind: 'details', keyId: id }, panel, heading, 'details:' + id);
      const d = this._dlg;
      const onClose = () => {
        this._dialog.classList.remove('wide');
        this._dialog.removeEventListener('close', onClose);
      };
      this._dialog.addEventListener('close', onClose);
      const load = () => {
        this._request('GET', this._orgPath() + '/' + encodeURIComponent(id) + '/history').then((data) => {
          if (this._dlg !== d) return;
          holder.replaceChildren(this._historyTable(Array.isArray(data.data) ? data.data : []));
        }, (err) => {
          if (this._dlg !== d) return;
          holder.replaceChildren(h('div', { class: 'err', role: 'alert' },
            h('span', { class: 'msg' }, err.message),
            err.kind !== 'session' ? h('button', {
              type: 'button', class: 'small',
              onclick: () => {
                holder.replaceChildren(h('div', { class: 'checks-empty', role: 'status' }, 'Loading history\u2026'));
                load();
              },
            }, 'Retry') : null));
        });
      };
      load();
    }

    _historyTable(entries) {
      if (entries.length === 0) return h('div', { class: 'checks-empty' }, 'No events yet.');
      const actor = (a) => {
        if (!a || !a.type) return 'Unknown';
        if (a.type === 'system') return 'keyd (automatic)';
        return (a.type === 'user' ? 'User ' : a.type === 'service' ? 'Service ' : a.type + ' ') + (a.id || '');
      };
      const detail = (e) => {
        const key = e.key || {};
        switch (e.type) {
          case 'key.expiry_changed':
            return key.expires_at ? h('span', null, 'Now expires ', timeEl(key.expires_at, false)) : 'No expiration';
          case 'key.permissions_changed':
          case 'key.created': {
            const parts = [Array.isArray(key.permissions) && key.permissions.length ? key.permissions.join(', ') : 'No permissions'];
            if (Array.isArray(key.roles) && key.roles.length) parts.push('roles ' + key.roles.join(', '));
            if (Array.isArray(key.resources) && key.resources.length) parts.push('only ' + key.resources.join(', '));
            return parts.join('; ');
          }
          case 'key.expiring':
            return key.expires_at ? h('span', null, 'Expires ', timeEl(key.expires_at, true)) : '';
          default:
            return '';
        }
      };
      return h('table', null,
        h('caption', { class: 'vh' }, 'Events of this key, oldest first'),
        h('thead', null, h('tr', null,
          h('th', { scope: 'col' }, 'When'), h('th', { scope: 'col' }, 'Event'),
          h('th', { scope: 'col' }, 'By'), h('th', { scope: 'col' }, 'Details'),
          h('th', { scope: 'col' }, 'Status after'))),
        h('tbody', null, entries.map((e) => {
          const st = e.key && e.key.status;
          return h('tr', { 'data-event': e.type || '' },
            h('td', { class: 'when' }, e.occurred_at
              ? h('time', { datetime: e.occurred_at }, dateTimeFmt.format(Date.parse(e.occurred_at)))
              : ''),
            h('td', { class: 'ev' }, EVENT_LABEL[e.type] || String(e.type || '')),
            h('td', { class: 'by' }, actor(e.actor)),
            h('td', null, detail(e)),
            h('td', null, st ? h('span', { class: 'badge ' + st }, STATUS_LABEL[st] || String(st)) : ''));
        })));
    }
  }

  function CSS_escape(s) {
    return window.CSS && CSS.escape ? CSS.escape(s) : String(s).replace(/["\\]/g, '\\$&');
  }

  customElements.define(TAG, KeydApiKeys);
})();
