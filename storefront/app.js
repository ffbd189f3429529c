// The storefront: a client of the public API (../shared/API.md), nothing more. Views are
// hash routes; the session (tokens and the signed-in user) lives in localStorage.
"use strict";

const API = (() => {
  const asked = new URLSearchParams(location.search).get("api");
  if (asked) localStorage.setItem("shop.api", asked.replace(/\/+$/, ""));
  return localStorage.getItem("shop.api") || location.origin;
})();

const session = {
  get: () => JSON.parse(localStorage.getItem("shop.session") || "null"),
  set: (tokens) => localStorage.setItem("shop.session", JSON.stringify(tokens)),
  clear: () => localStorage.removeItem("shop.session"),
};

// ---- the API ----------------------------------------------------------------------------

class Problem extends Error {
  constructor(status, body) {
    const fields = Object.entries(body.errors || {}).map(([field, why]) => `${field}: ${why.join(", ")}`);
    super([body.detail || body.title || `HTTP ${status}`, ...fields].join(" · "));
    this.status = status;
    this.code = body.code;
  }
}

async function call(method, path, { body, key, retried } = {}) {
  const headers = { Accept: "application/json" };
  const tokens = session.get();
  if (tokens) headers.Authorization = `Bearer ${tokens.access_token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Idempotency-Key"] = key;
  const response = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && tokens && !retried && (await refresh(tokens))) {
    return call(method, path, { body, key, retried: true });
  }
  if (response.status === 204) return null;
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Problem(response.status, answer);
  return answer;
}

// An expired access token is renewed once with the refresh token; a refused refresh ends
// the session.
async function refresh(tokens) {
  const response = await fetch(`${API}/api/auth/refresh`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: tokens.refresh_token }),
  });
  if (!response.ok) {
    session.clear();
    chrome();
    return false;
  }
  session.set(await response.json());
  chrome();
  return true;
}

const money = (amount, currency = "USD") => `${amount} ${currency}`;
const newKey = () => crypto.randomUUID();

// ---- rendering --------------------------------------------------------------------------

// el("button", {onclick, class: "quiet"}, "Add"): an element, its text escaped.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== false && value != null) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c != null));
  return node;
}

const view = () => document.getElementById("view");
function show(...nodes) {
  view().replaceChildren(...nodes);
}

function notice(text, ok = false) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

// A form whose fields are named inputs; `submit` gets their values and may throw a Problem.
function form(fields, label, submit, id) {
  const inputs = fields.map(([name, text, attrs = {}]) =>
    el("label", {}, text, attrs.options
      ? el("select", { name }, attrs.options.map(([value, shown]) => el("option", { value }, shown)))
      : el("input", { name, ...attrs })));
  const node = el("form", { class: "stack", id }, inputs, el("button", { type: "submit" }, label));
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    // Blank optional fields are left out rather than sent empty.
    const values = Object.fromEntries([...new FormData(node)].filter(([, value]) => value !== ""));
    try {
      notice("");
      await submit(values);
    } catch (err) {
      notice(err.message);
    }
  });
  return node;
}

function chrome() {
  const tokens = session.get();
  document.body.classList.toggle("signed-in", !!tokens);
  document.body.classList.toggle("admin", tokens?.user.role === "admin");
  document.getElementById("api-base").textContent = API;
  live.connect();
}

// ---- views ------------------------------------------------------------------------------

const views = {
  "": async (params) => {
    const query = new URLSearchParams({ limit: "12" });
    if (params.get("q")) query.set("q", params.get("q"));
    if (params.get("cursor")) query.set("cursor", params.get("cursor"));
    const page = await call("GET", `/api/products?${query}`);
    const cards = page.items.map((p) =>
      el("article", { class: "card", "data-product": p.id },
        el("h3", {}, p.name),
        el("p", { class: "muted" }, p.description || ""),
        el("span", { class: "price" }, money(p.price, p.currency)),
        el("span", { class: "muted" }, p.stock > 0 ? `${p.stock} in stock` : "out of stock"),
        el("button", { disabled: p.stock <= 0, onclick: () => addToCart(p) }, "Add to cart")));
    const more = page.next_cursor
      ? el("a", { href: `#/?${new URLSearchParams({ q: params.get("q") || "", cursor: page.next_cursor })}` }, "More")
      : null;
    show(el("h2", {}, params.get("q") ? `Results for “${params.get("q")}”` : "Catalogue"),
      cards.length ? el("div", { class: "grid" }, cards) : el("p", { class: "muted" }, "Nothing found."), more);
  },

  async cart() {
    if (!session.get()) return go("login");
    const cart = await call("GET", "/api/cart");
    if (!cart.items.length) return show(el("h2", {}, "Cart"), el("p", { class: "muted" }, "Your cart is empty."));
    const rows = cart.items.map((line) =>
      el("tr", {}, el("td", {}, line.name), el("td", {}, money(line.unit_price, cart.currency)),
        el("td", {}, String(line.quantity)), el("td", {}, money(line.line_total, cart.currency)),
        el("td", {}, el("button", { class: "quiet", onclick: async () => {
          await call("DELETE", `/api/cart/items/${line.product_id}`);
          views.cart();
        } }, "Remove"))));
    const checkout = form([
      ["name", "Name", { required: true }],
      ["line1", "Address", { required: true }],
      ["city", "City", { required: true }],
      ["postal_code", "Postal code", { required: true }],
      ["country", "Country (two letters)", { required: true, value: "US", maxlength: 2 }],
    ], "Place order", async (address) => {
      const order = await call("POST", "/api/orders", { body: { shipping_address: address }, key: newKey() });
      go(`order/${order.id}`);
    }, "checkout");
    show(el("h2", {}, "Cart"),
      el("table", {}, el("tr", {}, ["Product", "Price", "Quantity", "Total", ""].map((t) => el("th", {}, t))), rows),
      el("p", { class: "price", id: "cart-total" }, `Total ${money(cart.total, cart.currency)}`),
      el("h3", {}, "Ship to"), checkout);
  },

  async order(params, id) {
    const order = await call("GET", `/api/orders/${id}`);
    const lines = order.items.map((line) => el("li", {}, `${line.quantity} × ${line.name}: ${money(line.line_total, order.currency)}`));
    const pay = order.status === "pending_payment"
      ? form([["token", "Card", { options: [["tok_visa", "Visa (succeeds)"], ["tok_chargeDeclined", "Declined card"],
        ["tok_insufficientFunds", "Insufficient funds"]] }]], `Pay ${money(order.total, order.currency)}`, async ({ token }) => {
        const payment = await call("POST", "/api/payments", {
          body: { order_id: order.id, amount: order.total, currency: order.currency, method: { type: "card", token } },
          key: newKey(),
        });
        notice(payment.status === "succeeded" ? "Payment accepted." : `Payment failed: ${payment.failure_code}.`,
          payment.status === "succeeded");
      }, "pay")
      : null;
    show(el("h2", {}, "Order"),
      el("p", {}, "Status ", el("span", { class: `status ${order.status}`, id: "order-status", "data-order": order.id }, order.status)),
      el("ul", {}, lines), el("p", { class: "price" }, `Total ${money(order.total, order.currency)}`), pay);
  },

  async orders() {
    if (!session.get()) return go("login");
    const page = await call("GET", "/api/orders?limit=50");
    show(el("h2", {}, "Your orders"), orderTable(page.items, false));
  },

  async login() {
    show(el("h2", {}, "Log in"), form([
      ["email", "Email", { type: "email", required: true, autocomplete: "username" }],
      ["password", "Password", { type: "password", required: true, autocomplete: "current-password" }],
    ], "Log in", async (values) => {
      session.set(await call("POST", "/api/auth/login", { body: values }));
      chrome();
      go("");
    }, "login"));
  },

  async signup() {
    show(el("h2", {}, "Sign up"), form([
      ["username", "Username (3–50 letters, digits, _ . -)", { required: true, minlength: 3, maxlength: 50 }],
      ["email", "Email", { type: "email", required: true }],
      ["password", "Password (8–128 characters)", { type: "password", required: true, minlength: 8, maxlength: 128 }],
    ], "Create account", async (values) => {
      await call("POST", "/api/auth/register", { body: values });
      session.set(await call("POST", "/api/auth/login", { body: { email: values.email, password: values.password } }));
      chrome();
      go("");
    }, "signup"));
  },

  async logout() {
    const tokens = session.get();
    if (tokens) await call("POST", "/api/auth/logout", { body: { refresh_token: tokens.refresh_token } }).catch(() => {});
    session.clear();
    chrome();
    go("");
  },

  async admin() {
    if (session.get()?.user.role !== "admin") return go("login");
    const [categories, orders] = await Promise.all([call("GET", "/api/categories"), call("GET", "/api/orders?limit=50")]);
    const addCategory = form([["name", "New category", { required: true }]], "Add category", async (values) => {
      await call("POST", "/api/categories", { body: values });
      views.admin();
    }, "add-category");
    const addProduct = form([
      ["name", "Name", { required: true, maxlength: 200 }],
      ["description", "Description"],
      ["price", "Price (USD)", { required: true, pattern: "\\d+(\\.\\d{1,2})?", placeholder: "19.99" }],
      ["stock", "Stock", { type: "number", min: 0, required: true, value: 10 }],
      ["category_id", "Category", { options: categories.items.map((c) => [c.id, c.name]) }],
    ], "Add product", async (values) => {
      const product = await call("POST", "/api/products", { body: { ...values, stock: Number(values.stock) } });
      notice(`Added ${product.name}.`, true);
      views.admin();
    }, "add-product");
    show(el("h2", {}, "Admin"),
      el("div", { class: "row" }, el("section", {}, el("h3", {}, "Catalogue"), addProduct), el("section", {}, el("h3", {}, "Categories"), addCategory)),
      el("h3", {}, "Orders"), orderTable(orders.items, true));
  },
};

