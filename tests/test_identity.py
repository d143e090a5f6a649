from __future__ import annotations

import itertools

from itsdangerous import Signer

from shoprelay.identity.cookie import VisitorCookie, new_visitor_id
from shoprelay.identity.state import VisitorState, apply


def test_visitor_id_shape() -> None:
    ids = {new_visitor_id() for _ in range(100)}
    assert len(ids) == 100
    for visitor in ids:
        assert len(visitor) == 32 and visitor == visitor.lower() and visitor.isalnum()


def test_cookie_round_trip_and_attributes() -> None:
    cookie = VisitorCookie("a-long-enough-secret", "sc")
    visitor = new_visitor_id()
    header = cookie.header(visitor, "shop", secure=True)
    name, value = header.split(";")[0].split("=", 1)
    assert name == "sc"
    assert cookie.read(value, "shop") == visitor
    attrs = {a.strip() for a in header.split(";")[1:]}
    assert {"HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age=63072000"} <= attrs
    assert "Secure" not in cookie.header(visitor, "shop", secure=False)


def test_tampered_or_foreign_cookie_is_not_believed() -> None:
    ours = VisitorCookie("a-long-enough-secret")
    theirs = VisitorCookie("another-long-secret")
    visitor = new_visitor_id()
    value = ours.value_for(visitor, "shop")
    # One character of the signature changed: its first (the last carries base64 padding
    # bits, so "A" → "B" there can decode to the same signature and pass, 1 run in 4).
    head, signature = value.rsplit(".", 1)
    tampered = ("B" if signature[0] != "B" else "C") + signature[1:]
    assert ours.read(f"{head}.{tampered}", "shop") is None
    assert ours.read(theirs.value_for(visitor, "shop"), "shop") is None
    assert ours.read("garbage", "shop") is None
    assert ours.read("", "shop") is None
    assert ours.read(ours.value_for("not-hex", "shop"), "shop") is None


def test_a_cookie_is_bound_to_its_site() -> None:
    cookie = VisitorCookie("a-long-enough-secret")
    visitor = new_visitor_id()
    assert cookie.read(cookie.value_for(visitor, "shop-b"), "shop-a") is None
    assert cookie.read(cookie.value_for(visitor, "shop-a"), "shop-a") == visitor
    # Signed before signatures named the site: read only where it cannot cross sites.
    legacy = Signer("a-long-enough-secret", salt="shoprelay.visitor-cookie").sign(visitor)
    assert cookie.read(legacy.decode(), "shop-a") is None
    single = VisitorCookie("a-long-enough-secret", accept_unbound=True)
    assert single.read(legacy.decode(), "shop-a") == visitor


def test_anonymous_id_maps_to_a_stable_visitor() -> None:
    cookie = VisitorCookie("a-long-enough-secret")
    first = cookie.visitor_for_anonymous_id("shop", "anon-1")
    assert first == cookie.visitor_for_anonymous_id("shop", "anon-1")
    assert first != cookie.visitor_for_anonymous_id("shop", "anon-2")
    assert first != cookie.visitor_for_anonymous_id("other", "anon-1")
    assert len(first) == 32


def _fold(messages: list[dict], state: VisitorState | None = None, start: float = 1000.0):
    state = state or VisitorState()
    counter = itertools.count()
    out = []
    for i, message in enumerate(messages):
        out.append(apply(state, message, visitor_id="v" * 32, received_at=start + i,
                         session_timeout=1800, new_id=lambda: f"id{next(counter)}"))
    return state, out


def track(event: str, **props) -> dict:
    return {"type": "track", "event": event, "properties": props}


