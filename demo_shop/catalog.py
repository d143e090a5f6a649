"""The demo shop's in-memory catalog.

Ids are integers on purpose: vendors (Retail Rocket, Yespo) want numeric product and category ids,
so the demo exercises the relay's handling of real numbers, not strings that look like them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CURRENCY = "USD"


@dataclass(frozen=True, slots=True)
class Category:
    id: int
    name: str
    path: str


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    sku: str
    name: str
    price: float
    category_id: int
    description: str
    group_id: int | None = None
    variant_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def category(self) -> Category:
        return CATEGORIES[self.category_id]

    def summary(self, *, position: int | None = None) -> dict[str, Any]:
        """The product as a `products[]` entry of a Segment e-commerce event."""
        item: dict[str, Any] = {
            "product_id": self.id,
            "sku": self.sku,
            "name": self.name,
            "price": self.price,
            "currency": CURRENCY,
            "category": self.category.path,
        }
        if position is not None:
            item["position"] = position
        return item


CATEGORIES: dict[int, Category] = {
    c.id: c
    for c in (
        Category(10, "Shoes", "Apparel > Shoes"),
        Category(20, "Shirts", "Apparel > Shirts"),
        Category(30, "Hats", "Apparel > Hats"),
    )
}

PRODUCTS: dict[int, Product] = {
    p.id: p
    for p in (
        Product(101, "SH-RUN-01", "Trail Runner", 89.0, 10, "Grippy soles for muddy paths."),
        Product(102, "SH-CNV-02", "Canvas Sneaker", 49.5, 10, "The everyday white sneaker."),
        Product(103, "SH-BOT-03", "Leather Boot", 139.99, 10, "Resoled, not replaced."),
        Product(104, "SR-LIN-04", "Linen Shirt", 59.0, 20, "Cool on hot days."),
        # The grouped product: one page, three size variants that vendors see as products.
        Product(
            105,
            "SR-OXF-05",
            "Oxford Shirt",
            64.0,
            20,
            "Button-down, in S, M and L.",
            group_id=105,
            variant_ids=(1051, 1052, 1053),
        ),
        Product(106, "SR-FLN-06", "Flannel Shirt", 54.25, 20, "Warm enough for October."),
        Product(107, "HT-CAP-07", "Baseball Cap", 19.99, 30, "Curved brim, six panels."),
        Product(108, "HT-BEA-08", "Wool Beanie", 24.0, 30, "Merino, does not itch."),
    )
}

#: What the home page's "Recommended for you" block shows (list_id "home-recs").
RECOMMENDED: tuple[int, ...] = (103, 105, 107, 102)


def products_in(category_id: int) -> list[Product]:
    return [p for p in PRODUCTS.values() if p.category_id == category_id]


def search(query: str) -> list[Product]:
    """Case-insensitive match on name, SKU or category; an empty query finds nothing."""
    q = query.strip().lower()
    if not q:
        return []
    return [
        p
        for p in PRODUCTS.values()
        if q in p.name.lower() or q in p.sku.lower() or q in p.category.path.lower()
    ]
