// shoprelay for Shopify: paste into Settings > Customer events > Add custom pixel.
// Sends Shopify's standard events to your relay as the canonical events of shoprelay's
// contract (docs/platforms.md, "Shopify custom pixel"). Copied from your relay with its
// address and your site's write key filled in; edit nothing below unless you mean to.
const RELAY = "__SHOPRELAY_ENDPOINT__";
const WRITE_KEY = "__SHOPRELAY_WRITE_KEY__";
const VISITOR = "_shoprelay_aid";       // first-party cookie on the shop's domain (2 years)
const QUEUE = "_shoprelay_queue";       // events a failed send keeps for the next page
const KEPT = 100;                       // at most this many are kept (the newest)
const TWO_YEARS = 63072000;
const LIBRARY = { name: "shoprelay-shopify-pixel", version: "1" };

// Shopify names things "gid://shopify/Product/123"; vendors and the order webhook use "123".
function plainId(value) {
  if (value === null || value === undefined || value === "") return undefined;
  const text = String(value);
  const tail = text.startsWith("gid://") ? text.slice(text.lastIndexOf("/") + 1) : text;
  return tail.split("?")[0] || undefined;
}
function amount(money) {
  return money && money.amount !== undefined ? Number(money.amount) : undefined;
}
function currencyOf(money) {
  return (money && money.currencyCode) || undefined;
}

function variantFields(variant) {
  const v = variant || {};
  const product = v.product || {};
  return {
    product_id: plainId(product.id) || plainId(v.id),
    variant: plainId(v.id),
    sku: v.sku || plainId(v.id),
    name: product.title || v.title,
    category: product.type || undefined,
    brand: product.vendor || undefined,
    price: amount(v.price),
    currency: currencyOf(v.price),
    url: product.url || undefined,
  };
}
function lineFields(line) {
  // A cart line has `merchandise`; a checkout line item has `variant`.
  const fields = variantFields(line.merchandise || line.variant);
  fields.quantity = line.quantity;
  return fields;
}

const cartId = () => plainId(init.data && init.data.cart && init.data.cart.id);
const customerId = () => plainId(init.data && init.data.customer && init.data.customer.id);
let consent = consentOf(init.customerPrivacy);
function consentOf(privacy) {
  if (!privacy) return undefined;
  return {
    analytics: privacy.analyticsProcessingAllowed !== false,
    marketing: privacy.marketingAllowed !== false,
    preferences: privacy.preferencesProcessingAllowed !== false,
    sale_of_data: privacy.saleOfDataAllowed !== false,
  };
}

function pageName(path) {
  // Markets put a locale in front: "/de", "/de-ch/cart", "/fr/products/…".
  const bare = path.replace(/^\/[a-z]{2}(-[a-z]{2})?(?=\/|$)/i, "");
  if (bare === "/" || bare === "") return "Home";
  if (bare === "/cart") return "Cart";
  if (bare.startsWith("/checkout")) return "Checkout";
  if (bare.includes("/products/")) return "Product";
  if (bare.includes("/collections/")) return "Category";
  if (bare.startsWith("/search")) return "Search";
  return undefined;
}

// Shopify event -> [type, canonical event (track), properties]; undefined: not sent.
const MAPPING = {
  page_viewed: () => ["page", undefined, {}],
  collection_viewed: (data) => {
    const c = data.collection || {};
    return ["track", "Product List Viewed", {
      category_id: plainId(c.id), category: c.title,
      products: (c.productVariants || []).map(variantFields),
    }];
  },
  product_viewed: (data) => ["track", "Product Viewed", variantFields(data.productVariant)],
  search_submitted: (data) => {
    const r = data.searchResult || {};
    return ["track", "Products Searched", {
      query: r.query, results: (r.productVariants || []).length,
    }];
  },
  product_added_to_cart: (data) => cartChange("Product Added", data.cartLine),
  product_removed_from_cart: (data) => cartChange("Product Removed", data.cartLine),
  cart_viewed: (data) => {
    const cart = data.cart || {};
    return ["track", "Cart Viewed", {
      cart_id: plainId(cart.id) || cartId(),
      products: (cart.lines || []).map(lineFields),
      value: amount(cart.cost && cart.cost.totalAmount),
      currency: currencyOf(cart.cost && cart.cost.totalAmount),
    }];
  },
  checkout_started: (data) => ["track", "Checkout Started", checkoutFields(data.checkout)],
  checkout_completed: (data) => {
    const checkout = data.checkout || {};
    const fields = checkoutFields(checkout);
    fields.order_id = plainId(checkout.order && checkout.order.id);
    return ["track", "Order Completed", fields];
  },
};
function cartChange(event, line) {
  if (!line) return undefined;
  const fields = lineFields(line);
  fields.cart_id = cartId();
  return ["track", event, fields];
}
function checkoutFields(checkout) {
  const c = checkout || {};
  const total = amount(c.totalPrice);
  const discounts = c.discountApplications || [];
  return {
    checkout_id: c.token || undefined,
    cart_id: cartId(),
    total: total,
    revenue: amount(c.subtotalPrice) !== undefined ? amount(c.subtotalPrice) : total,
    shipping: amount(c.shippingLine && c.shippingLine.price),
    tax: amount(c.totalTax),
    currency: c.currencyCode || currencyOf(c.totalPrice),
    coupon: discounts.length && discounts[0].title ? discounts[0].title : undefined,
    products: (c.lineItems || []).map(lineFields),
  };
}