function orderTable(orders, admin) {
  if (!orders.length) return el("p", { class: "muted" }, "No orders yet.");
  const act = (order, action, label) => el("button", { class: "quiet", onclick: async () => {
    try {
      await call("POST", `/api/orders/${order.id}/${action}`);
      route();
    } catch (err) {
      notice(err.message);
    }
  } }, label);
  return el("table", {},
    el("tr", {}, ["Placed", "Total", "Status", ""].map((t) => el("th", {}, t))),
    orders.map((order) => el("tr", {},
      el("td", {}, el("a", { href: `#/order/${order.id}` }, new Date(order.created_at).toLocaleString())),
      el("td", {}, money(order.total, order.currency)),
      el("td", {}, el("span", { class: `status ${order.status}`, "data-order": order.id }, order.status)),
      el("td", {},
        order.status === "pending_payment" ? act(order, "cancel", "Cancel") : null,
        admin && order.status === "paid" ? act(order, "ship", "Ship") : null,
        admin && order.status === "shipped" ? act(order, "deliver", "Deliver") : null))));
}

async function addToCart(product) {
  if (!session.get()) return go("login");
  try {
    const cart = await call("GET", "/api/cart");
    const line = cart.items.find((l) => l.product_id === product.id);
    await call("PUT", `/api/cart/items/${product.id}`, { body: { quantity: (line?.quantity || 0) + 1 } });
    notice(`${product.name} is in your cart.`, true);
  } catch (err) {
    notice(err.message);
  }
}

