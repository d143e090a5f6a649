/*
 * shoprelay.js: the browser half of shoprelay.
 *
 * Loaded as <script async src="https://shop.example/s.js" data-key="WRITE_KEY"></script>.
 * Sends Segment-shaped messages to the relay's /v1/batch. It sets no cookie and stores nothing:
 * the relay owns the visitor's identity through its own HttpOnly cookie, so the tracker cannot
 * leak or fork it.
 *
 * Plain ES2017, no dependencies. The only global is `shoprelay`.
 */
(function (w, d) {
  'use strict';

  var prior = w.shoprelay;
  // A second copy of the script on the same page must not double-send everything.
  if (prior && !Array.isArray(prior) && prior.track) return;

  var nav = w.navigator;
  var MAX_BATCH = 10;
  var FLUSH_MS = 1000;

  function findScript() {
    // currentScript is null when we run from a callback or a bundler wrapper, hence the lookup.
    return d.currentScript || d.querySelector('script[data-key][src*="s.js"]');
  }

  var tag = findScript();
  var writeKey = tag ? tag.getAttribute('data-key') : null;
  var api = tag && tag.getAttribute('data-api');
  if (!api) {
    try {
      api = new URL(tag.src, location.href).origin;
    } catch (e) {
      api = location.origin;
    }
  }
  var endpoint = api.replace(/\/+$/, '') + '/v1/batch';

  var queue = [];
  var timer = 0;
  var userId = null;

  function uuid() {
    var c = w.crypto;
    // randomUUID only exists in secure contexts; plain-http shops still need unique ids.
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = (Math.random() * 256) | 0;
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = '';
    for (var j = 0; j < 16; j++) {
      h += (b[j] + 256).toString(16).slice(1);
      if (j === 3 || j === 5 || j === 7 || j === 9) h += '-';
    }
    return h;
  }

  function pageInfo() {
    // Read at send time, not load time, so single-page shops report the current route.
    return {
      url: location.href,
      path: location.pathname,
      referrer: d.referrer,
      title: d.title,
      search: location.search,
    };
  }

  function send(body, beacon) {
    if (beacon && nav.sendBeacon) {
      try {
        // sendBeacon survives page unload; a text/plain Blob keeps it a "simple" CORS request.
        if (nav.sendBeacon(endpoint, new Blob([body], { type: 'text/plain' }))) return;
      } catch (e) {
        // fall through to fetch
      }
    }
    if (!w.fetch) return;
    w.fetch(endpoint, {
      method: 'POST',
      body: body,
      // text/plain instead of application/json avoids a CORS preflight for cross-origin relays.
      headers: { 'Content-Type': 'text/plain' },
      credentials: 'include',
      keepalive: true,
    }).catch(function () {});
  }

  function flush(beacon) {
    clearTimeout(timer);
    timer = 0;
    if (!queue.length) return;
    var batch = queue.splice(0, queue.length);
    send(
      JSON.stringify({ batch: batch, sentAt: new Date().toISOString(), writeKey: writeKey }),
      beacon
    );
  }

  function enqueue(msg) {
    msg.messageId = uuid();
    msg.timestamp = new Date().toISOString();
    if (userId) msg.userId = userId;
    msg.context = {
      page: pageInfo(),
      userAgent: nav.userAgent,
      locale: nav.language,
      library: { name: 'shoprelay.js', version: '0.1.0' },
    };
    queue.push(msg);
    if (queue.length >= MAX_BATCH) flush(false);
    else if (!timer) timer = setTimeout(flush, FLUSH_MS);
  }

  function isObj(v) {
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  }

  var methods = {
    page: function (name, properties) {
      if (isObj(name)) {
        properties = name;
        name = null;
      }
      var msg = { type: 'page', properties: Object.assign(pageInfo(), properties) };
      if (name) msg.name = String(name);
      enqueue(msg);
    },
    track: function (event, properties) {
      if (!event) return;
      enqueue({ type: 'track', event: String(event), properties: isObj(properties) ? properties : {} });
    },
    identify: function (id, traits) {
      if (isObj(id)) {
        traits = id;
        id = null;
      }
      if (id != null && id !== '') userId = String(id);
      var msg = { type: 'identify', traits: isObj(traits) ? traits : {} };
      enqueue(msg);
    },
  };

  // Every public entry point swallows its own errors: a tracker bug must never break the shop.
  function call(args) {
    try {
      var fn = args && methods[args[0]];
      if (fn) fn.apply(null, Array.prototype.slice.call(args, 1));
    } catch (e) {
      // ignored on purpose
    }
  }

  var lib = {
    // Kept so shop code written against the pre-load stub (shoprelay.push([...])) still works.
    push: function (args) {
      call(args);
    },
    flush: function () {
      try {
        flush(false);
      } catch (e) {
        // ignored on purpose
      }
    },
    VERSION: '0.1.0',
  };
  Object.keys(methods).forEach(function (m) {
    lib[m] = function () {
      call([m].concat(Array.prototype.slice.call(arguments)));
    };
  });
  w.shoprelay = lib;

  try {
    var pending = Array.isArray(prior) ? prior : [];
    // A shop that queued its own page call (to name the page) gets that instead of ours.
    var named = pending.some(function (a) {
      return a && a[0] === 'page';
    });
    if (!named) call(['page']);
    pending.forEach(call);

    var unload = function () {
      try {
        flush(true);
      } catch (e) {
        // ignored on purpose
      }
    };
    w.addEventListener('pagehide', unload);
    d.addEventListener('visibilitychange', function () {
      if (d.visibilityState === 'hidden') unload();
    });
  } catch (e) {
    // ignored on purpose
  }
})(window, document);