// The visitor id: the cookie first, else localStorage (a shopper who blocks one keeps the
// other), else a new one; written back to both. Both calls run in Shopify's top frame.
async function visitorId() {
  let id = "";
  try { id = await browser.cookie.get(VISITOR); } catch (e) { id = ""; }
  if (!id) {
    try { id = (await browser.localStorage.getItem(VISITOR)) || ""; } catch (e) { id = ""; }
  }
  if (!id) id = newId();
  try {
    await browser.cookie.set(`${VISITOR}=${id}; path=/; max-age=${TWO_YEARS}; SameSite=Lax`);
  } catch (e) { /* the other store still holds it */ }
  try { await browser.localStorage.setItem(VISITOR, id); } catch (e) { /* as above */ }
  return id;
}
function newId() {
  if (self.crypto && crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
const visitor = visitorId();

function message(event, type, name, properties, anonymousId, consentThen) {
  const doc = (event.context && event.context.document) || {};
  const location = doc.location || {};
  const page = {
    url: location.href, path: location.pathname, search: location.search,
    referrer: doc.referrer, title: doc.title,
  };
  const nav = (event.context && event.context.navigator) || {};
  const out = {
    type: type, messageId: event.id, timestamp: event.timestamp, anonymousId: anonymousId,
    properties: clean(properties),
    context: clean({
      page: clean(page), userAgent: nav.userAgent, locale: nav.language, consent: consentThen,
      library: LIBRARY,
      shopify: { clientId: event.clientId, event: event.name },
    }),
  };
  if (type === "page") {
    out.name = pageName(location.pathname || "");
    out.properties = clean(Object.assign({}, page, out.properties));
  } else {
    out.event = name;
  }
  const userId = customerId();
  if (userId) out.userId = userId;
  return clean(out);
}
function clean(object) {
  const out = {};
  for (const key of Object.keys(object)) if (object[key] !== undefined) out[key] = object[key];
  return out;
}

// ---- sending: batches of what arrives together, kept in localStorage when a send fails ----
let pending = [];
let timer = null;
function enqueue(msg, now) {
  pending.push(msg);
  if (now) { flush(); return; }
  if (!timer) timer = setTimeout(flush, 200);
}
async function flush() {
  clearTimeout(timer);
  timer = null;
  const batch = pending;
  pending = [];
  if (batch.length) await send(batch);
}
async function send(batch) {
  // keepalive bodies are limited to 64 KB: send in slices well under it.
  for (let i = 0; i < batch.length; i += 20) {
    const slice = batch.slice(i, i + 20);
    if (!(await post(slice))) { await keep(batch.slice(i)); return false; }
  }
  return true;
}
async function post(batch) {
  try {
    // text/plain without credentials: a simple request, no preflight; the relay knows the
    // visitor by anonymousId (its cookie cannot reach a sandboxed frame).
    const response = await fetch(`${RELAY}/v1/batch`, {
      method: "POST", keepalive: true, credentials: "omit",
      headers: { "Content-Type": "text/plain" },
      body: JSON.stringify({ batch: batch, sentAt: new Date().toISOString(),
                             writeKey: WRITE_KEY }),
    });
    // 4xx other than 429: the relay refused the events themselves; sending again won't help.
    return response.ok || (response.status >= 400 && response.status < 500
                           && response.status !== 429);
  } catch (e) {
    return false;  // offline, blocked, relay down
  }
}
async function keep(batch) {
  try {
    const kept = JSON.parse((await browser.localStorage.getItem(QUEUE)) || "[]");
    const all = kept.concat(batch);
    await browser.localStorage.setItem(QUEUE, JSON.stringify(all.slice(-KEPT)));
  } catch (e) { /* storage refused: these events are lost */ }
}
async function retryKept() {
  let kept = [];
  try { kept = JSON.parse((await browser.localStorage.getItem(QUEUE)) || "[]"); } catch (e) {
    kept = [];
  }
  if (!kept.length) return;
  // Taken out first, so a second tab does not send the same events (the relay would drop
  // the copies by messageId anyway); a failed send puts them back.
  await browser.localStorage.setItem(QUEUE, "[]");
  await send(kept);
}

for (const name of Object.keys(MAPPING)) {
  analytics.subscribe(name, (event) => {
    const mapped = MAPPING[name](event.data || {});
    if (!mapped) return;
    const consentThen = consent;  // as it was when the event happened, not when it is sent
    visitor.then((id) => enqueue(message(event, mapped[0], mapped[1], mapped[2], id, consentThen),
                                 name === "checkout_completed"));
  });
}
// A shopper who answers the consent banner without a page load.
if (typeof customerPrivacy !== "undefined" && customerPrivacy.subscribe) {
  customerPrivacy.subscribe("visitorConsentCollected", (event) => {
    consent = consentOf(event.customerPrivacy) || consent;
  });
}
visitor.then((id) => { retryKept(); identifyOnce(id); });

// A logged-in customer: one identify per visitor and customer (the relay treats the id as
// an unsigned browser claim, as from any browser), and `userId` on every event.
async function identifyOnce(anonymousId) {
  const userId = customerId();
  if (!userId) return;
  const marker = `${anonymousId}:${userId}`;
  try { if ((await browser.localStorage.getItem("_shoprelay_uid")) === marker) return; } catch (e) {
    return;
  }
  const c = init.data.customer;
  const name = [c.firstName, c.lastName].filter(Boolean).join(" ");
  enqueue(clean({
    type: "identify", messageId: `shopify-identify-${marker}`, anonymousId: anonymousId,
    userId: userId, timestamp: new Date().toISOString(),
    traits: clean({ email: c.email || undefined, phone: c.phone || undefined,
                    name: name || undefined }),
    context: clean({ consent: consent, library: LIBRARY }),
  }));
  try { await browser.localStorage.setItem("_shoprelay_uid", marker); } catch (e) { /* again */ }
}