// ---- live order status (GET /api/orders/ws) -----------------------------------------------

const live = {
  socket: null,
  // Follows the session: a new sign-in (or a refreshed token) gets a new socket.
  connect() {
    const token = session.get()?.access_token;
    if (this.socket?.token === token) return;
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
    const state = document.getElementById("live-state");
    state.textContent = "live updates off";
    if (!token) return;
    const url = `${API.replace(/^http/, "ws")}/api/orders/ws?access_token=${encodeURIComponent(token)}`;
    const socket = (this.socket = new WebSocket(url));
    socket.token = token;
    socket.onopen = () => { state.textContent = "live updates on"; };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type !== "order.status_changed") return;
      for (const badge of document.querySelectorAll(`[data-order="${event.order_id}"]`)) {
        badge.textContent = event.status;
        badge.className = `status ${event.status}`;
      }
      if (event.status !== "pending_payment") document.getElementById("pay")?.remove();
    };
    // Closed (a restart, an expired token): reconnect after a pause, with the current token.
    socket.onclose = () => {
      state.textContent = "live updates off";
      this.socket = null;
      setTimeout(() => this.connect(), 3000);
    };
  },
};

// ---- routing ----------------------------------------------------------------------------

function go(path) {
  location.hash = `#/${path}`;
}

async function route() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...args] = path.split("/");
  const render = views[name] || views[""];
  try {
    await render(new URLSearchParams(query), ...args);
  } catch (err) {
    notice(err.message);
  }
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  go(`?${new URLSearchParams({ q: document.getElementById("q").value })}`);
});
window.addEventListener("hashchange", () => {
  notice("");
  route();
});
chrome();
route();
