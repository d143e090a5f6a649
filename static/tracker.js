/*
 * shoprelay.js: the browser half of shoprelay (docs/tracker.md).
 *
 * Loaded as <script async src="https://shop.example/s.js" data-key="WRITE_KEY"></script>.
 * Sends Segment-shaped messages to the relay's /v1/batch. It sets no cookie: the relay owns the
 * visitor's identity through its own HttpOnly cookie. The only thing it ever stores is the retry
 * queue of messages that could not be sent (localStorage), and only once consent allows sending.
 *
 * Captures, besides the API: GA4 dataLayer e-commerce events, schema.org JSON-LD Product,
 * data-sr-* attributes, and single-page-app route changes. Each source can be switched off on the
 * tag: data-auto="datalayer,jsonld,attrs,spa" lists those on (absent: all; "none": none).
 *
 * ES2020 (every current browser), no dependencies, minified by static/build.sh and kept under 3,000 bytes gzipped
 * (tests/test_tracker_build.py), which is why it is terse. The only global is `shoprelay`.
 * Every entry point (API, listeners, the dataLayer.push wrapper) swallows its own errors: a
 * tracker bug never breaks the shop.
 */
((w, d) => {
  var prior = w.shoprelay;
  // A second copy of the script on the same page must not double-send everything.
  if (prior && !Array.isArray(prior) && prior.track) return;

  var nav = w.navigator;
  var loc = location;
  // The retry queue: at most this many messages, none older than a day.
  var STORE_KEY = 'shoprelay:q';
  var STORE_AGE = 864e5;
  var PRODUCT_VIEWED = 'Product Viewed';
  var LIST_VIEWED = 'Product List Viewed';
  var PRODUCT = '[data-sr-product]';

  var each = (list, fn) => [].forEach.call(list || [], fn);
  var $$ = (sel, fn) => each(d.querySelectorAll(sel), fn);
  var isObj = (v) => v?.constructor == Object;
  var now = () => new Date().toISOString();
  var assign = Object.assign;
  // Wraps what the browser or the shop calls, so nothing we do can throw into it.
  var safe = (fn) => (a) => {
    try {
      fn(a);
    } catch (e) {
      // ignored on purpose
    }
  };

  // currentScript is null when we run from a callback or a bundler wrapper, hence the lookup.
  var tag = d.currentScript || d.querySelector('script[data-key][src]');
  var attr = (n) => tag && tag.getAttribute('data-' + n);
  var writeKey = attr('key');
  // The directory the script came from: /s.js posts to /v1/batch, /px/app.js to /px/v1/batch.
  var base = attr('api') || (tag ? new URL('.', tag.src).href : loc.origin);
  var endpoint = base.replace(/\/+$/, '') + '/v1/batch';
  var auto = attr('auto');
  var on = (source) => auto == null || auto.includes(source);

  var storage;
  try {
    storage = w.localStorage;
  } catch (e) {
    // blocked storage (privacy settings, sandboxed iframe): no retry queue
  }

  // ---- consent -------------------------------------------------------------------------------
  // With data-consent="required" nothing is sent and nothing stored until consent() grants a
  // category. Every message carries context.consent = {category: granted, ...}; Global Privacy
  // Control forces marketing off and says so (gpc: true).
  var required = attr('consent') == 'required';
  var consent = { analytics: !required, marketing: !required };
  var answered;
  var applyGpc = () => {
    if (nav.globalPrivacyControl) consent.marketing = !(consent.gpc = true);
  };
  applyGpc();
  var allowed = () => Object.keys(consent).some((k) => k != 'gpc' && consent[k]);
  // `answer`: the visitor has chosen (consent(), a Consent Mode update). A refusal then drops
  // what is held; a Consent Mode default that denies only holds it, pending the visitor.
  var setConsent = (c, answer) => {
    answered ||= answer;
    for (var k in c) consent[k] = !!c[k];
    applyGpc();
    if (allowed()) {
      flush();
      retry();
    } else if (answered) {
      queue = [];
      save([]);
    }
  };

  // ---- messages ------------------------------------------------------------------------------
  var queue = [];
  var timer = 0;
  var userId = null;
  // Track events already sent for this page view: JSON-LD and data attributes are fallbacks,
  // so they stay quiet about what the dataLayer or the shop's own calls already reported.
  var seen = {};
  var route = () => loc.pathname + loc.search;
  var lastRoute = route();

  // randomUUID only exists in secure contexts; plain-http shops still need unique ids.
  var uuid = () => crypto.randomUUID?.() || now() + Math.random();

  // Read at send time, not load time, so single-page shops report the current route.
  var pageInfo = () => ({
    url: loc.href,
    path: loc.pathname,
    referrer: d.referrer,
    title: d.title,
    search: loc.search,
  });

  var enqueue = (msg, userHash) => {
    // Held while consent is pending; dropped once the visitor has said no.
    if (answered && !allowed()) return;
    msg.messageId = uuid();
    msg.timestamp = now();
    if (userId) msg.userId = userId;
    msg.context = {
      page: pageInfo(),
      locale: nav.language,
      // the backend's signature of the user id (a site with identify_secret needs it)
      userHash: userHash,
    };
    seen[msg.event] = 1;
    // never grow without bound while consent is pending: keep the newest
    if (queue.push(msg) > 100) queue.shift();
    if (queue.length >= 10) flush();
    else timer = timer || setTimeout(safe(flush), 1e3);
  };

  var flush = (beacon) => {
    clearTimeout(timer);
    timer = 0;
    if (queue.length && allowed()) {
      var stated = assign({}, consent);
      var batch = queue.splice(0);
      batch.forEach((m) => (m.context.consent = stated));
      post(batch, beacon);
    }
  };

  // ---- transport -----------------------------------------------------------------------------
  // A batch that cannot be sent (offline, network error, 5xx, 408, 429) goes to the retry queue
  // in localStorage: at most 100 messages, none older than STORE_AGE, in time order. It is
  // sent again ten at a time after a success, when the browser is back online, on the next page,
  // and with exponential backoff (1 s doubling to 64 s). Stored messages leave the queue only
  // once the relay accepted them: a page closed while they are on the way keeps them for the
  // next one. The relay deduplicates on messageId, so a message that arrived although its
  // answer was lost does no harm when sent again.
  var tries = 0;
  var retryTimer = 0;

  var load = () => {
    try {
      return JSON.parse(storage.getItem(STORE_KEY)) || [];
    } catch (e) {
      return [];
    }
  };
  var save = (list) => {
    try {
      list = list
        .filter((m) => new Date(m.timestamp) > Date.now() - STORE_AGE)
        .slice(-100);
      if (list.length) storage.setItem(STORE_KEY, JSON.stringify(list));
      else storage.removeItem(STORE_KEY);
    } catch (e) {
      // full or blocked storage: the messages are lost, the page is not
    }
  };

  // `stored`: the batch came from the retry queue and is still in it.
  var post = (batch, beacon, stored) => {
    var fail = () => {
      stored || save(load().concat(batch));
      retryTimer = retryTimer || setTimeout(retry, 1e3 << Math.min(tries++, 6));
    };
    if (!nav.onLine) return fail();
    var body = JSON.stringify({ batch: batch, sentAt: now(), writeKey: writeKey });
    try {
      // sendBeacon survives page unload; a string body goes as text/plain, a "simple" CORS
      // request with no preflight (a preflight is what loses events on unload).
      if (beacon && nav.sendBeacon(endpoint, body)) return;
    } catch (e) {
      // fall through to fetch
    }
    fetch(endpoint, {
      method: 'POST',
      // a string body goes as text/plain: no CORS preflight for a relay on another origin
      body: body,
      credentials: 'include',
      keepalive: true,
    })
      .then((r) => {
        if (/^(5|429|408)/.test(r.status)) throw r;
        tries = 0;
        // (the body holds each sent message's id: what it names has arrived)
        if (stored) save(load().filter((m) => !body.includes(m.messageId)));
        retry();
      })
      .catch(fail);
  };

  var retry = () => {
    clearTimeout(retryTimer);
    retryTimer = 0;
    var list = load();
    // Offline, post keeps them stored and tries again later (they stay in order: a stored
    // batch is never added again, only removed once accepted).
    if (allowed() && list.length) post(list.slice(0, 10), 0, 1);
  };

  // ---- the API -------------------------------------------------------------------------------
  var track = (event, properties) => {
    if (event) {
      enqueue({ type: 'track', event: '' + event, properties: isObj(properties) ? properties : {} });
    }
  };
  // page([category], [name], [properties]), as analytics.js
  var page = (...args) => {
    var [name, category] = args.filter((a) => typeof a == 'string').reverse();
    seen = {};
    enqueue({ type: 'page', name: name, category: category, properties: assign(pageInfo(), args.find(isObj)) });
  };
  // identify([userId], [traits], [{userHash}])
  var identify = (id, traits, options) => {
    if (isObj(id)) {
      options = traits;
      traits = id;
      id = null;
    }
    if (id) userId = '' + id;
    enqueue({ type: 'identify', traits: isObj(traits) ? traits : {} }, options && options.userHash);
  };
  var methods = {
    page: page,
    track: track,
    identify: identify,
    // Logout: the relay ends the user binding on "Signed Out" (the cookie is HttpOnly, so only
    // it can); later messages carry no userId until the next identify.
    reset: () => {
      track('Signed Out');
      userId = null;
    },
    // consent({analytics: true, marketing: false}): categories not named keep their state
    consent: (c) => setConsent(c, 1),
    flush: flush,
  };

  // ---- Google Consent Mode v2 (docs/tracker.md) ------------------------------------------
  // gtag('consent', 'default' | 'update', {analytics_storage, ad_storage, ...}) as pushed onto
  // the dataLayer. An update sets a key; a default can only deny what an earlier default granted
  // (so the order of region-scoped and general defaults does not matter), and a region-scoped
  // default can deny but not grant: we cannot know the visitor's region.
  var gcm = {};
  var consentMode = (e) => {
    var p = e[2];
    var update = e[1] == 'update';
    var c = {};
    if (e[0] == 'consent' && isObj(p)) {
      for (var k in p) {
        var granted = p[k] == 'granted';
        if (update || !(granted && p.region)) gcm[k] = (update || gcm[k] != 0) && granted;
      }
      // marketing needs every ad_* key stated (ad_storage, ad_user_data, ad_personalization) granted
      for (k in gcm) {
        if (k == 'analytics_storage') c.analytics = gcm[k];
        if (/^ad_/.test(k)) c.marketing = c.marketing != 0 && gcm[k];
      }
      setConsent(c, update);
    }
  };
  // ---- GA4 dataLayer -------------------------------------------------------------------------
  var GA4 = {
    __proto__: null,
    view_item: PRODUCT_VIEWED,
    view_item_list: LIST_VIEWED,
    select_item: 'Product Clicked',
    add_to_cart: 'Product Added',
    remove_from_cart: 'Product Removed',
    add_to_wishlist: 'Product Added to Wishlist',
    view_cart: 'Cart Viewed',
    begin_checkout: 'Checkout Started',
    purchase: 'Order Completed',
    search: 'Products Searched',
    login: 'Signed In',
  };

  // A GA4 item as a Segment product: item_id → product_id, index → position, item_name →
  // name (and item_brand, item_variant, item_list_id likewise lose "item_"), price, quantity,
  // coupon, ... as they are, and item_category..item_category5 become one "A > B" path.
  var gaItem = (i, currency, listId) => {
    var p = { currency: currency, list_id: listId };
    var cats = [];
    for (var k in i) {
      if (/^item_cat/.test(k)) cats.push(i[k]);
      else p[k == 'item_id' ? 'product_id' : k == 'index' ? 'position' : k.replace(/^item_/, '')] = i[k];
    }
    if (cats[0]) p.category = cats.join(' > ');
    return p;
  };

  var gaEvent = (e) => {
    // Consent Mode is read whatever data-auto says: it is the visitor's answer, not capture.
    // (It also throws on a null entry, which is then skipped.)
    consentMode(e);
    var gtag = e[0] == 'event';
    var name = gtag ? e[1] : e.event;
    var event = on('datalayer') && GA4[name];
    if (!event) return;
    // gtag('event', name, params) pushes its arguments; GTM pushes {event, ecommerce: {...}}.
    var p = (gtag ? e[2] : e.ecommerce || e) || {};
    var props = {};
    // What GA4 and Segment name alike (currency, value, tax, shipping, coupon, method, ...) and
    // the shop's own extra fields (cart_id, category_id, ...) pass through as they are.
    for (var k in p) {
      if (!/^(item|transaction_id|search_term|event)|\./.test(k)) {
        props[k] = p[k];
      }
    }
    // A list with a category_id is a category page, not a recommendation block (list_id).
    var listId = props.category_id == null ? p.item_list_id : undefined;
    var items = (p.items || []).map((i) => gaItem(i, p.currency, listId));
    var user = p.user_id || e.user_id;
    if (name == 'login' && user) return identify(user, props);
    // (undefined where the event has no such field, and then not sent)
    props.query = p.search_term;
    props.order_id = p.transaction_id;
    props.list_id = listId;
    if (name == 'purchase') props.revenue = p.value;
    if (name == 'view_item_list') props.category ||= p.item_list_name;
    // one Segment event per product, as the e-commerce spec has them; a view is of one product
    if (/_item$|_to_|_from_/.test(name)) {
      return (name[0] > 'r' ? items.slice(0, 1) : items).forEach((i) => track(event, assign({}, props, i)));
    }
    if (items.length) props.products = items;
    track(event, props);
  };

  var hooked;
  var hookDataLayer = () => {
    var dl = w.dataLayer;
    if (Array.isArray(dl) && dl != hooked) {
      hooked = dl;
      var push = dl.push;
      // GTM and gtag wrap push the same way, on top of ours, so both keep working.
      dl.push = function () {
        var r = push.apply(this, arguments);
        each(arguments, safe(gaEvent));
        return r;
      };
      // What was pushed before we loaded, exactly once.
      each(dl, safe(gaEvent));
    }
  };

  // ---- schema.org JSON-LD ------------------------------------------------------------------
  var jsonLd = () =>
    // (a script that is not JSON throws, and is skipped)
    $$('script[type="application/ld+json"]', safe((s) => {
      [JSON.parse(s.textContent)]
        .flat()
        .flatMap((top) => top?.['@graph'] || top)
        .forEach((o) => {
          if (seen[PRODUCT_VIEWED] || !/Product(Group)?\b/.test(o?.['@type'])) return;
          var offer = [o.offers].flat()[0] || {};
          var price = offer.price ?? offer.lowPrice;
          var props = {
            product_id: '' + (o.productID || o.sku || o.productGroupID),
            sku: o.sku,
            name: o.name,
            price: price && +price,
            currency: offer.priceCurrency,
            category: o.category,
            brand: o.brand?.name || o.brand,
          };
          if (offer.availability) props.in_stock = /InStock$/.test(offer.availability);
          if (o.hasVariant) {
            props.group_id = o.productGroupID || props.product_id;
            props.variant_ids = [o.hasVariant].flat().map((v) => v.productID || v.sku);
          }
          track(PRODUCT_VIEWED, props);
        });
    }));

  // ---- data-sr-* attributes ------------------------------------------------------------------
  // data-sr-product="ID" (+ data-sr-name, -price, -currency, -category, -sku, -quantity, ...)
  // is a product; outside any data-sr-event element it is the page's Product Viewed.
  // data-sr-event="Event" (+ data-sr-* properties) sends Event on load with the products inside
  // it; data-sr-click="Event" sends Event on a click with the properties of the product and the
  // data-sr-event element around it.
  var srProps = (el) => {
    var p = {};
    each(el?.attributes, (a) => {
      var k = a.name.slice(8).replace(/-/g, '_');
      if (!a.name.indexOf('data-sr-') && !/^(click|event)$/.test(k)) {
        // data-sr-product, -list, -order, -cart are the ids: product_id, list_id, ...
        if (/^(product|list|order|cart)$/.test(k)) k += '_id';
        p[k] = /^(price|quantity|revenue|total|results|value|rating)$/.test(k) ? +a.value : a.value;
      }
    });
    return p;
  };
  var attributes = () => {
    // what the page reported itself (API, dataLayer) before we looked
    var had = assign({}, seen);
    $$('[data-sr-event]', (el) => {
      var event = el.getAttribute('data-sr-event');
      var props = srProps(el);
      var products = [].map.call(el.querySelectorAll(PRODUCT), srProps);
      if (products.length) props.products = products;
      had[event] || track(event, props);
    });
    $$(PRODUCT, (el) => el.closest('[data-sr-event]') || seen[PRODUCT_VIEWED] || track(PRODUCT_VIEWED, srProps(el)));
  };
  var onClick = (e) => {
    var el = e.target.closest('[data-sr-click]');
    if (el) {
      // the block's own attributes come along: data-sr-list (list_id) and
      // data-sr-recommendation-vendor (who served the block: its id goes to that vendor only)
      track(
        el.getAttribute('data-sr-click'),
        assign(srProps(el.closest('[data-sr-event]')), srProps(el.closest(PRODUCT)), srProps(el))
      );
    }
  };

  // ---- start ---------------------------------------------------------------------------------
  // an unknown name throws here, and is ignored like any other mistake
  var call = safe((args) => methods[args[0]](...[].slice.call(args, 1)));

  // push is kept so shop code written against the pre-load stub (shoprelay.push([...])) works.
  var lib = { push: call };
  Object.keys(methods).forEach((m) => (lib[m] = (...args) => call([m, ...args])));
  w.shoprelay = lib;

  var listen = (target, type, fn, capture) => target.addEventListener(type, safe(fn), capture);

  safe(() => {
    var pending = Array.isArray(prior) ? prior : [];
    // A shop that queued its own page call (to name the page) gets that instead of ours.
    if (!pending.some((a) => a?.[0] == 'page')) page();
    pending.forEach(call);
    // now, not at DOM-ready: a Consent Mode default set before the tag applies from the start
    hookDataLayer();

    var scan = () => {
      // at the DOM's end, so a dataLayer made further down the page is found (what was
      // pushed before is replayed when it is hooked)
      hookDataLayer();
      if (on('jsonld')) jsonLd();
      if (on('attrs')) attributes();
    };
    if (d.readyState == 'loading') listen(d, 'DOMContentLoaded', scan);
    else safe(scan)();
    if (on('attrs')) listen(d, 'click', onClick, true);

    if (on('spa')) {
      var routeChanged = () => {
        if (route() != lastRoute) {
          lastRoute = route();
          page();
        }
      };
      ['pushState', 'replaceState'].forEach((m) => {
        var orig = history[m];
        history[m] = function () {
          var r = orig.apply(this, arguments);
          // after the router has had its turn with the title and the DOM
          setTimeout(safe(routeChanged));
          return r;
        };
      });
      listen(w, 'popstate', routeChanged);
    }

    var unload = () => flush(true);
    listen(w, 'pagehide', unload);
    listen(d, 'visibilitychange', () => d.visibilityState == 'hidden' && unload());
    listen(w, 'online', retry);
    retry();
  })();
})(window, document);
