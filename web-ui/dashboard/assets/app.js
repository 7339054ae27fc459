// Keel dashboard: one script, no dependencies. Every view reads and writes
// through /api/v1 with the session cookie; changes carry the CSRF token.
'use strict';
(() => {
  const PAGE = document.body.dataset.page;
  const POLL_MS = 3000;

  // ---- DOM helpers: text always goes in as text nodes, never as markup.
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'value') el.value = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return el;
  }
  const badge = (text, kind) => h('span', { class: `badge ${kind}` }, text);
  const time = (unix) => new Date(unix * 1000).toLocaleString();
  // Each cell carries its column's name, so narrow screens can show rows as
  // labelled cards (see app.css).
  const table = (head, rows, attrs) => {
    for (const row of rows) [...row.children].forEach((td, i) => { if (head[i]) td.dataset.label = head[i]; });
    return h('div', { class: 'scroll' }, h('table', attrs, h('thead', {}, h('tr', {}, head.map((c) => h('th', {}, c)))),
      h('tbody', {}, rows)));
  };

  // ---- API access.
  let csrf = sessionStorage.getItem('keel.csrf') || '';
  class ApiError extends Error {
    constructor(status, body) {
      const e = body && body.error;
      super(e ? e.message : `HTTP ${status}`);
      this.status = status;
      this.fields = e ? (e.fields || (e.field ? [{ field: e.field, message: e.message }] : [])) : [];
    }
  }
  async function api(method, path, body, opts) {
    const headers = { Accept: 'application/json' };
    let payload;
    if (body !== undefined) {
      const yaml = opts && opts.yaml;
      headers['Content-Type'] = yaml ? 'application/yaml' : 'application/json';
      payload = yaml ? body : JSON.stringify(body);
    }
    if (method !== 'GET') {
      if (!csrf) await session();
      headers['X-CSRF-Token'] = csrf;
    }
    // The entity tag the object had when the form was opened: the server
    // refuses the write (412) if it changed since.
    if (opts && opts.ifMatch) headers['If-Match'] = opts.ifMatch;
    const r = await fetch('/api/v1' + path, { method, headers, body: payload, credentials: 'same-origin' });
    if (r.status === 401 && PAGE === 'app') {
      location.href = '/ui/login';
      throw new ApiError(401, null);
    }
    const text = await r.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: keep the text */ }
    if (!r.ok) throw new ApiError(r.status, data);
    return opts && opts.withTag ? { data, etag: r.headers.get('ETag') } : data;
  }
  // Opens an edit form on a fresh copy of the object and its entity tag.
  async function openEdit(area, kind, name, form) {
    try {
      const { data, etag } = await api('GET', `/${kind}/${encodeURIComponent(name)}`, undefined, { withTag: true });
      area.replaceChildren(form(data, etag));
    } catch (e) { failed(e); }
  }
  async function session() {
    const me = await api('GET', '/session');
    csrf = me.csrf || '';
    sessionStorage.setItem('keel.csrf', csrf);
    return me;
  }

  function toast(text) {
    const t = document.getElementById('toast');
    if (!t) return;
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // ---- Forms: API validation errors land next to the field they name.
  function showErrors(form, err) {
    for (const el of form.querySelectorAll('.field-error')) el.remove();
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    const top = form.querySelector('.form-error');
    top.textContent = '';
    if (!err) return;
    const unplaced = [];
    for (const f of err.fields.length ? err.fields : [{ field: '', message: err.message }]) {
      const input = f.field && form.querySelector(`[data-field="${CSS.escape(f.field)}"]`);
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        input.closest('label').append(h('span', { class: 'field-error', 'data-error-for': f.field }, f.message));
      } else {
        unplaced.push(f.field ? `${f.field}: ${f.message}` : f.message);
      }
    }
    top.textContent = unplaced.join('\n');
  }
  const input = (label, field, attrs) =>
    h('label', {}, label, ' ', h('input', Object.assign({ 'data-field': field, name: field }, attrs)));
  const select = (label, field, options, value) =>
    h('label', {}, label, ' ', h('select', { 'data-field': field, name: field },
      options.map((o) => h('option', { value: o, selected: o === value }, o || '—'))));
  const num = (v) => (v.trim() !== '' && !Number.isNaN(Number(v)) ? Number(v) : v);

  // ---- Routing between views without reloading the page.
  let generation = 0;
  let timer = null;
  const main = () => document.getElementById('main');
  function loaded() { main().dataset.loaded = String(generation); }
  function every(ms, fn) {
    const mine = generation;
    const tick = async () => {
      if (mine !== generation) return;
      try { await fn(); } catch (e) { if (mine === generation) failed(e); }
    };
    tick();
    timer = setInterval(tick, ms);
  }
  function failed(e) {
    if (e && e.status === 401) return;
    toast(`Error: ${e.message || e}`);
  }
  function go(path) {
    history.pushState(null, '', path);
    render();
  }
  function render() {
    clearInterval(timer);
    generation += 1;
    const name = location.pathname.replace(/^\/ui\/?/, '').split('/')[0];
    for (const a of document.querySelectorAll('#nav a')) {
      if (a.dataset.route === (name || 'overview')) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const m = main();
    m.replaceChildren();
    delete m.dataset.loaded;
    const view = VIEWS[name || 'overview'];
    if (!view) {
      m.append(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/ui/' }, 'Back to the overview')));
      loaded();
      return;
    }
    document.title = `Keel — ${view.title}`;
    Promise.resolve(view.draw(m)).catch(failed);
  }

  // ---- Member state in words, from every node's view.
  function memberState(member, health) {
    const views = health ? health.views : {};
    const entries = Object.entries(views);
    if (member.enabled === false) {
      const draining = entries.filter(([, v]) => v === 'draining').map(([n]) => n);
      return draining.length ? ['draining', 'warn', `draining on ${draining.join(', ')}`] : ['disabled', 'warn', 'disabled'];
    }
    if (!entries.length) return ['unknown', 'warn', 'no node reports it yet'];
    const down = entries.filter(([, v]) => v === 'down').map(([n]) => n);
    if (!down.length) return ['up', 'ok', `up on ${entries.map(([n]) => n).join(', ')}`];
    if (down.length === entries.length) return ['down', 'bad', `down on ${down.join(', ')}`];
    return ['degraded', 'bad', `down on ${down.join(', ')}`];
  }
  const healthIndex = (status) => {
    const by = {};
    for (const m of status.members || []) by[`${m.pool}/${m.address}`] = m;
    return by;
  };

  // ---- Overview.
  async function overview(m) {
    const body = h('div');
    m.append(h('h1', {}, 'Overview'), body);
    every(POLL_MS, async () => {
      const [st, vips, events, pools] = await Promise.all([
        api('GET', '/status'), api('GET', '/vips'), api('GET', '/events'), api('GET', '/pools'),
      ]);
      const leader = st.nodes.find((n) => n.name === st.leader);
      const leaderVersion = leader ? leader.applied_version : null;
      const reachable = st.nodes.filter((n) => n.reachable).length;
      const health = healthIndex(st);
      let up = 0, down = 0, off = 0;
      for (const p of pools) for (const mem of p.members) {
        const [word] = memberState(mem, health[`${p.name}/${mem.address}`]);
        if (word === 'up') up += 1; else if (word === 'disabled' || word === 'draining') off += 1; else down += 1;
      }
      // Nodes run different Keels, or the cluster waits for one to raise
      // its version: an upgrade under way.
      const upgrading = st.nodes.some((n) => n.cluster_version !== st.cluster_version);
      const nodeRows = st.nodes.map((n) => h('tr', { 'data-node': n.name },
        h('td', {}, n.name, n.name === st.this_node ? h('span', { class: 'muted' }, ' (this node)') : ''),
        h('td', { class: 'role' }, n.role, n.drained ? [' ', badge('drained', 'warn')] : ''),
        h('td', { class: 'reach' }, n.reachable ? badge('reachable', 'ok') : badge('unreachable', 'bad'),
          n.live === false ? h('span', { class: 'muted' }, ' gossip: dead') : ''),
        h('td', {}, n.applied_version ?? '—',
          leaderVersion !== null && n.applied_version !== null && n.applied_version !== leaderVersion
            ? badge(`behind leader (${leaderVersion})`, 'warn') : ''),
        h('td', {}, n.ready === true ? badge('serving', 'ok') : n.ready === false ? badge('not ready', 'bad') : '—'),
        h('td', {}, (n.vips || []).join(', ') || '—'),
        h('td', { class: 'keel' }, n.keel_version ?? '—',
          n.cluster_version ? h('span', { class: 'muted' }, ` (cluster version ${n.cluster_version})`) : '')));
      const vipRows = vips.map((v) => h('tr', {},
        h('td', {}, v.load_balancer), h('td', {}, v.vip),
        h('td', { 'data-vip-holder': v.vip }, v.holders.length ? v.holders.join(', ') : badge('no holder (moving)', 'warn'))));
      const lastOf = (...kinds) => events.filter((e) => kinds.includes(e.kind)).pop();
      const backup = lastOf('backup');
      const recovery = lastOf('restore', 'recovery');
      const recent = events.slice(-25).reverse().map((e) => h('li', {},
        h('span', { class: 'muted' }, time(e.at)), ' ', badge(e.kind, 'muted'), ' ', e.message,
        e.by ? h('span', { class: 'muted' }, ` — by ${e.by}`) : ''));
      body.replaceChildren(
        h('div', { class: 'grid' },
          h('div', { class: 'card' }, h('h2', {}, 'Cluster'),
            h('div', { class: 'stat', id: 'leader' }, st.leader ? `leader: ${st.leader}` : 'no leader'),
            h('p', {}, `term ${st.term} · config version ${st.applied_version} · ${reachable} of ${st.nodes.length} nodes reachable`),
            h('p', { id: 'cluster-version' }, `cluster version ${st.cluster_version}`,
              upgrading ? [' ', badge('upgrade in progress', 'warn')] : '')),
          h('div', { class: 'card' }, h('h2', {}, 'Members'),
            h('div', { class: 'stat', id: 'member-counts' }, `${up} healthy · ${down} unhealthy`),
            h('p', {}, `${off} disabled or draining, in ${pools.length} pools`)),
          h('div', { class: 'card' }, h('h2', {}, 'Backups and recovery'),
            h('p', { id: 'last-backup' }, backup
              ? `last backup ${time(backup.at)} by ${backup.by}: ${backup.message.replace(/^backup: /, '')}`
              : 'No backup taken yet (keel backup -o FILE).'),
            h('p', { id: 'last-recovery' }, recovery
              ? `${recovery.kind} ${time(recovery.at)}: ${recovery.message.replace(/^\w+: /, '')}`
              : 'No restore or recovery.'))),
        h('div', { class: 'card' }, h('h2', {}, 'Nodes'),
          table(['Node', 'Role', 'Reachability', 'Config version', 'Data plane', 'VIPs', 'Keel'], nodeRows, { id: 'nodes' })),
        h('div', { class: 'card' }, h('h2', {}, 'Virtual IPs'),
          vips.length ? table(['Load balancer', 'VIP', 'Held by'], vipRows) : h('p', { class: 'muted' }, 'No load balancer has a VIP.')),
        h('div', { class: 'card' }, h('h2', {}, 'Recent events'),
          recent.length ? h('ul', { class: 'events', id: 'events' }, recent) : h('p', { class: 'muted' }, 'Nothing yet.')));
      loaded();
    });
  }

  // ---- Load balancers.
  async function loadBalancers(m) {
    const [lbs, pools, managers] = await Promise.all([api('GET', '/load-balancers'), api('GET', '/pools'), api('GET', '/managers')]);
    const poolNames = pools.map((p) => p.name);
    const area = h('div');
    const rows = lbs.map((lb) => h('tr', { 'data-lb': lb.name },
      h('td', {}, lb.name), h('td', {}, lb.vip || '—'),
      h('td', {}, lb.listeners.map((l) => h('div', {}, `${l.port}/${l.protocol} → ${l.default_pool || '(no default pool)'}${l.rules && l.rules.length ? ` (+${l.rules.length} rules)` : ''}`))),
      h('td', { class: 'manager' }, managers[`load-balancer/${lb.name}`] || '—'),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { class: 'secondary', type: 'button', onclick: () => openEdit(area, 'load-balancers', lb.name, (fresh, etag) => lbForm(fresh, poolNames, etag)) }, 'Edit'),
        h('button', { class: 'danger', type: 'button', onclick: () => remove('load-balancers', lb.name) }, 'Delete')))));
    m.append(h('h1', {}, 'Load balancers'),
      h('div', { class: 'actions' }, h('button', { id: 'new-lb', type: 'button', onclick: () => area.replaceChildren(lbForm(null, poolNames)) }, 'New load balancer')),
      area,
      h('div', { class: 'card' }, lbs.length ? table(['Name', 'VIP', 'Listeners', 'Managed by', ''], rows, { id: 'lb-table' }) : h('p', { class: 'muted' }, 'No load balancers yet.')));
    loaded();
  }

  function lbForm(lb, poolNames, etag) {
    const listeners = h('div');
    const addListener = (l) => {
      const i = listeners.children.length;
      const row = h('div', { class: 'row listener' },
        input('Port', `listeners[${i}].port`, { value: l ? l.port : '', inputmode: 'numeric', size: 6 }),
        select('Protocol', `listeners[${i}].protocol`, ['http', 'https', 'tcp', 'tls', 'tls_passthrough'], l ? l.protocol : 'http'),
        select('Default pool', `listeners[${i}].default_pool`, [''].concat(poolNames), l ? l.default_pool || '' : poolNames[0]),
        input('Certificates (https, tls)', `listeners[${i}].certificates`, { value: l && l.certificates ? l.certificates.join(', ') : '', size: 16 }),
        h('button', { type: 'button', class: 'danger', onclick: () => row.remove() }, 'Remove'));
      row.original = l || {};
      listeners.append(row);
    };
    (lb ? lb.listeners : [null]).forEach(addListener);
    const form = h('form', { class: 'card', id: 'lb-form' },
      h('h2', {}, lb ? `Edit load balancer ${lb.name}` : 'New load balancer'),
      input('Name', 'name', { value: lb ? lb.name : '', required: true, readonly: !!lb }),
      input('VIP (optional, e.g. 10.0.0.100/24)', 'vip', { value: lb ? lb.vip || '' : '' }),
      h('h2', {}, 'Listeners'), listeners,
      h('button', { type: 'button', class: 'secondary', onclick: () => addListener(null) }, 'Add listener'),
      h('p', { class: 'error form-error', role: 'alert' }),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save'),
        h('button', { type: 'button', class: 'secondary', onclick: () => form.remove() }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const value = (f) => form.querySelector(`[data-field="${CSS.escape(f)}"]`).value;
      const doc = { name: value('name').trim(), listeners: [] };
      if (value('vip').trim()) doc.vip = value('vip').trim();
      [...listeners.children].forEach((row, i) => {
        // Keep fields the form does not show (bind address, timeouts).
        const l = Object.assign({}, row.original);
        for (const el of row.querySelectorAll('[data-field]')) el.dataset.field = el.name = el.dataset.field.replace(/^listeners\[\d+\]/, `listeners[${i}]`);
        l.port = num(value(`listeners[${i}].port`));
        l.protocol = value(`listeners[${i}].protocol`);
        const pool = value(`listeners[${i}].default_pool`);
        if (pool) l.default_pool = pool; else delete l.default_pool;
        const certs = value(`listeners[${i}].certificates`).split(',').map((c) => c.trim()).filter((c) => c);
        if (certs.length) l.certificates = certs; else delete l.certificates;
        if (!['https', 'tls'].includes(l.protocol)) delete l.tls_policy;
        if (!['http', 'https'].includes(l.protocol)) delete l.http2;
        doc.listeners.push(l);
      });
      try {
        if (lb) await api('PUT', `/load-balancers/${encodeURIComponent(lb.name)}`, doc, { ifMatch: etag });
        else await api('POST', '/load-balancers', doc);
        toast(`Load balancer ${doc.name} saved`);
        render();
      } catch (e) { showErrors(form, e); }
    });
    return form;
  }

  async function remove(kind, name) {
    if (!confirm(`Delete ${name}?`)) return;
    try {
      await api('DELETE', `/${kind}/${encodeURIComponent(name)}`);
      toast(`${name} deleted`);
      render();
    } catch (e) { failed(e); }
  }

  // ---- Pools and members.
  async function poolsView(m) {
    const area = h('div');
    const list = h('div');
    m.append(h('h1', {}, 'Pools'),
      h('div', { class: 'actions' }, h('button', { id: 'new-pool', type: 'button', onclick: () => area.replaceChildren(poolForm(null)) }, 'New pool')),
      area, list);
    every(POLL_MS, async () => {
      const [pools, st, managers] = await Promise.all([api('GET', '/pools'), api('GET', '/status'), api('GET', '/managers')]);
      const health = healthIndex(st);
      list.replaceChildren(...pools.map((p) => h('div', { class: 'card', 'data-pool': p.name },
        h('h2', {}, `Pool ${p.name}`),
        h('p', { class: 'muted' }, `${p.algorithm || 'round_robin'} · health check: ${p.health_check ? `${p.health_check.type} ${p.health_check.path || ''}` : 'none'} · managed by ${managers[`pool/${p.name}`] || '—'}`),
        table(['Member', 'Weight', 'State', 'As each node sees it', 'Managed by', ''], p.members.map((mem) => {
          const [word, kind, detail] = memberState(mem, health[`${p.name}/${mem.address}`]);
          const enabled = mem.enabled !== false;
          return h('tr', { 'data-member': mem.address },
            h('td', {}, mem.address), h('td', {}, mem.weight ?? 1),
            h('td', { class: 'member-state' }, badge(word, kind)),
            h('td', { class: 'muted' }, detail),
            h('td', { class: 'manager' }, managers[`member/${p.name}/${mem.address}`] || '—'),
            h('td', {}, h('button', {
              type: 'button', class: enabled ? 'secondary drain' : 'secondary enable',
              onclick: () => setMember(p.name, mem.address, !enabled),
            }, enabled ? 'Drain' : 'Enable')));
        })),
        h('div', { class: 'actions' },
          h('button', { class: 'secondary', type: 'button', onclick: () => openEdit(area, 'pools', p.name, poolForm) }, 'Edit'),
          h('button', { class: 'danger', type: 'button', onclick: () => remove('pools', p.name) }, 'Delete')))));
      if (!pools.length) list.replaceChildren(h('p', { class: 'card muted' }, 'No pools yet.'));
      loaded();
    });
  }

  async function setMember(pool, address, enabled) {
    try {
      await api('PATCH', `/pools/${encodeURIComponent(pool)}/members/${encodeURIComponent(address)}`, { enabled });
      toast(`${address} ${enabled ? 'enabled' : 'draining'}`);
      render();
    } catch (e) { failed(e); }
  }

  function poolForm(p, etag) {
    const members = h('div');
    const addMember = (mem) => {
      const i = members.children.length;
      const row = h('div', { class: 'row member' },
        input('Address (ip:port)', `members[${i}].address`, { value: mem ? mem.address : '', size: 22 }),
        input('Weight', `members[${i}].weight`, { value: mem && mem.weight !== undefined ? mem.weight : '', size: 5, inputmode: 'numeric' }),
        h('button', { type: 'button', class: 'danger', onclick: () => row.remove() }, 'Remove'));
      row.original = mem || {};
      members.append(row);
    };
    (p ? p.members : [null, null]).forEach(addMember);
    const hc = (p && p.health_check) || {};
    const form = h('form', { class: 'card', id: 'pool-form' },
      h('h2', {}, p ? `Edit pool ${p.name}` : 'New pool'),
      input('Name', 'name', { value: p ? p.name : '', required: true, readonly: !!p }),
      select('Algorithm', 'algorithm', ['round_robin', 'least_outstanding', 'random_two', 'source_hash', 'consistent_hash'], p ? p.algorithm || 'round_robin' : 'round_robin'),
      h('div', { class: 'row' },
        select('Health check', 'health_check.type', ['', 'tcp', 'http'], hc.type || ''),
        input('Path (http)', 'health_check.path', { value: hc.path || '', size: 12 }),
        input('Interval', 'health_check.interval', { value: hc.interval || '', size: 6, placeholder: '2s' })),
      h('h2', {}, 'Members'), members,
      h('button', { type: 'button', class: 'secondary', onclick: () => addMember(null) }, 'Add member'),
      h('p', { class: 'error form-error', role: 'alert' }),
      h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save'),
        h('button', { type: 'button', class: 'secondary', onclick: () => form.remove() }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const value = (f) => form.querySelector(`[data-field="${CSS.escape(f)}"]`).value.trim();
      const doc = Object.assign({}, p || {}, { name: value('name'), algorithm: value('algorithm'), members: [] });
      if (value('health_check.type')) {
        doc.health_check = Object.assign({}, hc, { type: value('health_check.type') });
        if (value('health_check.path')) doc.health_check.path = value('health_check.path'); else delete doc.health_check.path;
        if (value('health_check.interval')) doc.health_check.interval = value('health_check.interval'); else delete doc.health_check.interval;
      } else {
        delete doc.health_check;
      }
      [...members.children].forEach((row, i) => {
        for (const el of row.querySelectorAll('[data-field]')) el.dataset.field = el.name = el.dataset.field.replace(/^members\[\d+\]/, `members[${i}]`);
        const mem = Object.assign({}, row.original, { address: value(`members[${i}].address`) });
        const weight = value(`members[${i}].weight`);
        if (weight !== '') mem.weight = num(weight); else delete mem.weight;
        doc.members.push(mem);
      });
      try {
        if (p) await api('PUT', `/pools/${encodeURIComponent(p.name)}`, doc, { ifMatch: etag });
        else await api('POST', '/pools', doc);
        toast(`Pool ${doc.name} saved`);
        render();
      } catch (e) { showErrors(form, e); }
    });
    return form;
  }

  // ---- Certificates.
  async function certificates(m) {
    const certs = await api('GET', '/certificates');
    const area = h('div');
    const form = () => {
      const f = h('form', { class: 'card', id: 'cert-form' }, h('h2', {}, 'New certificate'),
        input('Name', 'name', { required: true }),
        h('label', {}, 'Certificate chain (PEM)', h('textarea', { 'data-field': 'cert_pem', rows: 6 })),
        h('label', {}, 'Private key (PEM; stored, never shown again)', h('textarea', { 'data-field': 'key_pem', rows: 6 })),
        h('p', { class: 'error form-error', role: 'alert' }),
        h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save')));
      f.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const v = (n) => f.querySelector(`[data-field="${n}"]`).value;
        try {
          await api('POST', '/certificates', { name: v('name').trim(), cert_pem: v('cert_pem'), key_pem: v('key_pem') });
          toast('Certificate saved');
          render();
        } catch (e) { showErrors(f, e); }
      });
      return f;
    };
    m.append(h('h1', {}, 'Certificates'),
      h('div', { class: 'actions' }, h('button', { id: 'new-cert', type: 'button', onclick: () => area.replaceChildren(form()) }, 'New certificate')),
      area,
      h('div', { class: 'card' }, certs.length
        ? table(['Name', 'Certificate', ''], certs.map((c) => h('tr', { 'data-cert': c.name }, h('td', {}, c.name),
          h('td', { class: 'muted' }, `${c.cert_pem.split('BEGIN CERTIFICATE').length - 1} certificate(s) in the chain`),
          h('td', {}, h('button', { class: 'danger', type: 'button', onclick: () => remove('certificates', c.name) }, 'Delete')))), { id: 'cert-table' })
        : h('p', { class: 'muted' }, 'No certificates yet.')));
    loaded();
  }

  // ---- Live traffic: small SVG charts of the last 15 minutes.
  function chart(title, points, lines, unit, digits) {
    const W = 300, H = 90, PAD = 4;
    const now = Date.now();
    // The last 15 minutes, or the last minute while there is less history.
    const first = points.length ? points[0].at : now;
    const from = Math.max(now - 15 * 60 * 1000, Math.min(first, now - 60 * 1000));
    let top = 0;
    for (const p of points) for (const f of lines) top = Math.max(top, f(p) || 0);
    const max = top > 0 ? top * 1.15 : 1;
    const x = (t) => PAD + ((t - from) / (now - from)) * (W - 2 * PAD);
    const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, preserveAspectRatio: 'none' });
    lines.forEach((f, i) => {
      const shown = points.filter((p) => p.at >= from && f(p) !== null && f(p) !== undefined);
      const pts = shown.map((p) => `${x(p.at).toFixed(1)},${y(f(p)).toFixed(1)}`);
      if (pts.length) svg.append(s('polyline', { class: i ? 'line2' : 'line', points: pts.join(' ') }));
      const last = shown[shown.length - 1];
      if (last) svg.append(s('circle', { class: i ? 'dot2' : 'dot', cx: x(last.at).toFixed(1), cy: y(f(last)).toFixed(1), r: 2 }));
    });
    svg.append(s('text', { x: W - PAD, y: 12, 'text-anchor': 'end', 'font-size': 10, fill: '#5c6b7a' }, `max ${top.toFixed(digits)}`));
    const last = points[points.length - 1];
    const current = last ? lines.map((f) => f(last)).map((v) => (v === null || v === undefined ? '—' : v.toFixed(digits))).join(' / ') : '—';
    return h('div', { class: 'chart' }, h('div', {}, title, ': ', h('span', { class: 'now', 'data-now': current }, `${current} ${unit}`)), svg);
  }

  async function traffic(m) {
    const body = h('div');
    m.append(h('h1', {}, 'Live traffic'), h('p', { class: 'muted' }, 'Last 15 minutes, all nodes summed; updated every few seconds.'), body);
    every(POLL_MS, async () => {
      const t = await api('GET', '/traffic');
      const cards = t.series.map((series) => h('div', { class: 'card', 'data-series': `${series.kind}/${series.name}` },
        h('h2', {}, `${series.kind === 'pool' ? 'Pool' : 'Load balancer'} ${series.name}`),
        h('div', { class: 'charts' },
          chart('Requests', series.points, [(p) => p.requests_per_s], 'req/s', 1),
          chart('Errors', series.points, [(p) => p.error_rate * 100], '%', 1),
          chart('Active connections', series.points, [(p) => p.active], '', 0),
          chart('Latency p50 / p99', series.points, [(p) => p.p50_ms, (p) => p.p99_ms], 'ms', 1))));
      body.replaceChildren(...(cards.length ? cards : [h('p', { class: 'card muted' }, 'No load balancers or pools yet.')]));
      loaded();
    });
  }

  // ---- Cluster: nodes, join tokens.
  async function clusterView(m) {
    const tokenArea = h('div');
    const nodes = h('div', { class: 'card' });
    const tokens = h('div', { class: 'card' });
    const form = h('form', { class: 'card', id: 'token-form' }, h('h2', {}, 'Add a node'),
      h('div', { class: 'row' },
        input('Valid for', 'ttl', { value: '1h', size: 6 }),
        input('Uses', 'uses', { value: '1', size: 4, inputmode: 'numeric' }),
        h('button', { type: 'submit', id: 'create-token' }, 'Create join token')),
      h('p', { class: 'error form-error', role: 'alert' }), tokenArea);
    m.append(h('h1', {}, 'Cluster'), form, nodes, tokens);
    let status = null;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const v = (n) => form.querySelector(`[data-field="${n}"]`).value.trim();
      try {
        const t = await api('POST', '/tokens', { ttl: v('ttl'), uses: num(v('uses')) });
        showErrors(form, null);
        const me = status && status.nodes.find((n) => n.name === status.this_node);
        const command = `keel run --join ${me ? me.cluster_addr : 'HOST:9091'} --token ${t.token}`;
        tokenArea.replaceChildren(
          h('p', {}, `Run this on the new node (valid until ${time(t.expires_at)}, ${t.uses} use(s)); the token is shown only now:`),
          h('code', { class: 'copy', id: 'join-command' }, command),
          h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', onclick: () => navigator.clipboard && navigator.clipboard.writeText(command).then(() => toast('Copied')) }, 'Copy')));
      } catch (e) { showErrors(form, e); }
    });
    every(POLL_MS, async () => {
      const [st, list] = await Promise.all([api('GET', '/status'), api('GET', '/tokens')]);
      status = st;
      nodes.replaceChildren(h('h2', {}, 'Nodes'), table(['Node', 'Role', 'State', 'Cluster address', 'Admin address', 'Version', ''],
        st.nodes.map((n) => h('tr', { 'data-node': n.name },
          h('td', {}, n.name, h('div', { class: 'muted' }, n.id)), h('td', {}, n.role),
          h('td', {}, n.reachable ? badge('reachable', 'ok') : badge('unreachable', 'bad')),
          h('td', {}, n.cluster_addr), h('td', {}, n.admin_addr), h('td', {}, n.keel_version || '—'),
          h('td', {}, n.name === st.this_node ? '' : h('button', {
            type: 'button', class: 'danger', onclick: async () => {
              if (!confirm(`Remove node ${n.name} from the cluster?`)) return;
              try { await api('DELETE', `/nodes/${encodeURIComponent(n.name)}`); toast(`${n.name} removed`); } catch (e) { failed(e); }
            },
          }, 'Remove')))), { id: 'cluster-nodes' }));
      const now = Date.now() / 1000;
      tokens.replaceChildren(h('h2', {}, 'Join tokens'), list.length ? table(['Token', 'Expires', 'Uses left', 'State', ''],
        list.map((t) => h('tr', { 'data-token': t.id },
          h('td', {}, t.id), h('td', {}, time(t.expires_at)), h('td', {}, t.uses_left),
          h('td', {}, t.revoked ? badge('revoked', 'bad') : t.expired || t.expires_at <= now ? badge('expired', 'warn')
            : t.uses_left === 0 ? badge('used up', 'warn') : badge('valid', 'ok')),
          h('td', {}, t.revoked ? '' : h('button', {
            type: 'button', class: 'danger', onclick: async () => {
              try { await api('DELETE', `/tokens/${encodeURIComponent(t.id)}`); toast('Token revoked'); } catch (e) { failed(e); }
            },
          }, 'Revoke'))))) : h('p', { class: 'muted' }, 'No join tokens.'));
      loaded();
    });
  }

  // ---- Config: view, download, upload with a preview of the changes.
  function lineDiff(a, b) {
    const x = a.split('\n'), y = b.split('\n');
    if (x.length * y.length > 4e6) return null;
    const n = x.length, m = y.length;
    const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i -= 1) for (let j = m - 1; j >= 0; j -= 1)
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) { out.push([' ', x[i]]); i += 1; j += 1; }
      else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(['+', y[j]]); j += 1; }
      else { out.push(['-', x[i]]); i += 1; }
    }
    return out;
  }

  async function config(m) {
    const r = await fetch('/api/v1/config?format=yaml', { credentials: 'same-origin' });
    if (r.status === 401) { location.href = '/ui/login'; return; }
    const current = await r.text();
    const version = r.headers.get('x-keel-version');
    const etag = r.headers.get('ETag');
    const editor = h('textarea', { id: 'config-editor', rows: 18, spellcheck: 'false', 'data-field': 'config' });
    editor.value = current;
    const preview = h('div', { id: 'config-preview' });
    const file = h('input', { type: 'file', accept: '.yaml,.yml,.json', 'aria-label': 'Load a file' });
    file.addEventListener('change', async () => { if (file.files[0]) editor.value = await file.files[0].text(); });
    const applyButton = h('button', { type: 'button', id: 'config-apply', disabled: true }, 'Apply');
    const form = h('form', { class: 'card' }, h('h2', {}, 'Change the config'),
      h('p', { class: 'muted' }, 'Edit below or load a file, preview what would change, then apply. Certificate keys are not shown; a certificate without key_pem keeps its stored key.'),
      h('div', { class: 'row' }, file), h('label', {}, editor),
      h('p', { class: 'error form-error', role: 'alert' }),
      h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'config-preview-button' }, 'Preview changes'), applyButton),
      preview);
    editor.addEventListener('input', () => { applyButton.disabled = true; });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        const res = await api('PUT', '/config?dry_run=true', editor.value, { yaml: true, ifMatch: etag });
        showErrors(form, null);
        const diff = lineDiff(current, editor.value);
        preview.replaceChildren(
          h('h2', {}, res.objects.length ? `${res.objects.length} change(s)` : 'No changes'),
          h('ul', { id: 'config-changes' }, res.objects.map((c) => h('li', {}, c))),
          diff ? h('pre', { class: 'diff' }, diff.filter(([k]) => k !== ' ').map(([k, line]) =>
            h('div', { class: k === '+' ? 'add' : 'del' }, `${k} ${line}`))) : '');
        applyButton.disabled = !res.changes.length;
      } catch (e) { showErrors(form, e); preview.replaceChildren(); }
    });
    applyButton.addEventListener('click', async () => {
      try {
        const res = await api('PUT', '/config', editor.value, { yaml: true, ifMatch: etag });
        toast(`Applied as version ${res.version}`);
        render();
      } catch (e) { showErrors(form, e); }
    });
    m.append(h('h1', {}, 'Config'),
      h('div', { class: 'card' }, h('h2', {}, `Current config (version ${version})`),
        h('div', { class: 'actions' }, h('a', { href: '/api/v1/config?format=yaml', download: 'keel.yaml', id: 'config-download' }, 'Download YAML')),
        h('pre', { id: 'config-current' }, current || '# empty')),
      form);
    loaded();
  }

  // ---- Password: your own, with the current one.
  async function password(m) {
    const me = await session();
    const form = h('form', { class: 'card', id: 'password-form' }, h('h2', {}, `Change the password of ${me.user}`),
      input('Current password', 'current_password', { type: 'password', autocomplete: 'current-password', required: true }),
      input('New password (at least 12 characters)', 'password', { type: 'password', autocomplete: 'new-password', required: true }),
      input('Repeat it', 'repeat', { type: 'password', autocomplete: 'new-password', required: true }),
      h('p', { class: 'error form-error', role: 'alert' }),
      h('button', { type: 'submit' }, 'Change password'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const v = (n) => form.querySelector(`[data-field="${n}"]`).value;
      if (v('password') !== v('repeat')) {
        showErrors(form, { fields: [{ field: 'repeat', message: 'does not match' }] });
        return;
      }
      try {
        await api('POST', `/users/${encodeURIComponent(me.user)}/password`,
          { password: v('password'), current_password: v('current_password') });
        document.getElementById('banner').hidden = true;
        toast('Password changed; your other sessions are logged out');
        go('/ui/');
      } catch (e) { showErrors(form, e); }
    });
    m.append(h('h1', {}, 'Password'), form);
    loaded();
  }

  // ---- Users (admins): roles, first passwords, deletion.
  const ROLES = ['viewer', 'operator', 'admin'];
  async function users(m) {
    const list = h('div', { class: 'card', id: 'users' });
    const form = h('form', { class: 'card', id: 'user-form' }, h('h2', {}, 'Add a user'),
      h('p', { class: 'muted' }, 'Viewers read; operators also change load balancers, pools and certificates; admins also manage users, tokens, nodes and the cluster. The new user must change this first password when they log in.'),
      h('div', { class: 'row' }, input('Name', 'name', { required: true, autocomplete: 'off' }), select('Role', 'role', ROLES, 'viewer'),
        input('First password (at least 12 characters)', 'password', { type: 'password', autocomplete: 'new-password', required: true })),
      h('p', { class: 'error form-error', role: 'alert' }),
      h('button', { type: 'submit' }, 'Add user'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const v = (n) => form.querySelector(`[data-field="${n}"]`).value;
      try {
        await api('POST', '/users', { name: v('name').trim(), role: v('role'), password: v('password') });
        showErrors(form, null);
        form.reset();
        toast('User added');
        draw();
      } catch (e) { showErrors(form, e); }
    });
    const me = await session();
    async function draw() {
      const all = await api('GET', '/users');
      list.replaceChildren(h('h2', {}, 'Users'), table(['User', 'Role', 'State', 'Sessions', 'API tokens', ''],
        all.map((u) => {
          const role = h('select', { 'aria-label': `Role of ${u.name}`, 'data-role-of': u.name },
            ROLES.map((r) => h('option', { value: r, selected: r === u.role }, r)));
          role.addEventListener('change', async () => {
            try { await api('PATCH', `/users/${encodeURIComponent(u.name)}`, { role: role.value }); toast(`${u.name} is now ${role.value}`); } catch (e) { failed(e); }
            draw();
          });
          const reset = async () => {
            const next = prompt(`A new password for ${u.name} (at least 12 characters); they must change it at their next login:`);
            if (!next) return;
            try { await api('POST', `/users/${encodeURIComponent(u.name)}/password`, { password: next }); toast(`Password of ${u.name} reset; their sessions are logged out`); } catch (e) { failed(e); }
            draw();
          };
          const remove = async () => {
            if (!confirm(`Delete user ${u.name} with their API tokens and AWS keys?`)) return;
            try { await api('DELETE', `/users/${encodeURIComponent(u.name)}`); toast(`${u.name} deleted`); } catch (e) { failed(e); }
            draw();
          };
          return h('tr', { 'data-user': u.name },
            h('td', {}, u.name), h('td', {}, role),
            h('td', {}, u.must_change_password ? badge('must change password', 'warn') : badge('active', 'ok')),
            h('td', {}, u.sessions), h('td', {}, u.api_tokens),
            h('td', {}, u.name === me.user ? '' : [
              h('button', { type: 'button', class: 'secondary', onclick: reset }, 'Reset password'), ' ',
              h('button', { type: 'button', class: 'danger', onclick: remove }, 'Delete')]));
        }), { id: 'users-table' }));
      loaded();
    }
    m.append(h('h1', {}, 'Users'), list, form);
    await draw();
  }

  const VIEWS = {
    overview: { title: 'Overview', draw: overview },
    'load-balancers': { title: 'Load balancers', draw: loadBalancers },
    pools: { title: 'Pools', draw: poolsView },
    certificates: { title: 'Certificates', draw: certificates },
    traffic: { title: 'Traffic', draw: traffic },
    cluster: { title: 'Cluster', draw: clusterView },
    config: { title: 'Config', draw: config },
    password: { title: 'Password', draw: password },
    users: { title: 'Users', draw: users },
  };

  // ---- Start.
  async function startApp() {
    document.addEventListener('click', (ev) => {
      const a = ev.target.closest('a');
      if (!a || a.hasAttribute('download') || !a.getAttribute('href').startsWith('/ui/') || ev.ctrlKey || ev.metaKey) return;
      ev.preventDefault();
      go(a.getAttribute('href'));
    });
    window.addEventListener('popstate', render);
    document.getElementById('logout').addEventListener('click', async () => {
      try { await api('POST', '/logout'); } catch (_) { /* the session may be gone already */ }
      sessionStorage.removeItem('keel.csrf');
      location.href = '/ui/login';
    });
    try {
      const me = await session();
      document.getElementById('who').textContent = `${me.user} (${me.role})`;
      // Only admins manage users.
      if (me.role === 'admin') document.getElementById('nav-users').hidden = false;
      if (me.must_change_password) {
        // The server refuses everything else until then.
        const banner = document.getElementById('banner');
        banner.replaceChildren('Your password is a generated one or was set by an admin: change it to go on.');
        banner.hidden = false;
        if (!location.pathname.startsWith('/ui/password')) history.replaceState(null, '', '/ui/password');
      }
    } catch (e) { failed(e); }
    render();
  }

  function startLogin() {
    const form = document.getElementById('login-form');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const err = document.getElementById('login-error');
      err.textContent = '';
      const r = await fetch('/api/v1/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user: form.user.value, password: form.password.value, cookie: true }),
      });
      const data = await r.json().catch(() => null);
      if (!r.ok) {
        err.textContent = (data && data.error && data.error.message) || `login failed (HTTP ${r.status})`;
        return;
      }
      sessionStorage.setItem('keel.csrf', data.csrf);
      location.href = data.must_change_password ? '/ui/password' : '/ui/';
    });
  }

  if (PAGE === 'login') startLogin(); else startApp();
})();