def test_cart_is_kept_whole_and_emptied_by_a_purchase() -> None:
    state, out = _fold([
        track("Product Added", product_id="1", price=10, quantity=1),
        track("Product Added", product_id="2", price=5, quantity=2),
        track("Product Added", product_id="1", quantity=2),
        track("Product Removed", product_id="2"),
        track("Order Completed", order_id="o1", products=[{"product_id": "1", "price": 10,
                                                           "quantity": 3}]),
        track("Product Added", product_id="3", price=1),
    ])
    assert [(line.product_id, line.quantity) for line in out[2].cart] == [("1", 3), ("2", 2)]
    assert [(line.product_id, line.quantity) for line in out[3].cart] == [("1", 3)]
    assert out[0].cart_id == out[3].cart_id == out[4].cart_id
    assert out[4].cart == []
    assert out[5].cart_id not in (None, out[4].cart_id)  # a new cart after the purchase


def test_cart_viewed_with_products_replaces_the_cart() -> None:
    _, out = _fold([
        track("Product Added", product_id="1"),
        track("Cart Viewed", cart_id="shop-cart-9", products=[{"product_id": "7", "quantity": 4}]),
    ])
    assert [(line.product_id, line.quantity) for line in out[1].cart] == [("7", 4)]
    assert out[1].cart_id == "shop-cart-9"


def test_recommendation_block_is_remembered_per_product() -> None:
    _, out = _fold([
        track("Product Clicked", product_id="5", list_id="home-recs"),
        track("Product Viewed", product_id="5"),
        track("Product Viewed", product_id="6"),
        track("Order Completed", order_id="o", products=[{"product_id": "5"}, {"product_id": "6"}]),
    ])
    assert out[1].list_id == "home-recs"
    assert out[2].list_id is None
    assert out[3].extra["line_list_ids"] == {"5": "home-recs"}


def test_identify_binds_once_and_later_events_carry_the_user() -> None:
    _, out = _fold([
        track("Product Viewed", product_id="1"),
        {"type": "identify", "userId": "u1", "traits": {"email": "a@b.example"}},
        {"type": "identify", "userId": "u1"},
        track("Product Viewed", product_id="1"),
    ])
    assert out[0].user_id is None
    assert out[1].new_binding and out[1].user_id == "u1" and out[1].email == "a@b.example"
    assert not out[2].new_binding
    assert out[3].user_id == "u1" and not out[3].new_binding


def test_session_rolls_over_after_inactivity_and_on_a_new_campaign() -> None:
    state, out = _fold([track("Product Viewed", product_id="1")])
    first = out[0].session_id
    again = apply(state, track("Product Viewed", product_id="1"), visitor_id="v", received_at=1500,
                  session_timeout=1800, new_id=lambda: "later")
    assert again.session_id == first
    late = apply(state, track("Product Viewed", product_id="1"), visitor_id="v", received_at=9999,
                 session_timeout=1800, new_id=lambda: "new-session")
    assert late.session_id == "new-session"
    utm = apply(state, {"type": "page", "context": {"campaign": {"source": "news"}}},
                visitor_id="v", received_at=10000, session_timeout=1800, new_id=lambda: "utm")
    assert utm.session_id == "utm"


def test_utm_from_the_page_url_starts_a_session_and_is_kept() -> None:
    state, out = _fold([track("Product Viewed", product_id="1")])
    message = {"type": "page", "context": {"page": {
        "url": "https://shop.example/?utm_source=news&utm_medium=email&utm_campaign=black-friday",
        "search": "?utm_source=news&utm_medium=email&utm_campaign=black-friday"}}}
    enrichment = apply(state, message, visitor_id="v", received_at=1001, session_timeout=1800,
                       new_id=lambda: "campaign-session")
    assert enrichment.session_id == "campaign-session" != out[0].session_id
    assert enrichment.campaign == {"source": "news", "medium": "email", "name": "black-friday"}


def test_visitor_state_round_trips_every_field() -> None:
    from dataclasses import fields

    from shoprelay.events import CartLine

    state = VisitorState(user_id="u", email="e", phone="p", name="n",
                         cart=[CartLine("1", 2, 3.5, "EUR")], cart_id="c", blocks={"1": "b"},
                         session_id="s", session_started=1.0, last_seen=2.0, campaign="x")
    data = state.to_dict()
    assert set(data) == {f.name for f in fields(VisitorState)}
    assert VisitorState.from_dict(data) == state
